//! The engine task: the single owner of window, tier and history-writing state. It takes
//! committed batches from the bounded queue in log order, drives the one flow (`flow::Flow`) with
//! the processing times the log stamped them with, publishes health, asks for checkpoints and
//! answers control requests. It never moves the flow on with an unlogged time: when the clock
//! alone would move the watermark (a feed gone idle, every feed silent), it logs a tick and acts
//! on it when the tick comes back through the queue, where a recovery will meet it too. Slow work
//! (serialising a checkpoint, compacting history) runs on other threads so ingest never waits.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::state::Control;
use crate::config::Config;
use crate::durability::commit::CheckpointRequests;
use crate::durability::{Checkpointed, Clock, Ingest};
use crate::faults::Component;
use crate::flow::{Delays, Flow, FlowState, Health};
use crate::history::{Recorder, RecorderMark};
use crate::live::{Picture, Publisher};
use crate::model::{now_ms, SourceId};

/// How often the task wakes without input: the watermark follows the clock and windows close even
/// when every feed is silent; well under the 1.5 s provisional period.
const TICK: Duration = Duration::from_millis(500);
/// Period of provisional heatmap frames (the contract asks for at least one every 2 s).
const PROVISIONAL_EVERY: Duration = Duration::from_millis(1_500);
/// The distinct-device census costs milliseconds at city scale: at most this often, and never more
/// than `CENSUS_BUDGET` of the task's time.
const CENSUS_EVERY: Duration = Duration::from_secs(1);
/// The census runs no more often than every `CENSUS_BUDGET` × its own duration (1 %).
const CENSUS_BUDGET: u32 = 100;

/// The flow as the server runs it: viewers first, then history.
pub type ServerFlow = Flow<(Publisher, Recorder)>;

/// What a checkpoint holds beside the window engine: the flow's tier state and how many alerts
/// and late records the history had been handed.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Resume {
    /// Tier machines and the silent-window schedule.
    pub flow: FlowState,
    /// The history's counts.
    pub recorder: RecorderMark,
}

impl Resume {
    /// The state of `flow` now.
    pub fn of(flow: &ServerFlow) -> Resume {
        Resume {
            flow: flow.state(),
            recorder: flow.outputs().1.mark(),
        }
    }
}

/// The engine task's state.
pub struct EngineTask {
    flow: ServerFlow,
    checkpoints: CheckpointRequests,
    picture: Picture,
    health: watch::Sender<Health>,
    cfg: Arc<Config>,
    data_dir: PathBuf,
    /// Processing time, as the log stamps it.
    clock: Clock,
    /// Arrival − event time per source, for `/api/health`.
    delays: Delays,
    /// True while a checkpoint is being written in the background.
    checkpointing: Arc<AtomicBool>,
    last_checkpoint: Instant,
    last_snapshot: Instant,
    last_census: Instant,
    census_every: Duration,
}

impl EngineTask {
    /// The task over `flow`, writing checkpoints into `data_dir`.
    pub fn new(
        flow: ServerFlow,
        checkpoints: CheckpointRequests,
        picture: Picture,
        health: watch::Sender<Health>,
        cfg: Arc<Config>,
        data_dir: PathBuf,
    ) -> EngineTask {
        let now = Instant::now();
        let clock = checkpoints.clock();
        EngineTask {
            flow,
            checkpoints,
            picture,
            health,
            cfg,
            data_dir,
            clock,
            delays: Delays::default(),
            checkpointing: Arc::default(),
            last_checkpoint: now,
            last_snapshot: now,
            last_census: now,
            census_every: CENSUS_EVERY,
        }
    }

    /// Runs until the ingest queue closes (every producer gone), then drains, flushes every open
    /// window and writes the history.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Ingest>, mut control: mpsc::Receiver<Control>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                batch = rx.recv() => match batch {
                    Some(Ingest::Batch { at, records }) => self.ingest(at, &records),
                    Some(Ingest::Tick(at)) => self.flow.advance(at),
                    Some(Ingest::Checkpoint(seg)) => self.checkpoint(seg),
                    None => break,
                },
                Some(c) = control.recv() => self.control(c),
                _ = tick.tick() => {
                    if self.flow.would_advance(self.clock.now()) {
                        self.checkpoints.tick();
                    }
                }
            }
            if self.last_snapshot.elapsed() >= PROVISIONAL_EVERY {
                self.last_snapshot = Instant::now();
                let clocks = crate::flow::Clocks {
                    wall: now_ms(),
                    processing: self.clock.now(),
                };
                self.flow.provisional(&self.delays, clocks);
            }
            self.flow.outputs_mut().1.flush_if_due();
            self.publish_health();
            self.census();
            if self.last_checkpoint.elapsed() >= self.cfg.durability.checkpoint_every {
                self.last_checkpoint = Instant::now();
                self.checkpoints.request();
            }
        }
        self.flow.close();
        // A write that failed earlier and succeeded since does not matter here; one that still
        // fails does: the final checkpoint would drop the log that holds what it could not write.
        let _ = self.flow.outputs_mut().1.take_error();
        if self.flow.outputs().1.all_written() {
            tracing::info!("Engine drained and flushed; history written.");
            self.final_checkpoint();
        } else {
            tracing::error!(
                "Engine drained, but the history could not be written; the log is kept for the next start."
            );
        }
    }

    /// After a clean stop every window is closed and written: a checkpoint of that state means a
    /// restart replays nothing (and so never closes again, differently, a window already flushed).
    fn final_checkpoint(&mut self) {
        let resume = serde_json::to_value(Resume::of(&self.flow)).ok();
        let names = self.flow.sources().names();
        let written = self.checkpoints.rotate_now().and_then(|seg| {
            let state = Checkpointed {
                engine: self.flow.engine(),
                flow: resume.as_ref(),
                sources: &names,
            };
            crate::durability::wal::checkpoint(&self.data_dir, seg, state)
        });
        if let Err(e) = written {
            tracing::error!(error = %e, "Final checkpoint failed; the next start replays the log.");
        }
    }

    fn ingest(&mut self, at: i64, batch: &[crate::model::Record]) {
        let wall = now_ms();
        let mut dups = 0;
        for r in batch {
            self.delays.observe(r.source, r.ts.millis(), wall);
            if !self.flow.ingest(r, at) {
                dups += 1;
            }
        }
        if dups > 0 {
            metrics::counter!("throng_ingest_duplicates_total").increment(dups as u64);
        }
    }

    fn census(&mut self) {
        if self.last_census.elapsed() < self.census_every {
            return;
        }
        let t = Instant::now();
        metrics::gauge!("throng_window_devices_active").set(self.flow.engine().distinct_devices() as f64);
        self.census_every = CENSUS_EVERY.max(t.elapsed() * CENSUS_BUDGET);
        self.last_census = Instant::now();
    }

    fn checkpoint(&mut self, segment: u64) {
        // Windows closed before the checkpoint are no longer in the log: they must be on disk first.
        if !self.flow.persist() {
            // The history fault is logged and shown in health once; this repeats every interval.
            tracing::debug!("Checkpoint skipped because the history could not be written.");
            return;
        }
        // Serialising a city's window state takes seconds; ingest must not wait for it. The engine
        // is cloned here (tens of milliseconds) and written on a blocking thread. While one write
        // is in flight the next is skipped: the log simply keeps its older segments a while longer.
        if self.checkpointing.swap(true, Ordering::AcqRel) {
            tracing::debug!(
                segment,
                "A checkpoint is still being written; this one is skipped."
            );
            return;
        }
        let started = Instant::now();
        let snapshot = self.flow.engine().clone();
        let resume = serde_json::to_value(Resume::of(&self.flow)).ok();
        let names = self.flow.sources().names();
        let cloned_ms = started.elapsed().as_millis() as u64;
        let (dir, running) = (self.data_dir.clone(), self.checkpointing.clone());
        let faults = self.checkpoints.faults().clone();
        tokio::task::spawn_blocking(move || {
            let state = Checkpointed {
                engine: &snapshot,
                flow: resume.as_ref(),
                sources: &names,
            };
            match crate::durability::wal::checkpoint(&dir, segment, state) {
                Ok(()) => {
                    tracing::debug!(
                        segment,
                        cloned_ms,
                        ms = started.elapsed().as_millis() as u64,
                        "Checkpoint written."
                    );
                    metrics::counter!("throng_checkpoints_total").increment(1);
                    faults.succeeded(Component::Checkpoint);
                }
                Err(e) => {
                    if faults.failed(Component::Checkpoint, &e) {
                        tracing::error!(error = %e, "Checkpoint failed; the log keeps growing until one succeeds.")
                    }
                }
            }
            running.store(false, Ordering::Release);
        });
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::ReloadSegments(reply) => {
                let result = crate::scenario::load_segments(&self.cfg).map(|m| {
                    let m = Arc::new(m);
                    let n = m.segments().len();
                    self.flow.reload_segments(m.clone());
                    self.picture.replace_segments(m);
                    n
                });
                match &result {
                    Ok(n) => tracing::info!(segments = n, "Segments reloaded; window state kept."),
                    Err(e) => {
                        tracing::error!(error = %e, "Segments reload failed; the old segments stay in force.")
                    }
                }
                let _ = reply.send(result);
            }
        }
    }

    fn publish_health(&mut self) {
        let now = now_ms();
        let engine = self.flow.engine();
        let wm = engine.watermark().get();
        let stats = engine.stats();
        metrics::gauge!("throng_watermark_lag_seconds").set(wm.map_or(0.0, |w| (now - w) as f64 / 1000.0));
        metrics::counter!("throng_windows_closed_total").absolute(stats.windows_closed);
        metrics::counter!("throng_register_resets_total").absolute(stats.register_resets);
        metrics::counter!("throng_register_out_of_order_total").absolute(stats.register_out_of_order);
        metrics::counter!("throng_late_unwindowed_records_total").absolute(stats.late_unwindowed);
        metrics::counter!("throng_engine_records_total").absolute(stats.records);
        metrics::gauge!("throng_window_device_entries").set(engine.device_entries() as f64);
        metrics::gauge!("throng_window_state_bytes").set(engine.state_bytes() as f64);
        for (i, c) in engine.watermark().sources().iter().enumerate() {
            if c.records > 0 {
                let name = self.flow.sources().name(SourceId(i as u16));
                if let Some(p99) = self.delays.quantile(i, 0.99) {
                    metrics::gauge!("throng_source_delay_p99_seconds", "source" => name.clone())
                        .set(p99 as f64 / 1000.0);
                }
                metrics::counter!("throng_late_records_total", "source" => name).absolute(c.late);
            }
        }
        let calibration = self.flow.calibration();
        for c in &calibration {
            metrics::gauge!("throng_calibration_people_per_device", "source" => c.source.clone())
                .set(c.people_per_device);
            metrics::gauge!("throng_calibration_confidence", "source" => c.source.clone()).set(c.confidence);
        }
        let rejected = self.flow.calibrator().rejected();
        for reason in crate::risk::Rejection::ALL {
            let n = rejected.get(&reason).copied().unwrap_or(0);
            metrics::counter!("throng_calibration_rejected_total", "reason" => reason.as_str()).absolute(n);
        }
        let last_end = self.flow.outputs().0.last_window_end();
        let mut health = Health::of(
            self.flow.engine(),
            self.flow.sources(),
            &self.delays,
            crate::flow::health::Clocks {
                wall: now,
                processing: self.clock.now(),
            },
            last_end,
        );
        health.calibration = calibration;
        health.calibration_note = self.flow.calibrator().note().map(str::to_owned);
        self.health.send_replace(health);
    }
}
