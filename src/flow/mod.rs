//! The one flow: records into the window engine; each closed window through the segment tiers;
//! the result handed to the outputs. `serve` and `replay` both run this code — they differ only
//! in their `Outputs` (viewers and history for a server; history or standard output offline) and
//! in their clock (the wall clock, or the newest event time seen).
//!
//! Order per closed window: evaluate segments (tier machines advance, alerts are raised), log the
//! alerts, then hand window, statuses and alerts to the outputs together. When feeds are silent
//! but the watermark moves on (it follows the clock), an empty window is evaluated so segments
//! turn `degraded` on time instead of showing their last tier forever.

pub mod health;

use std::sync::Arc;

use crate::config::WindowConfig;
use crate::ingest::Sources;
use crate::model::SourceId;
use crate::model::{EventTime, Record};
use crate::risk::{Alert, Risk, RiskState, SegmentStatus, SourceCalibration};
use crate::scenario::SegmentMap;
use crate::window::{Engine, HexWindow, LateRecord};

pub use health::{Clocks, Delays, Health, SourceHealth, SourceProgress};

/// Whether a closed window held data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// The engine closed it: cells, segment statuses and alerts.
    Data,
    /// No record fell in it; evaluated only so silent segments turn degraded (no heatmap, no
    /// `hex_windows` rows).
    Silent,
}

/// One evaluated window, as the outputs receive it.
#[derive(Debug)]
pub struct Closed<'a> {
    /// The window (no rows when `kind` is `Silent`).
    pub window: &'a Arc<HexWindow>,
    /// Every segment after the evaluation (empty without segments).
    pub statuses: &'a Arc<Vec<SegmentStatus>>,
    /// Tier changes of this evaluation.
    pub alerts: &'a [Alert],
    /// Each LBS source's people per device after this window (what the next windows use).
    pub calibration: &'a [SourceCalibration],
    /// Data or silent.
    pub kind: WindowKind,
}

/// Where the flow's results go. Every method but `closed` has a do-nothing default.
pub trait Outputs {
    /// A window was closed and evaluated.
    fn closed(&mut self, closed: &Closed<'_>);

    /// The open window so far (live viewers), and where each source stands against it.
    fn provisional(&mut self, _snapshot: HexWindow, _progress: Vec<SourceProgress>) {}

    /// Records that missed a closed window (kept, never dropped).
    fn late(&mut self, _late: &[LateRecord], _sources: &Sources) {}

    /// Makes everything received so far durable; a checkpoint is taken only when this is true,
    /// since it drops the log segments the received windows could otherwise be rebuilt from.
    fn persist(&mut self) -> bool {
        true
    }

    /// End of input: nothing more will come.
    fn finish(&mut self) {}
}

impl<A: Outputs, B: Outputs> Outputs for (A, B) {
    fn closed(&mut self, closed: &Closed<'_>) {
        self.0.closed(closed);
        self.1.closed(closed);
    }

    fn provisional(&mut self, snapshot: HexWindow, progress: Vec<SourceProgress>) {
        // Only the first output of a pair that wants snapshots gets one: they are for viewers.
        self.0.provisional(snapshot, progress);
    }

    fn late(&mut self, late: &[LateRecord], sources: &Sources) {
        self.0.late(late, sources);
        self.1.late(late, sources);
    }

    fn persist(&mut self) -> bool {
        // Both, even when the first fails: each keeps what it could not write and retries.
        let a = self.0.persist();
        let b = self.1.persist();
        a && b
    }

    fn finish(&mut self) {
        self.0.finish();
        self.1.finish();
    }
}

/// What the flow remembers above the window engine: checkpointed beside it, so a recovery carries
/// on with the same tiers and the same silent-window schedule.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct FlowState {
    /// The segments stage.
    pub risk: RiskState,
    /// End of the newest evaluated window.
    pub last_eval_end: Option<i64>,
}

/// The engine, the segment tiers and the outputs, driven by one owner.
pub struct Flow<O> {
    engine: Engine,
    sources: Arc<Sources>,
    risk: Risk,
    outputs: O,
    slide_ms: i64,
    size_ms: i64,
    /// End of the newest evaluated window (None before the first).
    last_eval_end: Option<i64>,
    /// False where the tiers are not the ones anybody acts on (a cluster partition's).
    log_tiers: bool,
}

impl<O: Outputs> Flow<O> {
    /// A flow over `engine` (fresh or recovered) whose scale factors come from `sources`.
    pub fn new(
        engine: Engine,
        sources: Arc<Sources>,
        risk: Risk,
        outputs: O,
        window: &WindowConfig,
    ) -> Flow<O> {
        let mut f = Flow {
            engine,
            sources,
            risk,
            outputs,
            slide_ms: window.slide.as_millis() as i64,
            size_ms: window.size.as_millis() as i64,
            last_eval_end: None,
            log_tiers: true,
        };
        f.risk.set_priors(f.sources.scales());
        f.apply_factors();
        f.engine.set_max_delays(f.sources.max_delays());
        f.engine.set_profiles(f.sources.profiles());
        f.engine.set_segments(f.risk.map().clone());
        f.engine.set_zone_segments(f.risk.point_segments().to_vec());
        f
    }

    /// Counts one record at processing time `now`, then moves the watermark, so what is late does
    /// not depend on how a feed cut its records into requests; false when it was a duplicate.
    #[inline]
    pub fn ingest(&mut self, r: &Record, now: i64) -> bool {
        let fresh = self.engine.ingest(r, now);
        self.advance(now);
        fresh
    }

    /// Moves the watermark to processing time `now`; closed windows go through tiers to outputs.
    #[inline]
    pub fn advance(&mut self, now: i64) {
        self.refresh_scales();
        let closed = self.engine.advance(now);
        // Per record, nearly always nothing closed: keep that path to a few comparisons.
        if closed.is_empty() {
            self.evaluate_silent();
        } else {
            self.emit(closed);
        }
        self.emit_late();
    }

    /// End of input: closes every open window and tells the outputs; returns them.
    pub fn finish(mut self) -> O {
        self.close();
        self.outputs
    }

    /// End of input, keeping the flow (its final state can then be checkpointed).
    pub fn close(&mut self) {
        self.refresh_scales();
        let closed = self.engine.flush();
        self.emit(closed);
        self.emit_late();
        self.outputs.finish();
    }

    /// Keeps tier changes out of the log and the alert count: for a cluster partition, whose
    /// segments see only its own pings (the city stage's tiers are the ones that count).
    pub fn quiet_tiers(&mut self) {
        self.log_tiers = false;
    }

    /// The state to checkpoint beside the engine (see [`FlowState`]).
    pub fn state(&self) -> FlowState {
        FlowState {
            risk: self.risk.state(),
            last_eval_end: self.last_eval_end,
        }
    }

    /// Carries on from a checkpointed state.
    pub fn restore(&mut self, s: FlowState) {
        self.risk.restore(s.risk);
        self.apply_factors();
        self.last_eval_end = s.last_eval_end;
    }

    /// Each LBS source's people per device as it stands (configured, or learnt from zone counts).
    pub fn calibration(&self) -> Vec<SourceCalibration> {
        self.risk
            .calibrator()
            .estimates()
            .into_iter()
            .filter_map(|e| {
                let source = self.sources.name(SourceId(e.source as u16));
                source.starts_with("lbs").then_some(SourceCalibration {
                    source,
                    prior: e.prior,
                    people_per_device: e.people_per_device,
                    confidence: e.confidence,
                    status: e.status,
                    evidence_devices: e.evidence_devices,
                })
            })
            .collect()
    }

    /// The calibrator (rejection counts for metrics).
    pub fn calibrator(&self) -> &crate::risk::Calibrator {
        self.risk.calibrator()
    }

    /// Puts the calibrated factors in force in the engine when they moved.
    fn apply_factors(&mut self) {
        let f = self.risk.calibrator().factors();
        if f != self.engine.scales() {
            self.engine.set_scales(f.to_vec());
        }
    }

    /// Whether moving on to processing time `now` with no new record would move the watermark:
    /// such a move must be logged first (as a tick), or a recovery would not make it.
    pub fn would_advance(&self, now: i64) -> bool {
        self.engine.watermark().would_advance(now)
    }

    /// Hands the open window so far to the outputs, with each source's progress against it
    /// (`delays` and `clocks` date when a delayed source's records are due).
    pub fn provisional(&mut self, delays: &Delays, clocks: Clocks) {
        if let Some(snap) = self.engine.snapshot() {
            let progress = health::progress(&self.engine, &self.sources, delays, clocks, snap.end.0);
            self.outputs.provisional(snap, progress);
        }
    }

    /// Asks the outputs to make what they hold durable (see `Outputs::persist`).
    pub fn persist(&mut self) -> bool {
        self.outputs.persist()
    }

    /// Swaps in reloaded segments; window and tier state are kept.
    pub fn reload_segments(&mut self, map: Arc<SegmentMap>) {
        self.engine.set_segments(map.clone());
        self.risk.reload(map);
        self.engine.set_zone_segments(self.risk.point_segments().to_vec());
    }

    /// The engine (for checkpoints and health).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The source table.
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// The outputs.
    pub fn outputs(&self) -> &O {
        &self.outputs
    }

    /// The outputs, to act on them between records (a timed flush).
    pub fn outputs_mut(&mut self) -> &mut O {
        &mut self.outputs
    }

    #[inline]
    fn refresh_scales(&mut self) {
        if self.engine.scales_known() != self.sources.len() {
            self.risk.set_priors(self.sources.scales());
            self.apply_factors();
            self.engine.set_max_delays(self.sources.max_delays());
            self.engine.set_profiles(self.sources.profiles());
        }
    }

    fn emit(&mut self, closed: Vec<HexWindow>) {
        for w in closed {
            tracing::debug!(start = %w.start, cells = w.rows.len(), "Closed window.");
            if w.segments.off_network_devices > 0 {
                // Pings matched to no segment: visible, never folded into a street.
                metrics::counter!("throng_lbs_off_network_devices_total")
                    .increment(w.segments.off_network_devices);
            }
            if !w.segments.people.is_empty() {
                metrics::gauge!("throng_lbs_ground_people").set(w.segments.ground.iter().sum::<f64>());
            }
            self.evaluate(Arc::new(w), WindowKind::Data);
        }
    }

    fn evaluate(&mut self, window: Arc<HexWindow>, kind: WindowKind) {
        let (statuses, alerts) = self.risk.evaluate(&window);
        self.apply_factors();
        let calibration = self.calibration();
        self.last_eval_end = Some(self.last_eval_end.map_or(window.end.0, |e| e.max(window.end.0)));
        for a in alerts.iter().filter(|_| self.log_tiers) {
            tracing::warn!(segment = %a.segment_id, from = a.from_tier.as_str(), to = a.to_tier.as_str(), reason = %a.reason, "Tier change.");
        }
        if !alerts.is_empty() && self.log_tiers {
            metrics::counter!("throng_alerts_total").increment(alerts.len() as u64);
        }
        self.outputs.closed(&Closed {
            window: &window,
            statuses: &Arc::new(statuses),
            alerts: &alerts,
            calibration: &calibration,
            kind,
        });
    }

    #[inline]
    fn evaluate_silent(&mut self) {
        let (Some(last), Some(wm)) = (self.last_eval_end, self.engine.watermark().get()) else {
            return;
        };
        // The common case, checked per record: the watermark is still inside the next slide.
        if wm < last + self.slide_ms {
            return;
        }
        let end = wm.div_euclid(self.slide_ms) * self.slide_ms;
        if end >= last + self.slide_ms {
            let empty = HexWindow {
                start: EventTime(end - self.size_ms),
                end: EventTime(end),
                rows: Vec::new(),
                points: Vec::new(),
                segments: Default::default(),
                is_final: true,
            };
            self.evaluate(Arc::new(empty), WindowKind::Silent);
        }
    }

    #[inline]
    fn emit_late(&mut self) {
        if !self.engine.has_late() {
            return;
        }
        let late = self.engine.take_late();
        if !late.is_empty() {
            self.outputs.late(&late, &self.sources);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LbsConfig, RegisterConfig, RiskConfig};
    use crate::model::{Body, CellId, DeviceId, SourceId};
    use crate::risk::ThresholdStore;

    const T0: i64 = 1_767_193_200_000;

    /// Remembers what it was given.
    #[derive(Default)]
    struct Seen {
        closed: Vec<(i64, WindowKind, usize)>,
        late: usize,
        finished: bool,
    }

    impl Outputs for Seen {
        fn closed(&mut self, c: &Closed<'_>) {
            self.closed.push((c.window.start.0, c.kind, c.window.rows.len()));
        }
        fn late(&mut self, late: &[LateRecord], _: &Sources) {
            self.late += late.len();
        }
        fn finish(&mut self) {
            self.finished = true;
        }
    }

    fn flow() -> Flow<(Seen, Seen)> {
        flow_with(
            WindowConfig::default(),
            Arc::new(Sources::new(&LbsConfig::default())),
        )
    }

    /// A flow with no segments over `window` and `sources`, recording into two `Seen`s.
    fn flow_with(window: WindowConfig, sources: Arc<Sources>) -> Flow<(Seen, Seen)> {
        let engine = Engine::new(&window, &RegisterConfig::default(), sources.scales());
        let risk = Risk::new(
            Arc::new(SegmentMap::default()),
            Vec::new(),
            RiskConfig::default(),
            ThresholdStore::open(None).unwrap(),
            window.size.as_millis() as i64,
        );
        Flow::new(engine, sources, risk, (Seen::default(), Seen::default()), &window)
    }

    fn ping(ts: i64, device: u64) -> Record {
        Record {
            ts: EventTime(ts),
            source: SourceId(2),
            cell: CellId(0x08b3_0995_8ac3_6fff),
            point: None,
            body: Body::Ping {
                device: DeviceId(device),
                pos: None,
            },
        }
    }

    #[test]
    fn closed_windows_reach_every_output_once_in_order() {
        let mut f = flow();
        for i in 0..40 {
            f.ingest(&ping(T0 + i * 1_000, i as u64), T0 + i * 1_000);
        }
        let (a, b) = f.finish();
        assert!(a.finished && b.finished);
        assert_eq!(a.closed, b.closed, "both outputs see the same windows");
        let starts: Vec<i64> = a.closed.iter().map(|c| c.0).collect();
        let mut sorted = starts.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(starts, sorted, "each window once, in order");
        // 40 s of pings in 60 s windows sliding by 10 s: windows starting 50 s before T0 to T0 + 30 s.
        assert_eq!(starts.first(), Some(&(T0 - 50_000)));
        assert_eq!(starts.last(), Some(&(T0 + 30_000)));
        assert!(a.closed.iter().all(|c| c.1 == WindowKind::Data && c.2 == 1));
    }

    #[test]
    fn silent_feeds_are_still_evaluated_so_segments_can_turn_degraded() {
        let mut f = flow();
        f.ingest(&ping(T0, 1), T0);
        // The feed stops; processing time runs on (idle source → the watermark follows the clock).
        f.advance(T0 + 120_000);
        let data = f.outputs().0.closed.len();
        assert!(data > 0);
        f.advance(T0 + 300_000);
        let seen = &f.outputs().0.closed;
        assert_eq!(
            seen.len(),
            data + 1,
            "one silent evaluation once the clock has moved on"
        );
        let (start, kind, rows) = seen[data];
        assert_eq!((kind, rows), (WindowKind::Silent, 0));
        let wm = T0 + 300_000 - 5_000;
        assert_eq!(
            start + 60_000,
            wm.div_euclid(10_000) * 10_000,
            "the window ending at the watermark"
        );
        f.advance(T0 + 300_000);
        assert_eq!(
            f.outputs().0.closed.len(),
            data + 1,
            "not again for the same watermark"
        );
    }

    #[test]
    fn late_records_are_handed_to_the_outputs() {
        let mut f = flow();
        f.ingest(&ping(T0 + 200_000, 1), T0 + 200_000);
        f.ingest(&ping(T0, 2), T0 + 200_000);
        assert_eq!(f.outputs().0.late, 1);
        assert_eq!(f.outputs().1.late, 1);
    }

    /// A realtime app panel pinging every second beside a carrier 3 minutes behind that delivers a
    /// minute of pings in one batch each minute, for 10 minutes; returns the late records.
    fn delayed_carrier(max_delay: Option<std::time::Duration>, first_batch_s: i64) -> usize {
        let mut lbs = LbsConfig::default();
        lbs.sources.insert(
            "carrier-a".into(),
            crate::config::LbsSourceConfig {
                scale: 1.0,
                max_delay,
                accuracy_m: None,
                ping_interval: None,
            },
        );
        lbs.sources.insert(
            "app".into(),
            crate::config::LbsSourceConfig {
                scale: 1.0,
                max_delay: None,
                accuracy_m: None,
                ping_interval: None,
            },
        );
        let window = WindowConfig {
            idle_timeout: std::time::Duration::from_secs(8),
            ..WindowConfig::default()
        };
        let sources = Arc::new(Sources::new(&lbs));
        let (app, carrier) = (sources.lbs(Some("app")), sources.lbs(Some("carrier-a")));
        let mut f = flow_with(window, sources);
        let rec = |source, ts, device| Record {
            source,
            ..ping(ts, device)
        };
        for s in 0..600i64 {
            let now = T0 + s * 1_000;
            if s % 60 == 0 && s >= first_batch_s {
                for k in 0..60 {
                    let ts = now - 240_000 + k * 1_000;
                    f.ingest(&rec(carrier, ts, 10_000 + (s * 60 + k) as u64), now);
                }
            }
            f.ingest(&rec(app, now, s as u64), now);
            f.advance(now);
        }
        f.outputs().0.late
    }

    #[test]
    fn a_delayed_carrier_within_its_max_delay_is_never_late() {
        assert_eq!(delayed_carrier(Some(std::time::Duration::from_secs(90)), 0), 0);
        // Without it, each batch after a gap longer than the idle timeout arrives behind the
        // watermark the app panel alone has driven: the test would see the difference.
        assert!(delayed_carrier(None, 0) > 0);
    }

    #[test]
    fn a_fresh_server_waits_for_a_configured_delayed_carrier_that_has_not_spoken_yet() {
        // The app panel starts at once; the carrier's first batch comes a minute later.
        assert_eq!(delayed_carrier(Some(std::time::Duration::from_secs(90)), 60), 0);
        assert!(
            delayed_carrier(None, 60) > 0,
            "without max_delay the app panel closes the carrier's first windows"
        );
    }
}
