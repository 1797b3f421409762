//! Rehearsal (模拟预演): the night before it happens. The simulator plays the scenario's crowd —
//! once as planned and once with a what-if (a bigger crowd, a later rush, a closed metro exit or
//! segment, new capacities) — through the same flow a server runs, faster than real time; the
//! command centre's picture of each night is summarised per segment (`summary.json`) and drawn
//! side by side (`report.html`, self-contained).

pub mod report;
pub mod whatif;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::config::thresholds::Levels;
use crate::config::Config;
use crate::flow::{Closed, Flow, Outputs, WindowKind};
use crate::model::Role;
use crate::pipeline::Pipeline;
use crate::risk::thresholds::{Change, ThresholdPatch};
use crate::risk::{thresholds_for, Alert, Risk, Shown, ThresholdStore, Thresholds};
use crate::tools::sim::score::drive;
use crate::tools::sim::{Changes, Emitter, Panel, Scenario, SimConfig, World};

pub use whatif::{Night, WhatIf};

/// The tiers a rehearsal reports the first arrival at, lowest first.
pub const TIERS: [Shown; 3] = [Shown::Medium, Shown::High, Shown::Critical];

/// One segment over a night: the engine's numbers per closed window.
#[derive(Debug, Clone)]
pub struct Track {
    /// Segment id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Walkable area, m².
    pub area_m2: f64,
    /// Thresholds in force (the what-if's capacities included).
    pub thresholds: Thresholds,
    /// People per window.
    pub people: Vec<f64>,
    /// Density per window.
    pub density: Vec<f64>,
    /// Tier per window.
    pub tiers: Vec<Shown>,
}

/// One night as the command centre would have seen it.
#[derive(Debug, Clone)]
pub struct NightRun {
    /// "baseline" or the what-if's title.
    pub label: String,
    /// People simulated.
    pub people: usize,
    /// Window ends (epoch ms), one per evaluation.
    pub ends: Vec<i64>,
    /// Per segment, in the scenario's order.
    pub tracks: Vec<Track>,
    /// Tier changes.
    pub alerts: Vec<Alert>,
}

/// What the flow's outputs keep of a rehearsed night.
#[derive(Default)]
struct Collect {
    ends: Vec<i64>,
    tracks: Vec<Track>,
    alerts: Vec<Alert>,
}

impl Outputs for Collect {
    fn closed(&mut self, c: &Closed<'_>) {
        if c.kind != WindowKind::Data || c.statuses.is_empty() {
            return;
        }
        if self.tracks.is_empty() {
            self.tracks = c
                .statuses
                .iter()
                .map(|s| Track {
                    id: s.id.0.clone(),
                    name: s.name.clone(),
                    area_m2: s.area_m2,
                    thresholds: s.thresholds,
                    people: Vec::new(),
                    density: Vec::new(),
                    tiers: Vec::new(),
                })
                .collect();
        }
        self.ends.push(c.window.end.0);
        for (t, s) in self.tracks.iter_mut().zip(c.statuses.iter()) {
            t.people.push(s.people);
            t.density.push(s.density);
            t.tiers.push(s.tier);
            t.thresholds = s.thresholds;
        }
        self.alerts.extend(c.alerts.iter().cloned());
    }
}

/// What is rehearsed: the scenario, its config, the crowd and the night.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// Scenario folder.
    pub dir: &'a Path,
    /// Engine config (the scenario's throng.toml, or --config).
    pub cfg: &'a Config,
    /// People in the baseline.
    pub people: usize,
    /// The night.
    pub night: Night,
    /// Seed (both nights use it: the what-if changes only what it says).
    pub seed: u64,
}

/// Plays one night: the crowd as changed by `changes`, the engine under `capacities`.
pub fn play(
    plan: &Plan<'_>,
    label: &str,
    people: usize,
    changes: Changes,
    capacities: &[whatif::Capacity],
) -> Result<NightRun, String> {
    let cfg = plan.cfg;
    let world = World::new(
        Scenario::load(plan.dir, plan.seed)?,
        SimConfig {
            people,
            duration_s: plan.night.duration_s,
            start_ms: plan.night.start_ms,
            speed: 1.0,
            seed: plan.seed,
            panel: Panel::bund(),
            changes,
        },
    );
    let map = Arc::new(world.scenario.map.clone());
    let store = ThresholdStore::open(None).map_err(|e| e.to_string())?;
    for c in capacities {
        let i = map.index(&c.segment).ok_or_else(|| {
            format!(
                "capacity: segment = {:?} is not a segment of the scenario",
                c.segment
            )
        })?;
        let current = thresholds_for(&map, &cfg.risk, &store, i);
        store
            .update(Change {
                segment: &c.segment,
                current,
                patch: &ThresholdPatch {
                    capacity: Some(c.capacity),
                    ..Default::default()
                },
                by: "what-if",
                role: Role::Organiser,
                now_ms: plan.night.start_ms,
            })
            .map_err(|e| format!("capacity for {:?}: {e}", c.segment))?;
    }
    let pipe = Pipeline::from_config(cfg).map_err(|e| e.to_string())?;
    let risk = Risk::new(
        map.clone(),
        pipe.registry.points().to_vec(),
        cfg.risk.clone(),
        store,
        cfg.window.size.as_millis() as i64,
    );
    let parser = pipe.parser.clone();
    let Pipeline { engine, sources, .. } = pipe;
    let mut flow = Flow::new(engine, sources, risk, Collect::default(), &cfg.window);
    let mut em = Emitter::new(&world);
    drive(&mut em, &parser, &mut flow)?;
    let out = flow.finish();
    Ok(NightRun {
        label: label.into(),
        people,
        ends: out.ends,
        tracks: out.tracks,
        alerts: out.alerts,
    })
}

/// The baseline and, with a what-if, the changed night, played side by side (two threads).
pub fn rehearse(plan: &Plan<'_>, what_if: Option<&WhatIf>) -> Result<(NightRun, Option<NightRun>), String> {
    let changed = match what_if {
        None => None,
        Some(w) => {
            let scenario = Scenario::load(plan.dir, plan.seed)?;
            Some((w.people(plan.people)?, w.changes(&scenario, &plan.night)?, w))
        }
    };
    std::thread::scope(|s| {
        let other = changed.map(|(people, changes, w)| {
            s.spawn(move || play(plan, &w.title(), people, changes, &w.capacity))
        });
        let base = play(plan, "baseline", plan.people, Changes::default(), &[])?;
        let other = match other {
            None => None,
            Some(h) => Some(h.join().map_err(|_| "the what-if night panicked".to_string())??),
        };
        Ok((base, other))
    })
}

/// One segment's night in numbers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SegmentSummary {
    /// Segment id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Walkable area, m².
    pub area_m2: f64,
    /// Capacity in force (people), if any.
    pub capacity: Option<f64>,
    /// Density thresholds in force (p/m²).
    pub density_thresholds: Levels,
    /// Most people in one window.
    pub peak_people: f64,
    /// Highest density.
    pub peak_density: f64,
    /// When the density peaked (window end, epoch ms).
    pub peak_at: Option<i64>,
    /// The same in local time ("HH:MM").
    pub peak_at_local: Option<String>,
    /// The highest tier reached (`low` when it was only ever low or degraded).
    pub highest_tier: Shown,
    /// When each tier was first reached (window end, epoch ms; null: never).
    pub first: BTreeMap<&'static str, Option<i64>>,
    /// The same in local time.
    pub first_local: BTreeMap<&'static str, Option<String>>,
    /// What raised it to each tier first (the alert's reason, e.g. "flow 70 p/m/min ≥ 66").
    pub first_reason: BTreeMap<&'static str, Option<String>>,
    /// Minutes at high or above (windows × slide).
    pub minutes_high_or_above: f64,
}

/// Rank of a tier for "at or above" (degraded counts as none).
pub fn rank(t: Shown) -> u8 {
    match t {
        Shown::Degraded | Shown::Low => 0,
        Shown::Medium => 1,
        Shown::High => 2,
        Shown::Critical => 3,
    }
}

/// Summarises each segment of a night.
pub fn summarise(run: &NightRun, night: &Night, slide_ms: i64) -> Vec<SegmentSummary> {
    run.tracks
        .iter()
        .map(|t| {
            let peak = t
                .density
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i);
            let highest = t
                .tiers
                .iter()
                .copied()
                .max_by_key(|x| rank(*x))
                .unwrap_or(Shown::Low);
            let mut first = BTreeMap::new();
            let mut first_local = BTreeMap::new();
            let mut first_reason = BTreeMap::new();
            for tier in TIERS {
                let alert = run
                    .alerts
                    .iter()
                    .find(|a| a.segment_id.as_str() == t.id && rank(a.to_tier) >= rank(tier));
                first_reason.insert(tier.as_str(), alert.map(|a| a.reason.clone()));
                let at = t
                    .tiers
                    .iter()
                    .position(|x| rank(*x) >= rank(tier))
                    .map(|i| run.ends[i]);
                first.insert(tier.as_str(), at);
                first_local.insert(tier.as_str(), at.map(|ms| night.clock(ms)));
            }
            let high = t.tiers.iter().filter(|x| rank(**x) >= rank(Shown::High)).count();
            SegmentSummary {
                id: t.id.clone(),
                name: t.name.clone(),
                area_m2: t.area_m2,
                capacity: t.thresholds.capacity,
                density_thresholds: t.thresholds.density,
                peak_people: peak.map_or(0.0, |i| t.people[i].round()),
                peak_density: peak.map_or(0.0, |i| (t.density[i] * 100.0).round() / 100.0),
                peak_at: peak.map(|i| run.ends[i]),
                peak_at_local: peak.map(|i| night.clock(run.ends[i])),
                highest_tier: if rank(highest) == 0 { Shown::Low } else { highest },
                first,
                first_local,
                first_reason,
                minutes_high_or_above: high as f64 * slide_ms as f64 / 60_000.0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_exit_7_sends_its_arrivals_to_other_exits_and_leaves_the_baseline_alone() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bund");
        let sim = |changes: Changes| {
            World::new(
                Scenario::load(&dir, 4).unwrap(),
                SimConfig {
                    people: 3000,
                    duration_s: 3600.0,
                    start_ms: 1_767_194_400_000,
                    speed: 1.0,
                    seed: 4,
                    panel: Panel::bund(),
                    changes,
                },
            )
        };
        let base = sim(Changes::default());
        let same = sim(Changes::default());
        let scenario = Scenario::load(&dir, 4).unwrap();
        let exit7 = scenario
            .routes
            .iter()
            .position(|r| r.id == "enr-exit-7-to-embankment")
            .unwrap();
        let closed = sim(Changes {
            arrival_shape: None,
            closures: vec![crate::tools::sim::Closure {
                from_s: 1200.0,
                what: crate::tools::sim::Closed::Exit {
                    station: "east-nanjing-road".into(),
                    exit: "exit-7".into(),
                },
            }],
        });
        let arrivals_by_7 = |w: &World, after: f64| {
            w.agents
                .iter()
                .filter(|a| a.route as usize == exit7 && a.arrive() >= after)
                .count()
        };
        assert!(arrivals_by_7(&base, 1200.0) > 20, "the baseline uses exit 7 late");
        assert_eq!(
            arrivals_by_7(&closed, 1200.0),
            0,
            "nobody arrives by exit 7 once closed"
        );
        assert!(arrivals_by_7(&closed, 0.0) > 0, "before it closes, it is used");
        let leave_by_7 = closed
            .agents
            .iter()
            .filter(|a| a.back as usize == exit7 && a.leave() > 2400.0 && a.by_metro)
            .count();
        assert_eq!(leave_by_7, 0, "nobody taps in at a closed exit");
        // Everybody else walks the same night: same arrivals, same number of people.
        assert_eq!(base.agents.len(), closed.agents.len());
        let unchanged = base
            .agents
            .iter()
            .zip(&closed.agents)
            .filter(|(a, b)| a.route == b.route && a.arrive() == b.arrive())
            .count();
        assert!(unchanged as f64 > 0.8 * base.agents.len() as f64);
        assert!(base
            .agents
            .iter()
            .zip(&same.agents)
            .all(|(a, b)| a.route == b.route && a.path.len() == b.path.len()));
    }
}
