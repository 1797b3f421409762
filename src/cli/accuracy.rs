//! `throng accuracy`: simulate → engine → compare with the truth, over seeds, panel mixes and GPS
//! error models; prints per-segment MAPE, the total's error and tier agreement (docs/ACCURACY.md).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::tools::sim::score::{score, Score, Trial};
use crate::tools::sim::Panel;

/// `throng accuracy`.
#[derive(Debug, Args, Clone)]
pub struct AccuracyArgs {
    /// Scenario folder (segments.geojson, sensors.json, stations.json, routes.json).
    #[arg(long, default_value = "fixtures/bund")]
    pub scenario: PathBuf,
    /// Config (default: the scenario's throng.toml); its LBS scale factors are replaced by each
    /// panel's own (1 / coverage).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// People per night.
    #[arg(long, default_value_t = 8000)]
    pub people: usize,
    /// Seconds per night.
    #[arg(long, default_value_t = 1800.0)]
    pub duration: f64,
    /// Seeds, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub seeds: Vec<u64>,
    /// Panel mixes: `bund` (50 % carrier-a every 20–90 s, 30 % app every 5–30 s) and `sparse`
    /// (35 % every 1–5 min, 15 % every 10–60 s); `oracle` (everyone, every 2–4 s, 1 m error: the
    /// method's own error, with no sampling or scatter). To see which part of the Bund panel's error
    /// is whose: `sampled` (the oracle's phones in 80 % of pockets: sampling alone) and `lagged`
    /// (the Bund panel's rhythms and errors in every pocket: no sampling; with `--errors 1`, lag
    /// alone).
    #[arg(long, value_delimiter = ',', default_value = "bund,sparse")]
    pub panels: Vec<String>,
    /// GPS error models: `panel` (each provider's own σ), a number (every ping σ metres), or a
    /// number with `+outliers` (and 3 % of pings off by σ 100 m, their accuracy not saying so).
    #[arg(long, value_delimiter = ',', default_value = "panel,5,15,30,15+outliers")]
    pub errors: Vec<String>,
    /// Scale-error models: the configured people per device as the right one (1 / coverage)
    /// shifted by a percentage: `0`, `+30` (every provider 30 % high), `-30`, or `±30` (the
    /// first provider high, the second low). Calibration from the zone headcount has to recover them.
    #[arg(long, value_delimiter = ',', default_value = "0", allow_hyphen_values = true)]
    pub scale_errors: Vec<String>,
    /// Keep the configured factors (no learning from the zone headcounts), to see what they cost.
    #[arg(long)]
    pub no_calibration: bool,
    /// Percentage by which every provider's people per device rises over the night as its phones
    /// fall silent (0: a steady panel). The configured factors stay the start's; calibration has
    /// to follow.
    #[arg(long, default_value_t = 0.0)]
    pub drift: f64,
    /// Print each night's score as a JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn panel(name: &str) -> anyhow::Result<Panel> {
    match name {
        "bund" => Ok(Panel::bund()),
        "sparse" => Ok(Panel::sparse()),
        "oracle" => Ok(Panel::oracle()),
        "sampled" => Ok(Panel::oracle().covering(Panel::bund().coverage())),
        "lagged" => Ok(Panel::bund().covering(1.0)),
        _ => anyhow::bail!("--panels: unknown panel {name:?} (bund, sparse, oracle, sampled or lagged)"),
    }
}

fn with_error(p: Panel, model: &str) -> anyhow::Result<Panel> {
    if model == "panel" {
        return Ok(p);
    }
    let (num, outliers) = match model.strip_suffix("+outliers") {
        Some(n) => (n, 0.03),
        None => (model, 0.0),
    };
    let sigma: f64 = num
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 60.0)
        .with_context(|| format!("--errors: {model:?} is not `panel`, a σ in metres (0–60) or σ+outliers"))?;
    Ok(p.with_error(sigma, outliers))
}

/// Each provider's factor as a multiple of the right one, for a `--scale-errors` model.
fn scale_error(model: &str) -> anyhow::Result<Vec<f64>> {
    let bad = || anyhow::anyhow!("--scale-errors: {model:?} is not 0, +N, -N or ±N (a percentage under 100)");
    let (signs, num): (&[f64], &str) =
        if let Some(n) = model.strip_prefix('±').or_else(|| model.strip_prefix("+-")) {
            (&[1.0, -1.0], n)
        } else if let Some(n) = model.strip_prefix('+') {
            (&[1.0, 1.0], n)
        } else if let Some(n) = model.strip_prefix('-') {
            (&[-1.0, -1.0], n)
        } else {
            (&[1.0, 1.0], model)
        };
    let pct: f64 = num.parse().map_err(|_| bad())?;
    if !(0.0..100.0).contains(&pct) {
        return Err(bad());
    }
    Ok(signs.iter().map(|s| 1.0 + s * pct / 100.0).collect())
}

/// Runs every trial (two at a time) and prints the scores; returns them.
pub fn run(args: &AccuracyArgs) -> anyhow::Result<Vec<Score>> {
    if args.people == 0 || args.duration < 600.0 {
        anyhow::bail!(
            "--people must be positive and --duration at least 600 s (scoring starts 6 minutes in)"
        );
    }
    if !(0.0..=200.0).contains(&args.drift) {
        anyhow::bail!("--drift is a percentage from 0 to 200 (got {})", args.drift);
    }
    let cfg = super::scenario_config(&args.scenario, args.config.as_deref())?;
    let mut trials = Vec::new();
    for &seed in &args.seeds {
        for p in &args.panels {
            for e in &args.errors {
                for k in &args.scale_errors {
                    trials.push(Trial {
                        seed,
                        panel_name: p.clone(),
                        panel: with_error(panel(p)?, e)?.with_drift(args.drift / 100.0),
                        error_name: e.clone(),
                        people: args.people,
                        duration_s: args.duration,
                        scale_error_name: k.clone(),
                        scale_error: scale_error(k)?,
                        calibration: !args.no_calibration,
                    });
                }
            }
        }
    }
    tracing::info!(
        nights = trials.len(),
        people = args.people,
        "Scoring the engine against the simulator's truth."
    );
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(t) = trials.get(i) else { break };
                let r = score(&cfg, &args.scenario, t);
                if let Ok(sc) = &r {
                    tracing::info!(seed = t.seed, panel = %t.panel_name, error = %t.error_name, median_mape = sc.median_mape, "Night scored.");
                }
                results.lock().unwrap_or_else(|p| p.into_inner()).push((i, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|r| r.0);
    let mut scores = Vec::new();
    for (_, r) in results {
        scores.push(r.map_err(anyhow::Error::msg).context("scoring a night")?);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        for s in &scores {
            writeln!(out, "{}", serde_json::to_string(s)?)?;
        }
    } else {
        print_table(&mut out, &scores)?;
    }
    Ok(scores)
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn print_table(out: &mut impl Write, scores: &[Score]) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<5} {:<7} {:<12} {:<6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9} {:>11} {:>8} {:>8}  people per device (configured → in force, right)",
        "seed", "panel", "error", "scale", "counted", "median", "worst", "total", "tiers", "crossings", "off-net", "ground", "ppd err", "settled"
    )?;
    for s in scores {
        let factors: Vec<String> = s
            .factors
            .iter()
            .map(|(src, p, k, r)| format!("{} {p:.2} → {k:.2} ({r:.2})", src.trim_start_matches("lbs/")))
            .collect();
        writeln!(
            out,
            "{:<5} {:<7} {:<12} {:<6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9} {:>11} {:>8} {:>8}  {}",
            s.seed,
            s.panel,
            s.error,
            format!("{}{}", s.scale_error, if s.calibration { "" } else { "*" }),
            pct(s.counted_mape),
            pct(s.median_mape),
            pct(s.max_mape),
            format!("{:+.1} %", s.total_error * 100.0),
            pct(s.tier_agreement),
            format!("{}/{}", s.crossings_on_time, s.crossings),
            s.off_network_devices,
            format!("{:.0}/{:.0}", s.ground_people.0, s.ground_people.1),
            format!("{:+.1} %", s.factor_error * 100.0),
            s.factor_settled_s
                .map_or("never".to_string(), |t| format!("{:.0} s", t)),
            factors.join(", "),
        )?;
    }
    if scores.iter().any(|s| !s.calibration) {
        writeln!(out, "(* calibration off: the configured factors stay in force)")?;
    }
    // A late crossing is what a commander would have missed: name each one.
    let late: Vec<String> = scores
        .iter()
        .flat_map(|s| {
            s.late_crossings
                .iter()
                .map(move |c| format!("seed {} {}/{}: {c}", s.seed, s.panel, s.error))
        })
        .collect();
    if !late.is_empty() {
        writeln!(
            out,
            "\ncrossings reported late (more than one slide after the truth's):"
        )?;
        for l in &late {
            writeln!(out, "  {l}")?;
        }
    }
    // Per segment: the worst MAPE over all nights.
    writeln!(
        out,
        "\nper segment (MAPE over windows with ≥ 50 true people; worst night, mean true people, bias = Σ estimate / Σ truth − 1 over the nights):"
    )?;
    if let Some(first) = scores.first() {
        for (i, seg) in first.segments.iter().enumerate() {
            let worst = scores
                .iter()
                .filter_map(|s| s.segments.get(i).and_then(|x| x.mape))
                .fold(None, |a: Option<f64>, m| Some(a.map_or(m, |a| a.max(m))));
            let mean: f64 = scores
                .iter()
                .filter_map(|s| s.segments.get(i))
                .map(|x| x.mean_true)
                .sum::<f64>()
                / scores.len() as f64;
            let (lo, hi) = span(
                scores
                    .iter()
                    .filter_map(|s| s.segments.get(i).and_then(|x| x.bias)),
            );
            match worst {
                Some(w) => writeln!(
                    out,
                    "  {:<34} {:>8}   {:>7.0}   {:+.1}…{:+.1} %",
                    seg.segment_id,
                    pct(w),
                    mean,
                    lo * 100.0,
                    hi * 100.0
                )?,
                None => writeln!(out, "  {:<34} {:>8}", seg.segment_id, "(< 50)")?,
            }
        }
    }
    // Per ground feature: where the pings a segment lost or gained went (a ground read low has
    // handed its walkers to the small segments beside it).
    if let Some(first) = scores.first().filter(|s| !s.ground.is_empty()) {
        writeln!(
            out,
            "\nper ground feature (people at the window's end, mean over the scored windows; estimate / truth, lowest…highest night; bias):"
        )?;
        for (i, g) in first.ground.iter().enumerate() {
            let nights: Vec<(f64, f64)> = scores
                .iter()
                .filter_map(|s| s.ground.get(i))
                .map(|x| (x.estimate, x.truth))
                .collect();
            let (e0, e1) = span(nights.iter().map(|n| n.0));
            let (t0, t1) = span(nights.iter().map(|n| n.1));
            let bias = if nights.iter().all(|n| n.1 <= 0.0) {
                "(no truth)".to_string()
            } else {
                let (b0, b1) = span(
                    nights
                        .iter()
                        .filter(|n| n.1 > 0.0)
                        .map(|n| (n.0 / n.1 - 1.0) * 100.0),
                );
                format!("{b0:+.0}…{b1:+.0} %")
            };
            writeln!(
                out,
                "  {:<34} {:>6.0}…{:<6.0} / {:>6.0}…{:<6.0}  {bias}",
                g.ground_id, e0, e1, t0, t1
            )?;
        }
    }
    Ok(())
}

/// The lowest and highest of the nights' values.
fn span(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    })
}
