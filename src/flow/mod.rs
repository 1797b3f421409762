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
use crate::model::{EventTime, Record};
use crate::risk::{Alert, Risk, SegmentStatus};
use crate::scenario::SegmentMap;
use crate::window::{Engine, HexWindow, LateRecord};

pub use health::{Health, SourceHealth};

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
    /// Data or silent.
    pub kind: WindowKind,
}

/// Where the flow's results go. Every method but `closed` has a do-nothing default.
pub trait Outputs {
    /// A window was closed and evaluated.
    fn closed(&mut self, closed: &Closed<'_>);

    /// The open window so far (live viewers).
    fn provisional(&mut self, _snapshot: HexWindow) {}

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

    fn provisional(&mut self, snapshot: HexWindow) {
        // Only the first output of a pair that wants snapshots gets one: they are for viewers.
        self.0.provisional(snapshot);
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
        };
        f.refresh_scales();
        f
    }

    /// Counts one record at processing time `now`, then moves the watermark, so what is late does
    /// not depend on how a feed cut its records into requests; false when it was a duplicate.
    pub fn ingest(&mut self, r: &Record, now: i64) -> bool {
        let fresh = self.engine.ingest(r, now);
        self.advance(now);
        fresh
    }

    /// Moves the watermark to processing time `now`; closed windows go through tiers to outputs.
    pub fn advance(&mut self, now: i64) {
        self.refresh_scales();
        let closed = self.engine.advance(now);
        let had_windows = !closed.is_empty();
        self.emit(closed);
        if !had_windows {
            self.evaluate_silent();
        }
        self.emit_late();
    }

    /// End of input: closes every open window and tells the outputs; returns them.
    pub fn finish(mut self) -> O {
        self.refresh_scales();
        let closed = self.engine.flush();
        self.emit(closed);
        self.emit_late();
        self.outputs.finish();
        self.outputs
    }

    /// Hands the open window so far to the outputs.
    pub fn provisional(&mut self) {
        if let Some(snap) = self.engine.snapshot() {
            self.outputs.provisional(snap);
        }
    }

    /// Asks the outputs to make what they hold durable (see `Outputs::persist`).
    pub fn persist(&mut self) -> bool {
        self.outputs.persist()
    }

    /// Swaps in reloaded segments; window and tier state are kept.
    pub fn reload_segments(&mut self, map: Arc<SegmentMap>) {
        self.risk.reload(map);
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

    fn refresh_scales(&mut self) {
        if self.engine.scales_known() != self.sources.len() {
            self.engine.set_scales(self.sources.scales());
        }
    }

    fn emit(&mut self, closed: Vec<HexWindow>) {
        for w in closed {
            tracing::debug!(start = %w.start, cells = w.rows.len(), "Closed window.");
            self.evaluate(Arc::new(w), WindowKind::Data);
        }
    }

    fn evaluate(&mut self, window: Arc<HexWindow>, kind: WindowKind) {
        let (statuses, alerts) = self.risk.evaluate(&window);
        self.last_eval_end = Some(self.last_eval_end.map_or(window.end.0, |e| e.max(window.end.0)));
        for a in &alerts {
            tracing::warn!(segment = %a.segment_id, from = a.from_tier.as_str(), to = a.to_tier.as_str(), reason = %a.reason, "Tier change.");
        }
        if !alerts.is_empty() {
            metrics::counter!("throng_alerts_total").increment(alerts.len() as u64);
        }
        self.outputs.closed(&Closed {
            window: &window,
            statuses: &Arc::new(statuses),
            alerts: &alerts,
            kind,
        });
    }

    fn evaluate_silent(&mut self) {
        let (Some(last), Some(wm)) = (self.last_eval_end, self.engine.watermark().get()) else {
            return;
        };
        let end = wm.div_euclid(self.slide_ms) * self.slide_ms;
        if end >= last + self.slide_ms {
            let empty = HexWindow {
                start: EventTime(end - self.size_ms),
                end: EventTime(end),
                rows: Vec::new(),
                points: Vec::new(),
                is_final: true,
            };
            self.evaluate(Arc::new(empty), WindowKind::Silent);
        }
    }

    fn emit_late(&mut self) {
        let late = self.engine.take_late();
        if !late.is_empty() {
            self.outputs.late(&late, &self.sources);
        }
    }
}
