//! How right are the segment numbers? Simulate a night, run its feeds through the same flow a
//! server runs, and compare every segment-window with the simulator's truth (`throng accuracy`).
//!
//! Truth and estimate mean the same thing: the people whose position at the end of the window lies
//! in the segment (see `TruthRow`). Tiers are compared like with like: the truth's people are run
//! through a second segments stage with the same thresholds, counters and gates, so a tier
//! disagreement is the people estimate's fault alone.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::agents::{Panel, Scenario, SimConfig, World};
use super::emit::Emitter;
use crate::config::{Config, LbsSourceConfig};
use crate::flow::{Closed, Flow, Outputs, WindowKind};
use crate::pipeline::Pipeline;
use crate::risk::{Risk, Shown, ThresholdStore, Tier};
use crate::window::HexWindow;

/// Segments are scored only in windows where the truth holds at least this many people.
pub const MIN_TRUE_PEOPLE: u64 = 50;

/// One simulated night to score.
#[derive(Debug, Clone)]
pub struct Trial {
    /// Seed.
    pub seed: u64,
    /// The panel's name, for the report.
    pub panel_name: String,
    /// Who carries which phone.
    pub panel: Panel,
    /// The error model's name, for the report.
    pub error_name: String,
    /// People.
    pub people: usize,
    /// Seconds of night.
    pub duration_s: f64,
    /// The scale-error model's name, for the report (`0`: the right factors).
    pub scale_error_name: String,
    /// Each provider's configured factor as a multiple of the right one (1 / coverage).
    pub scale_error: Vec<f64>,
    /// Whether the engine may learn people per device from the zone counts.
    pub calibration: bool,
}

/// One segment's score over a night.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SegmentScore {
    /// Segment id.
    pub segment_id: String,
    /// Mean absolute percentage error of people over the windows with ≥ `MIN_TRUE_PEOPLE` true
    /// people (None: never that many).
    pub mape: Option<f64>,
    /// Windows scored.
    pub windows: u32,
    /// Mean true people in them.
    pub mean_true: f64,
    /// Σ estimate / Σ truth − 1 over the same windows: which way the error leans.
    pub bias: Option<f64>,
}

/// A night's score.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Score {
    /// Seed.
    pub seed: u64,
    /// Panel.
    pub panel: String,
    /// Error model.
    pub error: String,
    /// Scale-error model (`0`, `+30`, `-30`, `±30`).
    pub scale_error: String,
    /// Whether calibration was on.
    pub calibration: bool,
    /// Mean MAPE over the segments with a counter or zone headcount.
    pub counted_mape: f64,
    /// Each provider at the end of the night: (source, configured, in force, right).
    pub factors: Vec<(String, f64, f64, f64)>,
    /// The people the factors in force make of the whole panel, against the right ones, at the
    /// end of the night − 1 (Σ share × factor / Σ share × right factor − 1): what the factors
    /// do to the total, whether or not the sources could be told apart.
    pub factor_error: f64,
    /// Seconds into the night after which that error stays within ±5 % (null: never).
    pub factor_settled_s: Option<f64>,
    /// Per segment.
    pub segments: Vec<SegmentScore>,
    /// Median of the segments' MAPE.
    pub median_mape: f64,
    /// Largest segment MAPE.
    pub max_mape: f64,
    /// Σ estimate / Σ truth − 1 over every scored segment-window.
    pub total_error: f64,
    /// Share of segment-windows whose tier equals the truth-derived tier.
    pub tier_agreement: f64,
    /// Truth crossings into high or critical.
    pub crossings: u32,
    /// Of those, reported (the estimate at that tier or above) within one slide.
    pub crossings_on_time: u32,
    /// The crossings reported late: segment id, the tier and the window end (s into the night).
    pub late_crossings: Vec<String>,
    /// Segment-windows compared.
    pub segment_windows: u64,
    /// Devices matched to no segment, summed over windows.
    pub off_network_devices: u64,
    /// People on the scenario's ground (walkable, no segment) per scored window, on average:
    /// (estimate, truth).
    pub ground_people: (f64, f64),
    /// The same per ground feature (`ground.geojson` order).
    pub ground: Vec<GroundScore>,
}

/// One ground feature's people over a night: where the pings the segments lose or gain went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroundScore {
    /// The ground's id.
    pub ground_id: String,
    /// The engine's people there per scored window, on average.
    pub estimate: f64,
    /// The simulator's.
    pub truth: f64,
}

/// What the flow's outputs keep: per (window end, segment index) the estimate and both tiers.
struct Collect {
    truth: HashMap<(i64, usize), u64>,
    truth_risk: Risk,
    /// (window end, segment) → (people, tier, truth tier).
    rows: HashMap<(i64, usize), (f64, Shown, Shown)>,
    off_network: u64,
    /// Per window end: the engine's people on ground no segment covers, per ground feature.
    ground: HashMap<i64, Vec<f64>>,
    /// Per ground place (matcher places after the segments): its feature.
    ground_owner: Vec<usize>,
    /// The newest window's people per device.
    factors: Vec<(String, f64, f64)>,
    /// Each provider's share of the people (by source name).
    mix: Vec<(String, f64)>,
    /// Per window: (end, Σ share × factor in force).
    factor_track: Vec<(i64, f64)>,
}

impl Outputs for Collect {
    fn closed(&mut self, c: &Closed<'_>) {
        if c.kind != WindowKind::Data {
            return;
        }
        let w: &HexWindow = c.window;
        self.factors = c
            .calibration
            .iter()
            .map(|k| (k.source.clone(), k.prior, k.people_per_device))
            .collect();
        let people: f64 = self
            .factors
            .iter()
            .filter_map(|(s, _, k)| self.mix.iter().find(|(m, _)| m == s).map(|(_, share)| share * k))
            .sum();
        self.factor_track.push((w.end.0, people));
        self.off_network += w.segments.off_network_devices;
        let mut ground = vec![0.0; self.ground_owner.iter().max().map_or(0, |m| m + 1)];
        for (place, people) in w.segments.ground.iter().enumerate() {
            if let Some(g) = self.ground_owner.get(place).and_then(|&g| ground.get_mut(g)) {
                *g += people;
            }
        }
        self.ground.insert(w.end.0, ground);
        let n = c.statuses.len();
        let mut t = w.clone();
        t.segments.device_age_s = vec![0.0; n];
        // The truth is where people are at the window's end: nothing to move forward.
        t.segments.device_age_s = vec![0.0; n];
        t.segments.people = (0..n)
            .map(|i| self.truth.get(&(w.end.0, i)).copied().unwrap_or(0) as f64)
            .collect();
        let (truth_st, _) = self.truth_risk.evaluate(&t);
        for (i, (s, ts)) in c.statuses.iter().zip(truth_st).enumerate() {
            self.rows.insert((w.end.0, i), (s.people, s.tier, ts.tier));
        }
    }
}

fn rank(s: Shown) -> u8 {
    match s {
        Shown::Degraded => 0,
        Shown::Low => 1,
        Shown::Medium => 2,
        Shown::High => 3,
        Shown::Critical => 4,
    }
}

/// The config a trial runs under: `base` with every simulated provider at people-per-device
/// = 1 / the panel's coverage (times its `scale_error`) and its typical ping interval (what an
/// operator knows of a panel).
pub fn trial_config(base: &Config, panel: &Panel, scale_error: &[f64]) -> Config {
    let mut cfg = base.clone();
    let right = 1.0 / panel.coverage().max(1e-6);
    for (i, p) in panel.providers.iter().enumerate() {
        let scale = right * scale_error.get(i).copied().unwrap_or(1.0);
        let mean = (p.interval_s.0 + p.interval_s.1) / 2.0;
        cfg.lbs.sources.insert(
            p.name.clone(),
            LbsSourceConfig {
                scale,
                max_delay: None,
                accuracy_m: None,
                ping_interval: Some(std::time::Duration::from_secs_f64(mean)),
            },
        );
    }
    cfg
}

/// Feeds a simulated night through `flow`, ten scenario seconds at a time, as a server's ingest
/// would (the newest event time seen is processing time). Every simulated record must parse.
pub fn drive<O: Outputs>(
    em: &mut Emitter<'_>,
    parser: &crate::ingest::Parser,
    flow: &mut Flow<O>,
) -> Result<(), String> {
    let mut buf = Vec::with_capacity(1 << 20);
    let mut now = i64::MIN;
    let mut t = 0.0;
    let mut rejected = 0u64;
    while !em.done() {
        t += 10.0;
        buf.clear();
        em.emit_until(t, &mut buf);
        crate::ingest::decode::each_line(parser, &buf, None, usize::MAX, |_, r| match r {
            Ok(rec) => {
                now = now.max(rec.ts.millis());
                flow.ingest(&rec, now);
            }
            Err(_) => rejected += 1,
        });
    }
    if rejected > 0 {
        return Err(format!("{rejected} simulated records were rejected"));
    }
    Ok(())
}

/// Simulates one night over the scenario in `dir` and scores the engine against its truth.
pub fn score(base: &Config, dir: &Path, trial: &Trial) -> Result<Score, String> {
    let mut cfg = trial_config(base, &trial.panel, &trial.scale_error);
    cfg.risk.calibration.enabled = trial.calibration;
    let right = 1.0 / trial.panel.coverage().max(1e-6);
    let start_ms = 1_767_193_200_000; // 2025-12-31T23:00+08:00
    let world = World::new(
        Scenario::load(dir, trial.seed)?,
        SimConfig {
            people: trial.people,
            duration_s: trial.duration_s,
            start_ms,
            speed: 1.0,
            seed: trial.seed,
            panel: trial.panel.clone(),
            changes: Default::default(),
        },
    );
    let size = cfg.window.size.as_millis() as i64;
    let slide = cfg.slide_ms();
    let mut em = Emitter::new(&world);
    let map = Arc::new(world.scenario.map.clone());
    let index: HashMap<&str, usize> = map
        .segments()
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let truth: HashMap<(i64, usize), u64> = em
        .truth(size, slide)
        .into_iter()
        .filter_map(|r| Some(((r.window_end, *index.get(r.segment_id.as_str())?), r.people)))
        .collect();
    let ground_truth = em.truth_on_ground(size, slide);
    let pipe = Pipeline::from_config(&cfg).map_err(|e| e.to_string())?;
    let store = || ThresholdStore::open(None).map_err(|e| e.to_string());
    let risk = |store| {
        Risk::new(
            map.clone(),
            pipe.registry.points().to_vec(),
            cfg.risk.clone(),
            store,
            size,
        )
    };
    let outputs = Collect {
        truth,
        truth_risk: risk(store()?),
        rows: HashMap::new(),
        off_network: 0,
        ground: HashMap::new(),
        ground_owner: map.ground_places().collect(),
        factors: Vec::new(),
        mix: trial
            .panel
            .providers
            .iter()
            .map(|p| (format!("lbs/{}", p.name), p.share))
            .collect(),
        factor_track: Vec::new(),
    };
    let counted: std::collections::HashSet<usize> = pipe
        .registry
        .points()
        .iter()
        .filter(|p| !p.gate)
        .filter_map(|p| p.segment.as_deref().and_then(|s| map.index(s)))
        .collect();
    let parser = pipe.parser.clone();
    let Pipeline { engine, sources, .. } = pipe;
    let mut flow = Flow::new(engine, sources, risk(store()?), outputs, &cfg.window);
    drive(&mut em, &parser, &mut flow)?;
    let out = flow.finish();
    // The first windows hold only devices seen so far (the sparsest panel pings every 5 min),
    // the last only part of the night: score from 6 minutes in to a window before the end.
    let first_end = start_ms + 360_000 + size;
    let last_end = start_ms + (trial.duration_s * 1000.0) as i64 - slide;
    let mut per: Vec<(f64, u32, f64, f64)> = vec![(0.0, 0, 0.0, 0.0); map.segments().len()];
    let (mut est_sum, mut true_sum, mut agree, mut n) = (0.0, 0.0, 0u64, 0u64);
    let mut keys: Vec<&(i64, usize)> = out.rows.keys().collect();
    keys.sort_unstable();
    for k in &keys {
        let (end, i) = **k;
        if end < first_end || end > last_end {
            continue;
        }
        let (est, tier, ttier) = out.rows[k];
        let tru = out.truth.get(k).copied().unwrap_or(0);
        est_sum += est;
        true_sum += tru as f64;
        n += 1;
        agree += (tier == ttier) as u64;
        if tru >= MIN_TRUE_PEOPLE {
            let e = &mut per[i];
            e.0 += (est - tru as f64).abs() / tru as f64;
            e.1 += 1;
            e.2 += tru as f64;
            e.3 += est;
        }
    }
    // Crossings: the truth tier rises into high or critical; the estimate must be there within a slide.
    let (mut crossings, mut on_time) = (0u32, 0u32);
    let mut late_crossings = Vec::new();
    for i in 0..map.segments().len() {
        let mut prev = Shown::Low;
        let mut end = first_end;
        while end <= last_end {
            if let Some(&(_, _, tt)) = out.rows.get(&(end, i)) {
                if rank(tt) > rank(prev) && rank(tt) >= rank(Shown::from(Tier::High)) {
                    crossings += 1;
                    let seen = [end, end + slide]
                        .iter()
                        .any(|e| out.rows.get(&(*e, i)).is_some_and(|r| rank(r.1) >= rank(tt)));
                    on_time += seen as u32;
                    if !seen {
                        late_crossings.push(format!(
                            "{} {:?} at {} s",
                            map.segments()[i].id.0,
                            tt,
                            (end - start_ms) / 1000
                        ));
                    }
                }
                prev = tt;
            }
            end += slide;
        }
    }
    let segments: Vec<SegmentScore> = map
        .segments()
        .iter()
        .zip(&per)
        .map(|(s, (sum, w, tru, est))| SegmentScore {
            segment_id: s.id.0.clone(),
            mape: (*w > 0).then(|| sum / *w as f64),
            windows: *w,
            mean_true: if *w > 0 { tru / *w as f64 } else { 0.0 },
            bias: (*w > 0 && *tru > 0.0).then(|| est / tru - 1.0),
        })
        .collect();
    let counted_mapes: Vec<f64> = segments
        .iter()
        .enumerate()
        .filter(|(i, _)| counted.contains(i))
        .filter_map(|(_, s)| s.mape)
        .collect();
    let mut mapes: Vec<f64> = segments.iter().filter_map(|s| s.mape).collect();
    mapes.sort_by(f64::total_cmp);
    // Right: Σ share × (1 / coverage) × (1 + drift × t / T) = 1 + drift × t / T.
    let drift = trial.panel.providers.first().map_or(0.0, |p| p.drift);
    let factor_errors: Vec<(f64, f64)> = out
        .factor_track
        .iter()
        .map(|(end, k)| {
            let t = (end - start_ms) as f64 / 1000.0;
            (t, k / (1.0 + drift * (t / trial.duration_s).min(1.0)) - 1.0)
        })
        .collect();
    let factor_errors: Vec<(f64, f64)> = factor_errors
        .into_iter()
        .filter(|(t, _)| start_ms + (*t * 1000.0) as i64 <= last_end)
        .collect();
    let factor_settled_s = match factor_errors.iter().rposition(|(_, e)| e.abs() > 0.05) {
        None => factor_errors.first().map(|(t, _)| *t),
        Some(i) => factor_errors.get(i + 1).map(|(t, _)| *t),
    };
    // Ground per feature, averaged over the scored windows.
    let ground: Vec<GroundScore> = {
        let scored: Vec<&(i64, Vec<u64>)> = ground_truth
            .iter()
            .filter(|(end, _)| (first_end..=last_end).contains(end))
            .collect();
        let k = scored.len().max(1) as f64;
        map.ground()
            .iter()
            .enumerate()
            .map(|(g, feature)| GroundScore {
                ground_id: feature.id.clone(),
                estimate: scored
                    .iter()
                    .map(|(end, _)| out.ground.get(end).and_then(|v| v.get(g)).copied().unwrap_or(0.0))
                    .sum::<f64>()
                    / k,
                truth: scored
                    .iter()
                    .map(|(_, t)| t.get(g).copied().unwrap_or(0) as f64)
                    .sum::<f64>()
                    / k,
            })
            .collect()
    };
    Ok(Score {
        seed: trial.seed,
        panel: trial.panel_name.clone(),
        error: trial.error_name.clone(),
        scale_error: trial.scale_error_name.clone(),
        calibration: trial.calibration,
        counted_mape: counted_mapes.iter().sum::<f64>() / counted_mapes.len().max(1) as f64,
        factors: out
            .factors
            .iter()
            .map(|(s, p, k)| {
                // A drifting provider's right factor is the one at the end of the night.
                let drift = trial
                    .panel
                    .providers
                    .iter()
                    .find(|q| s.strip_prefix("lbs/") == Some(q.name.as_str()))
                    .map_or(0.0, |q| q.drift);
                (s.clone(), *p, *k, right * (1.0 + drift))
            })
            .collect(),
        factor_error: factor_errors.last().map_or(0.0, |(_, e)| *e),
        factor_settled_s,
        median_mape: median(&mapes),
        max_mape: mapes.last().copied().unwrap_or(0.0),
        segments,
        total_error: if true_sum > 0.0 {
            est_sum / true_sum - 1.0
        } else {
            0.0
        },
        tier_agreement: if n > 0 { agree as f64 / n as f64 } else { 1.0 },
        crossings,
        crossings_on_time: on_time,
        late_crossings,
        segment_windows: n,
        off_network_devices: out.off_network,
        ground_people: ground
            .iter()
            .fold((0.0, 0.0), |(e, t), g| (e + g.estimate, t + g.truth)),
        ground,
    })
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
