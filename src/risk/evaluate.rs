//! Windows → segment people, density, flow, trend, staleness and tier; tier changes → alerts.
//! No I/O: the caller persists alerts and publishes statuses.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::calibrate::{CalibrationState, Calibrator, Evidence};
use super::thresholds::{ThresholdStore, Thresholds};
use super::tiers::{Measures, Shown, Tier, TierMachine, TierRules};
use crate::config::{NowcastConfig, RiskConfig};
use crate::scenario::registry::FeedPoint;
use crate::scenario::{SegmentId, SegmentMap};
use crate::window::HexWindow;

/// One segment after one evaluation.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct SegmentStatus {
    /// Segment id.
    pub id: SegmentId,
    /// Bilingual name.
    pub name: String,
    /// street / square / promenade / stairs / station-exit.
    pub kind: String,
    /// Walkable area, m².
    pub area_m2: f64,
    /// Window evaluated (epoch ms).
    pub window_start: i64,
    /// Its end.
    pub window_end: i64,
    /// Estimated people on the segment.
    pub people: f64,
    /// People per m² of walkable area.
    pub density: f64,
    /// People into the segment during the window (counters, station exits).
    pub inflow: u64,
    /// People out of it.
    pub outflow: u64,
    /// Crossing flow, people per metre of effective width per minute (null: no counter).
    pub flow: Option<f64>,
    /// Rate of change of people, people per minute (least squares over recent windows).
    pub trend: f64,
    /// rising / falling / steady.
    pub trend_dir: &'static str,
    /// The next tier up from the one in force.
    pub next_tier: Option<Tier>,
    /// Minutes until its density level is reached at the current rise (null: not rising).
    pub minutes_to_next: Option<f64>,
    /// low / medium / high / critical, or degraded when its sources are silent.
    pub tier: Shown,
    /// Sources silent for more than `stale_factor` × their nominal period.
    pub degraded: bool,
    /// Seconds since its freshest source last reported (null: never).
    pub silent_s: Option<f64>,
    /// Thresholds in force.
    pub thresholds: Thresholds,
    /// Where the numbers come from: phones, the zone headcount, counters, gates.
    pub sources: Contributions,
}

/// What each kind of feed says of one segment in one window (the drill-down shows it beside the
/// fused `people`, which is the phones' estimate or the zone headcount, whichever is larger).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Contributions {
    /// People the phones stand for (devices placed on the segment × people per device).
    pub lbs_people: f64,
    /// The zone headcount (cameras counting the people standing in it; null: none reported).
    pub counted_people: Option<f64>,
    /// People counters: into the segment during the window.
    pub counter_in: u64,
    /// People counters: out of it.
    pub counter_out: u64,
    /// Metro gates: out of the station into the segment.
    pub gate_in: u64,
    /// Metro gates: from the segment into the station.
    pub gate_out: u64,
    /// People the segment's trend adds to the phones' count for the age of their positions
    /// (negative on an emptying segment; `[risk.nowcast]`); included in `lbs_people`.
    pub trend_people: f64,
}

/// A tier change.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Alert {
    /// Event time of the evaluation (window end, epoch ms).
    pub ts: i64,
    /// Segment id.
    pub segment_id: SegmentId,
    /// Segment name.
    pub name: String,
    /// Tier before.
    pub from_tier: Shown,
    /// Tier after.
    pub to_tier: Shown,
    /// People then.
    pub people: f64,
    /// Density then.
    pub density: f64,
    /// The trigger that fired, e.g. "density 2.30 p/m² ≥ 2.00".
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SegState {
    machine: TierMachine,
    history: VecDeque<(i64, f64)>,
    /// The phones' counts as placed (before the nowcast), for the nowcast's slope.
    #[serde(default)]
    placed: VecDeque<(i64, f64)>,
    /// None before the first evaluation.
    shown: Option<Shown>,
}

/// What the segments stage remembers between windows (tier machines, trends, freshness): it
/// goes into the checkpoint beside the window engine, so a restart carries on the same tiers
/// instead of raising every alert again.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RiskState {
    point_last: Vec<i64>,
    lbs_last: i64,
    states: Vec<(SegmentId, SegState)>,
    #[serde(default)]
    calibration: CalibrationState,
}

/// The segments stage.
#[derive(Debug)]
pub struct Risk {
    map: Arc<SegmentMap>,
    points: Vec<FeedPoint>,
    point_segment: Vec<Option<usize>>,
    point_last: Vec<i64>,
    lbs_last: i64,
    states: HashMap<SegmentId, SegState>,
    cfg: RiskConfig,
    rules: TierRules,
    store: ThresholdStore,
    window_minutes: f64,
    lbs_period_ms: i64,
    calibrator: Calibrator,
}

impl Risk {
    /// A segments stage over `map`, fed by the registry's feed points.
    pub fn new(
        map: Arc<SegmentMap>,
        points: Vec<FeedPoint>,
        cfg: RiskConfig,
        store: ThresholdStore,
        window_size_ms: i64,
    ) -> Risk {
        let rules = TierRules {
            hysteresis: cfg.hysteresis,
            dwell: cfg.dwell,
            calm_ms: cfg.calm_period.as_millis() as i64,
        };
        let n = points.len();
        let calibrator = Calibrator::new(cfg.calibration.clone());
        let mut r = Risk {
            map,
            points,
            point_segment: Vec::new(),
            point_last: vec![i64::MIN; n],
            lbs_last: i64::MIN,
            states: HashMap::new(),
            cfg,
            rules,
            store,
            window_minutes: window_size_ms as f64 / 60_000.0,
            lbs_period_ms: window_size_ms,
            calibrator,
        };
        r.resolve_points();
        r
    }

    fn resolve_points(&mut self) {
        self.point_segment = self
            .points
            .iter()
            .map(|p| p.segment.as_deref().and_then(|s| self.map.index(s)))
            .collect();
    }

    /// Swaps in a reloaded segments file; tier state is kept for segments that still exist.
    pub fn reload(&mut self, map: Arc<SegmentMap>) {
        self.map = map;
        self.resolve_points();
        let keep: std::collections::HashSet<&SegmentId> = self.map.segments().iter().map(|s| &s.id).collect();
        self.states.retain(|k, _| keep.contains(k));
    }

    /// The state to checkpoint (see [`RiskState`]).
    pub fn state(&self) -> RiskState {
        let mut states: Vec<(SegmentId, SegState)> =
            self.states.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        RiskState {
            point_last: self.point_last.clone(),
            lbs_last: self.lbs_last,
            states,
            calibration: self.calibrator.state(),
        }
    }

    /// Carries on from a checkpointed state; segments no longer in force are dropped, feed points
    /// beyond today's registry ignored.
    pub fn restore(&mut self, s: RiskState) {
        for (i, t) in s.point_last.into_iter().enumerate() {
            if let Some(p) = self.point_last.get_mut(i) {
                *p = t;
            }
        }
        self.lbs_last = s.lbs_last;
        self.calibrator.restore(s.calibration);
        let keep: std::collections::HashSet<&SegmentId> = self.map.segments().iter().map(|s| &s.id).collect();
        self.states = s.states.into_iter().filter(|(k, _)| keep.contains(k)).collect();
    }

    /// Per registry point, the segment it counts (None: on no segment).
    pub fn point_segments(&self) -> &[Option<usize>] {
        &self.point_segment
    }

    /// The configured people per device, by source id (calibration starts from them).
    pub fn set_priors(&mut self, priors: Vec<f64>) {
        self.calibrator.set_priors(priors);
    }

    /// The calibrator: the factors in force and how they stand.
    pub fn calibrator(&self) -> &Calibrator {
        &self.calibrator
    }

    /// The segments in force.
    pub fn map(&self) -> &Arc<SegmentMap> {
        &self.map
    }

    /// Thresholds in force for segment `i`: config defaults ← file capacity and overrides ← organisers.
    pub fn thresholds(&self, i: usize) -> Thresholds {
        thresholds_for(&self.map, &self.cfg, &self.store, i)
    }

    /// Evaluates every segment over one window.
    pub fn evaluate(&mut self, w: &HexWindow) -> (Vec<SegmentStatus>, Vec<Alert>) {
        let n = self.map.segments().len();
        // Segment people come from device positions (the window engine's attribution), not from
        // cell shares: a small packed segment inside a big cell keeps its own crowd.
        let mut lbs = vec![0.0f64; n];
        if w.segments.people.len() == n {
            lbs.copy_from_slice(&w.segments.people);
        }
        let any_lbs = w.rows.iter().any(|r| r.lbs_devices > 0);
        if any_lbs {
            self.lbs_last = self.lbs_last.max(w.end.0);
        }
        let mut inflow = vec![0u64; n];
        let mut outflow = vec![0u64; n];
        let mut parts = vec![Contributions::default(); n];
        let mut occupancy: Vec<Option<f64>> = vec![None; n];
        for p in &w.points {
            let i = p.point.0 as usize;
            if let Some(last) = self.point_last.get_mut(i) {
                *last = (*last).max(p.last_ts);
            }
            if let Some(Some(seg)) = self.point_segment.get(i) {
                inflow[*seg] += p.inflow;
                outflow[*seg] += p.outflow;
                let part = &mut parts[*seg];
                if self.points.get(i).is_some_and(|fp| fp.gate) {
                    part.gate_in += p.inflow;
                    part.gate_out += p.outflow;
                } else {
                    part.counter_in += p.inflow;
                    part.counter_out += p.outflow;
                }
                if let Some(o) = p.occupancy {
                    *occupancy[*seg].get_or_insert(0.0) += o as f64;
                }
            }
        }
        self.calibrate(w, &occupancy);
        let stale = self.cfg.stale_factor;
        let lbs_silent = w.end.0.saturating_sub(self.lbs_last) as f64 > stale * self.lbs_period_ms as f64;
        let mut statuses = Vec::with_capacity(n);
        let mut alerts = Vec::new();
        for (i, seg) in self.map.segments().iter().enumerate() {
            let th = self.thresholds(i);
            // Freshest source and whether every source is silent.
            let mut freshest = if self.lbs_last == i64::MIN {
                None
            } else {
                Some(self.lbs_last)
            };
            let mut all_silent = lbs_silent;
            for (p, point) in self.points.iter().enumerate() {
                if self.point_segment[p] != Some(i) {
                    continue;
                }
                let last = self.point_last[p];
                if last != i64::MIN {
                    freshest = Some(freshest.map_or(last, |f: i64| f.max(last)));
                }
                let period_ms = point.period_s.unwrap_or(60.0) * 1000.0;
                if (w.end.0.saturating_sub(last)) as f64 <= stale * period_ms {
                    all_silent = false;
                }
            }
            let st = self.states.entry(seg.id.clone()).or_default();
            let age_s = w.segments.device_age_s.get(i).copied().unwrap_or(0.0);
            // Fusion at segment level: LBS estimate, or a zone headcount when larger.
            let fuse = |lbs: f64| match occupancy[i] {
                Some(o) => lbs.max(o),
                None => lbs,
            };
            // The trend and the time to the next tier follow the counts as placed: a slope of
            // nowcast counts would carry each window's correction into the next.
            let placed = fuse(lbs[i]);
            let added = nowcast(&mut st.placed, &self.cfg.nowcast, w.end.0, lbs[i], age_s);
            lbs[i] += added;
            parts[i].trend_people = added;
            let people = fuse(lbs[i]);
            let density = people / seg.area_m2;
            let has_counter = self.point_segment.contains(&Some(i));
            let flow = has_counter
                .then(|| (inflow[i] + outflow[i]) as f64 / self.window_minutes / seg.effective_width_m);
            st.history.push_back((w.end.0, placed));
            while st.history.len() > self.cfg.trend_windows.max(2) {
                st.history.pop_front();
            }
            let trend = slope_per_min(&st.history);
            let rising = trend > 1e-9;
            let to_density = |d: f64| rising.then(|| ((d * seg.area_m2 - people) / trend).max(0.0));
            let minutes_to_high = if density < th.density.high {
                to_density(th.density.high)
            } else {
                None
            };
            let measures = Measures {
                density,
                flow,
                capacity_share: th.capacity.map(|c| people / c),
                minutes_to_high,
            };
            let change = st.machine.step(&measures, &th, &self.rules, w.end.0);
            let tier = st.machine.tier();
            let shown = if all_silent {
                Shown::Degraded
            } else {
                Shown::from(tier)
            };
            let next_tier = tier.next();
            let minutes_to_next = next_tier.and_then(|t| {
                let d = match t {
                    Tier::Medium => th.density.medium,
                    Tier::High => th.density.high,
                    _ => th.density.critical,
                };
                (density < d).then(|| to_density(d)).flatten()
            });
            let prev_shown = st.shown.replace(shown);
            let from = prev_shown.unwrap_or(Shown::Low);
            let reason = match (&change, all_silent) {
                (_, true) if prev_shown != Some(Shown::Degraded) => {
                    Some("sources silent: no report within 3× their period".to_string())
                }
                (Some(c), _) => Some(c.reason.clone()),
                (None, false) if prev_shown == Some(Shown::Degraded) => {
                    Some("sources reporting again".to_string())
                }
                _ => None,
            };
            if let Some(reason) = reason.filter(|_| from != shown) {
                alerts.push(Alert {
                    ts: w.end.0,
                    segment_id: seg.id.clone(),
                    name: seg.name.clone(),
                    from_tier: from,
                    to_tier: shown,
                    people,
                    density,
                    reason,
                });
            }
            statuses.push(SegmentStatus {
                id: seg.id.clone(),
                name: seg.name.clone(),
                kind: seg.kind.clone(),
                area_m2: seg.area_m2,
                window_start: w.start.0,
                window_end: w.end.0,
                people,
                density,
                inflow: inflow[i],
                outflow: outflow[i],
                flow,
                trend,
                trend_dir: if trend > 0.5 {
                    "rising"
                } else if trend < -0.5 {
                    "falling"
                } else {
                    "steady"
                },
                next_tier,
                minutes_to_next,
                tier: shown,
                degraded: all_silent,
                silent_s: freshest.map(|f| (w.end.0 - f).max(0) as f64 / 1000.0),
                thresholds: th,
                sources: Contributions {
                    lbs_people: lbs[i],
                    counted_people: occupancy[i],
                    ..parts[i]
                },
            });
        }
        (statuses, alerts)
    }
}

impl Risk {
    /// Hands the window's zone counts and the devices placed on their segments to the calibrator.
    fn calibrate(&mut self, w: &HexWindow, occupancy: &[Option<f64>]) {
        let by_source = &w.segments.devices_by_source;
        let evidence: Vec<Evidence> = occupancy
            .iter()
            .enumerate()
            .filter_map(|(i, o)| {
                let count = (*o)?;
                let seg = &self.map.segments()[i];
                Some(Evidence {
                    segment: seg.id.0.clone(),
                    count,
                    devices: by_source
                        .iter()
                        .map(|d| d.get(i).copied().unwrap_or(0.0))
                        .collect(),
                    area_m2: seg.area_m2,
                    capacity: self.thresholds(i).capacity,
                    age_s: w.segments.device_age_s.get(i).copied().unwrap_or(0.0),
                })
            })
            .collect();
        self.calibrator.update(w.end.0, &evidence);
    }
}

/// Thresholds in force for segment `i` of `map`.
pub fn thresholds_for(map: &SegmentMap, cfg: &RiskConfig, store: &ThresholdStore, i: usize) -> Thresholds {
    let seg = &map.segments()[i];
    let mut t = cfg.thresholds;
    if seg.capacity.is_some() {
        t.capacity = seg.capacity;
    }
    t = seg.thresholds.apply(t);
    match store.overrides(&seg.id.0) {
        Some(o) => o.apply(t),
        None => t,
    }
}

/// People to add to a segment's phone count `count` at window end `end` so that it stands for the
/// crowd at the end rather than where the phones last spoke (on average `age_s` earlier): the
/// slope of its recent counts as placed (`placed`, which this extends) × that age, capped at
/// `max_age`. A count taken at
/// a random moment of a steady crowd is unbiased, so a steady segment gets nothing; a filling one
/// is a slope × age behind, which is what made the Bund's rises into `high` one to two slides
/// late (docs/ACCURACY.md, "The count moved along its trend"). The slope is fitted on the placed
/// counts, not the nowcast ones, so a correction never feeds on itself.
fn nowcast(placed: &mut VecDeque<(i64, f64)>, cfg: &NowcastConfig, end: i64, count: f64, age_s: f64) -> f64 {
    placed.push_back((end, count));
    while placed.len() > cfg.trend_windows.max(2) {
        placed.pop_front();
    }
    let lag_min = age_s.clamp(0.0, cfg.max_age.as_secs_f64()) / 60.0;
    if lag_min == 0.0 {
        return 0.0;
    }
    // Never below nobody: an emptying segment's correction at most empties it.
    (slope_per_min(placed) * lag_min).max(-count)
}

/// Least-squares slope of people over time, in people per minute.
fn slope_per_min(h: &VecDeque<(i64, f64)>) -> f64 {
    if h.len() < 2 {
        return 0.0;
    }
    let n = h.len() as f64;
    let t0 = h[0].0;
    let xs: Vec<f64> = h.iter().map(|(t, _)| (t - t0) as f64 / 60_000.0).collect();
    let mx = xs.iter().sum::<f64>() / n;
    let my = h.iter().map(|(_, p)| p).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (x, (_, y)) in xs.iter().zip(h) {
        num += (x - mx) * (y - my);
        den += (x - mx) * (x - mx);
    }
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CellId, EventTime, PointIdx};
    use crate::scenario::segments::Segment;
    use crate::window::engine::{HexRow, PointWindow};
    use geo::polygon;
    use h3o::Resolution;

    fn setup() -> (Risk, Vec<CellId>) {
        let mut props = serde_json::Map::new();
        props.insert("effective_width_m".into(), 20.into());
        props.insert("name".into(), "南京东路 East Nanjing Road".into());
        let p = polygon![(x: 121.4755, y: 31.2389), (x: 121.4857, y: 31.2408), (x: 121.4857, y: 31.2410), (x: 121.4755, y: 31.2391)];
        let seg = Segment::new("enr".into(), &props, p).unwrap();
        let map = SegmentMap::build(vec![seg], Resolution::Eleven).unwrap();
        let cells: Vec<CellId> = map.overlaps(0).iter().map(|(c, _)| *c).collect();
        let points = vec![FeedPoint {
            id: "counter:cam".into(),
            segment: Some("enr".into()),
            period_s: Some(10.0),
            gate: false,
            zone: false,
            width_m: Some(20.0),
        }];
        let store = ThresholdStore::open(None).unwrap();
        (
            Risk::new(Arc::new(map), points, RiskConfig::default(), store, 60_000),
            cells,
        )
    }

    fn window(end: i64, cells: &[CellId], per_cell: f64, flow: Option<(u64, u64)>) -> HexWindow {
        HexWindow {
            start: EventTime(end - 60_000),
            end: EventTime(end),
            rows: cells
                .iter()
                .map(|c| HexRow {
                    cell: *c,
                    lbs_devices: 1,
                    lbs_people: per_cell,
                    ..Default::default()
                })
                .collect(),
            points: flow
                .map(|(i, o)| PointWindow {
                    point: PointIdx(0),
                    inflow: i,
                    outflow: o,
                    occupancy: None,
                    last_ts: end - 1,
                })
                .into_iter()
                .collect(),
            segments: crate::window::SegmentPeople {
                people: vec![per_cell * cells.len() as f64],
                carried: vec![0.0],
                ..Default::default()
            },
            is_final: true,
        }
    }

    #[test]
    fn people_density_and_flow_of_a_segment() {
        let (mut r, cells) = setup();
        let (s, _) = r.evaluate(&window(60_000, &cells, 10.0, Some((600, 600))));
        let st = &s[0];
        assert!((st.people - 10.0 * cells.len() as f64).abs() < 1e-6);
        assert!((st.density - st.people / st.area_m2).abs() < 1e-12);
        assert_eq!(st.flow, Some(1200.0 / 1.0 / 20.0));
        assert_eq!(st.tier, Shown::Low);
    }

    #[test]
    fn a_crowding_segment_raises_an_alert_with_its_trigger() {
        let (mut r, cells) = setup();
        let area = r.map().segments()[0].area_m2;
        let per_cell = 2.3 * area / cells.len() as f64;
        let mut alerts = Vec::new();
        for k in 1..=3 {
            alerts.extend(
                r.evaluate(&window(k * 10_000, &cells, per_cell, Some((10, 10))))
                    .1,
            );
        }
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(
            (alerts[0].from_tier, alerts[0].to_tier),
            (Shown::Low, Shown::High)
        );
        assert!(
            alerts[0].reason.starts_with("density 2.30 p/m² ≥ 2.00"),
            "{}",
            alerts[0].reason
        );
    }

    /// A window whose phones on the segment count `people`, placed on average `age_s` ago.
    fn aged(end: i64, cells: &[CellId], people: f64, age_s: f64) -> HexWindow {
        let mut w = window(end, cells, people / cells.len() as f64, None);
        w.segments.device_age_s = vec![age_s];
        w
    }

    #[test]
    fn a_filling_segment_is_counted_forward_by_its_positions_age_and_a_steady_one_is_not() {
        let (mut r, cells) = setup();
        // Steady at 300 people: whatever the positions' age, nothing is added.
        for k in 1..=12 {
            let (s, _) = r.evaluate(&aged(k * 10_000, &cells, 300.0, 20.0));
            assert!((s[0].people - 300.0).abs() < 1e-6, "window {k}: {}", s[0].people);
            assert!(s[0].sources.trend_people.abs() < 1e-6);
        }
        // Filling by 10 people a slide (60 a minute): once the fit sees the rise, positions 20 s
        // old stand for a crowd 20 people larger at the window's end.
        let mut last = None;
        for k in 13..=30 {
            let placed = 300.0 + 10.0 * (k - 12) as f64;
            let (s, _) = r.evaluate(&aged(k * 10_000, &cells, placed, 20.0));
            last = Some((
                placed,
                s[0].people,
                s[0].sources.trend_people,
                s[0].sources.lbs_people,
            ));
        }
        let (placed, people, added, lbs) = last.unwrap();
        assert!((added - 20.0).abs() < 1e-6, "added {added}");
        assert!((people - (placed + 20.0)).abs() < 1e-6 && (lbs - people).abs() < 1e-9);
        // The displayed trend is the placed counts' slope (60 people a minute), not the nowcast's.
        let (s, _) = r.evaluate(&aged(310_000, &cells, placed + 10.0, 20.0));
        assert!((s[0].trend - 60.0).abs() < 1e-6, "trend {}", s[0].trend);
        // Positions two minutes old are trusted forward only `max_age` (30 s): +30, not +120.
        let (s, _) = r.evaluate(&aged(320_000, &cells, placed + 20.0, 120.0));
        assert!(
            (s[0].sources.trend_people - 30.0).abs() < 1e-6,
            "{}",
            s[0].sources.trend_people
        );
        // Emptying fast with old positions: the correction empties the segment at most.
        let (mut r, cells) = setup();
        for k in 1..=12 {
            r.evaluate(&aged(k * 10_000, &cells, (1200 - 100 * k) as f64, 30.0));
        }
        let (s, _) = r.evaluate(&aged(130_000, &cells, 10.0, 30.0));
        assert!(
            s[0].people >= 0.0 && s[0].sources.trend_people >= -10.0 - 1e-9,
            "{:?}",
            s[0].sources
        );
    }

    #[test]
    fn the_nowcast_is_off_with_a_max_age_of_zero() {
        let (r, cells) = setup();
        let mut cfg = RiskConfig::default();
        cfg.nowcast.max_age = std::time::Duration::ZERO;
        let store = ThresholdStore::open(None).unwrap();
        let mut r = Risk::new(r.map().clone(), r.points.clone(), cfg, store, 60_000);
        for k in 1..=12 {
            let placed = 100.0 * k as f64;
            let (s, _) = r.evaluate(&aged(k * 10_000, &cells, placed, 30.0));
            assert!((s[0].people - placed).abs() < 1e-6 && s[0].sources.trend_people == 0.0);
        }
    }

    #[test]
    fn silent_sources_make_a_segment_degraded_never_silently_low() {
        let (mut r, cells) = setup();
        r.evaluate(&window(60_000, &cells, 1.0, Some((1, 1))));
        let empty = HexWindow {
            start: EventTime(300_000),
            end: EventTime(360_000),
            rows: vec![],
            points: vec![],
            segments: Default::default(),
            is_final: true,
        };
        let (s, a) = r.evaluate(&empty);
        assert_eq!(s[0].tier, Shown::Degraded);
        assert!(s[0].degraded);
        assert_eq!(a[0].to_tier, Shown::Degraded);
        let (s, a) = r.evaluate(&window(370_000, &cells, 1.0, Some((1, 1))));
        assert_eq!(s[0].tier, Shown::Low);
        assert_eq!(a[0].reason, "sources reporting again");
    }

    #[test]
    fn organiser_thresholds_apply_from_the_next_evaluation() {
        let (mut r, cells) = setup();
        let area = r.map().segments()[0].area_m2;
        let per_cell = 0.5 * area / cells.len() as f64;
        assert_eq!(
            r.evaluate(&window(10_000, &cells, per_cell, None)).0[0].tier,
            Shown::Low
        );
        let patch = serde_json::from_str(r#"{"density":{"medium":0.3,"high":0.4,"critical":0.45}}"#).unwrap();
        let current = r.thresholds(0);
        r.store
            .update(crate::risk::thresholds::Change {
                segment: "enr",
                current,
                patch: &patch,
                by: "t",
                role: crate::model::Role::Organiser,
                now_ms: 0,
            })
            .unwrap();
        assert_eq!(
            r.evaluate(&window(20_000, &cells, per_cell, None)).0[0].tier,
            Shown::Critical
        );
    }

    #[test]
    fn trend_and_time_to_threshold() {
        let (mut r, cells) = setup();
        let area = r.map().segments()[0].area_m2;
        let n = cells.len() as f64;
        let mut last = None;
        for k in 0..6 {
            // +0.1 p/m² every 10 s.
            let d = 0.1 + 0.1 * k as f64;
            last = Some(
                r.evaluate(&window(60_000 + k * 10_000, &cells, d * area / n, None))
                    .0
                    .remove(0),
            );
        }
        let s = last.unwrap();
        assert_eq!(s.trend_dir, "rising");
        assert!(
            (s.trend - 0.6 * area).abs() / (0.6 * area) < 1e-6,
            "{} people/min",
            s.trend
        );
        assert!(s.minutes_to_next.is_some());
    }
}
