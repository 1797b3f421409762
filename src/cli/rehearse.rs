//! `throng rehearse`: the night before it happens — the baseline and a what-if through the
//! simulator and the engine, faster than real time; `report.html` and `summary.json` in `--out`.

use std::path::PathBuf;

use anyhow::Context;
use chrono::{Datelike, TimeZone};
use clap::Args;

use crate::tools::rehearse::report::{self, Rehearsal};
use crate::tools::rehearse::{rehearse, summarise, Night, Plan, WhatIf};

/// `throng rehearse`.
#[derive(Debug, Args, Clone)]
#[command(
    after_help = "A what-if file (TOML) changes the crowd, closes exits or segments from a local time, or sets capacities:\n\n\
  name = \"Close metro exit 7 at 23:30\"\n\
  [crowd]\n\
  people_factor = 1.2        # × --devices\n\
  arrival_shape = 0.5        # arrival curve exponent (default 0.7; lower = later, steeper rush)\n\
  [[close]]\n\
  exit = \"east-nanjing-road/exit-7\"   # station/exit (or: segment = \"chenyi-steps\")\n\
  at = \"23:30\"               # local time in the scenario's time zone\n\
  [[capacity]]\n\
  segment = \"bund-promenade\"\n\
  capacity = 8000\n\n\
Arrivals on a closed exit's (or segment's) routes after the closure come by another exit of the same station \
(another open route otherwise); people walking back after it leave by another open route to the same place.\n\
Example: throng rehearse --what-if fixtures/bund/what-if-exit-7.toml --out rehearsal/"
)]
pub struct RehearseArgs {
    /// Scenario folder (segments.geojson, sensors.json, stations.json, routes.json; its
    /// throng.toml is the engine's config unless --config is given).
    #[arg(long, default_value = "fixtures/bund")]
    pub scenario: PathBuf,
    /// The what-if to compare with the night as planned (TOML; see below). Without it, the
    /// report shows the planned night alone.
    #[arg(long)]
    pub what_if: Option<PathBuf>,
    /// Folder for report.html and summary.json (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// People in the planned night (80 % carry a phone in one of the two LBS panels).
    #[arg(long, default_value_t = 20_000)]
    pub devices: usize,
    /// Length of the night, seconds (midnight falls two thirds of the way through: 5400 s is
    /// 23:00 to 00:30).
    #[arg(long, default_value_t = 5400.0)]
    pub duration: f64,
    /// Midnight of the night (RFC 3339; default: the coming New Year's midnight in the scenario's
    /// time zone).
    #[arg(long)]
    pub midnight: Option<String>,
    /// Seed: the same seed gives the same nights.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Engine config (default: the scenario's throng.toml).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
}

/// The coming New Year's midnight in `tz`, or `--midnight`.
fn midnight(args: &RehearseArgs, tz: chrono_tz::Tz) -> anyhow::Result<i64> {
    if let Some(m) = &args.midnight {
        return chrono::DateTime::parse_from_rfc3339(m)
            .map(|t| t.timestamp_millis())
            .with_context(|| format!("--midnight {m:?} is not RFC 3339 (e.g. 2027-01-01T00:00:00+08:00)"));
    }
    let year = chrono::Utc::now().with_timezone(&tz).year() + 1;
    tz.with_ymd_and_hms(year, 1, 1, 0, 0, 0)
        .earliest()
        .map(|t| t.timestamp_millis())
        .context("New Year's midnight does not exist in the time zone")
}

/// Runs the rehearsal and writes its two files; returns the summary.
pub fn run(args: &RehearseArgs) -> anyhow::Result<serde_json::Value> {
    if args.devices == 0 || !(600.0..=86_400.0).contains(&args.duration) {
        anyhow::bail!("--devices must be positive and --duration from 600 to 86400 s");
    }
    super::must_exist(&args.scenario, "scenario folder")?;
    let cfg = super::scenario_config(&args.scenario, args.config.as_deref())?;
    let what_if = args
        .what_if
        .as_deref()
        .map(WhatIf::load)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let tz = cfg.tz();
    let night = Night {
        start_ms: midnight(args, tz)? - (args.duration * 2.0 / 3.0 * 1000.0) as i64,
        duration_s: args.duration,
        tz,
    };
    if let (Some(w), Some(p)) = (&what_if, &args.what_if) {
        // Checked here, so a mistake names the file before minutes of simulation.
        let scenario =
            crate::tools::sim::Scenario::load(&args.scenario, args.seed).map_err(anyhow::Error::msg)?;
        w.people(args.devices)
            .and_then(|_| w.changes(&scenario, &night))
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    let plan = Plan {
        dir: &args.scenario,
        cfg: &cfg,
        people: args.devices,
        night,
        seed: args.seed,
    };
    tracing::info!(
        people = args.devices,
        night = %format!("{}–{} {}", night.clock(night.start_ms), night.clock(night.start_ms + (args.duration * 1000.0) as i64), tz),
        what_if = %what_if.as_ref().map_or("none".into(), |w| w.title()),
        "Rehearsing the night (simulator → engine, faster than real time)."
    );
    let started = std::time::Instant::now();
    let (base, other) = rehearse(&plan, what_if.as_ref()).map_err(anyhow::Error::msg)?;
    let slide = cfg.slide_ms();
    let base_summary = summarise(&base, &night, slide);
    let other_summary = other.as_ref().map(|o| summarise(o, &night, slide));
    let r = Rehearsal {
        scenario: args.scenario.display().to_string(),
        night,
        seed: args.seed,
        generated_by: format!("throng {}", super::VERSION),
        slide_ms: slide,
        base: &base,
        base_summary: &base_summary,
        other: match (&other, &other_summary, &what_if) {
            (Some(o), Some(s), Some(w)) => Some((o, s.as_slice(), w)),
            _ => None,
        },
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let summary = report::summary(&r);
    let json_path = args.out.join("summary.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let html_path = args.out.join("report.html");
    std::fs::write(&html_path, report::html(&r))
        .with_context(|| format!("writing {}", html_path.display()))?;
    tracing::info!(
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        report = %html_path.display(),
        summary = %json_path.display(),
        "Rehearsal written."
    );
    if let Some(d) = summary["differences"].as_array() {
        for x in d {
            println!(
                "{}: {} → {} (high from {} → {})",
                x["name"].as_str().unwrap_or_default(),
                x["baseline_tier"].as_str().unwrap_or_default(),
                x["what_if_tier"].as_str().unwrap_or_default(),
                x["baseline_first_high"].as_str().unwrap_or("—"),
                x["what_if_first_high"].as_str().unwrap_or("—"),
            );
        }
    }
    println!("{}", html_path.display());
    Ok(summary)
}
