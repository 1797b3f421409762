//! One Kafka partition's share of the city: its own parser, window engine, tiers and history in
//! `<cluster.dir>/partitions/<topic>-<n>/`, checkpointed there with the offset of the next message
//! the state has not seen.
//!
//! The partition is the log. A record is acknowledged by the broker that holds it, so the
//! partition needs no write-ahead log of its own: whoever owns it next loads the checkpoint, seeks
//! to its offset and reads the rest again. Processing time is the newest event time the partition
//! has given (as in `throng replay`), so reading the same messages again makes the same decisions
//! (what is late, which windows close, which tiers change) whoever reads them, and the history's
//! high-water marks skip the windows the previous owner had already written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::windows::{source_name, WindowsOut};
use crate::config::Config;
use crate::durability::files;
use crate::flow::{Closed, Flow, FlowState, Outputs, WindowKind};
use crate::history::{History, Recorder, RecorderMark};
use crate::ingest::{LineError, Sources};
use crate::pipeline::Pipeline;
use crate::risk::{Risk, ThresholdStore};
use crate::scenario::{Registry, SegmentMap};
use crate::window::{Engine, LateRecord};

/// Why a partition could not be taken on.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// Reading or writing the partition's folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The checkpoint is not one this build can read.
    #[error("{path}: not a readable partition checkpoint ({why}); move it aside to read the partition from its start")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What serde said.
        why: String,
    },
    /// The checkpoint was taken under other `[window]` settings.
    #[error("{0}: written with other [window] settings; restore them, or move the partition's folder aside to read it from its start")]
    Window(PathBuf),
    /// The history would not open.
    #[error("{0}")]
    History(String),
    /// Another instance has taken the folder on since this one did (this one was cut off from
    /// the group and the partition given to another): it must not write there any more.
    #[error("{dir}: taken on by {by} since (lease {epoch}); this instance no longer writes there")]
    Superseded {
        /// The folder.
        dir: PathBuf,
        /// Who holds it now.
        by: String,
        /// Their lease.
        epoch: u64,
    },
}

/// Who holds a partition's (or the city stage's) folder: each instance that takes it on writes
/// the next lease number before reading the checkpoint, and checks that the lease is still its
/// own before writing one, so an instance the group has dropped but that still runs stops
/// writing once the next owner has started. (A check, then a write: the window between them is
/// one checkpoint's, not a fence; object storage's conditional writes would close it.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Lease {
    epoch: u64,
    by: String,
}

const LEASE: &str = "lease.json";

fn read_lease(dir: &Path) -> Result<Option<Lease>, PartitionError> {
    let path = dir.join(LEASE);
    match std::fs::read(&path) {
        // An unreadable lease (a torn write cannot happen: it is replaced whole) counts as none.
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PartitionError::Io { path, source }),
    }
}

/// Takes the folder `dir` on for `by`: the next lease number, written before anything is read.
pub fn take_lease(dir: &Path, by: &str) -> Result<u64, PartitionError> {
    std::fs::create_dir_all(dir).map_err(|source| PartitionError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let epoch = read_lease(dir)?.map_or(1, |l| l.epoch + 1);
    let path = dir.join(LEASE);
    let lease = Lease {
        epoch,
        by: by.to_owned(),
    };
    files::replace(&path, |w| {
        serde_json::to_writer(w, &lease).map_err(std::io::Error::other)
    })
    .map_err(|e| PartitionError::Io {
        path: path.clone(),
        source: e.into_io(),
    })?;
    Ok(epoch)
}

/// Fails when `dir`'s lease is no longer `epoch` (another instance took the folder on).
pub fn check_lease(dir: &Path, epoch: u64) -> Result<(), PartitionError> {
    match read_lease(dir)? {
        Some(l) if l.epoch != epoch => Err(PartitionError::Superseded {
            dir: dir.to_owned(),
            by: l.by,
            epoch: l.epoch,
        }),
        _ => Ok(()),
    }
}

/// The folder of `topic`'s partition `partition` under the shared `root`.
pub fn folder(root: &Path, topic: &str, partition: i32) -> PathBuf {
    root.join("partitions").join(format!("{topic}-{partition}"))
}

/// The checkpoint in `dir` (created if missing), None when there is none yet.
pub fn read_checkpoint<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<Option<T>, PartitionError> {
    std::fs::create_dir_all(dir).map_err(|source| PartitionError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let cp = dir.join(files::names::CHECKPOINT);
    match std::fs::read(&cp) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| PartitionError::Checkpoint {
                path: cp,
                why: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PartitionError::Io { path: cp, source }),
    }
}

/// Replaces the checkpoint in `dir` with `state`, whole (atomic replace).
pub fn write_checkpoint<T: Serialize>(dir: &Path, state: &T) -> Result<(), PartitionError> {
    let path = dir.join(files::names::CHECKPOINT);
    files::replace(&path, |w| {
        serde_json::to_writer(w, state).map_err(std::io::Error::other)
    })
    .map_err(|e| PartitionError::Io {
        path: path.clone(),
        source: e.into_io(),
    })
}

/// What a partition's checkpoint holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    topic: String,
    partition: i32,
    /// The first offset the state has not seen.
    next_offset: i64,
    /// Processing time: the newest event time seen.
    clock: i64,
    engine: Engine,
    flow: FlowState,
    recorder: RecorderMark,
    sources: Vec<String>,
    /// Who wrote it, and when (wall clock): for a person reading the folder.
    by: String,
    written_at: String,
}

/// A partition's outputs: its cells into its own history, and every closed window (cells, feed
/// points, the segment people its pings place) to the windows topic for the city stage, which
/// evaluates the segments over all partitions at once.
pub struct CellRows {
    /// End of the newest window closed (and published).
    closed_to: Option<i64>,
    recorder: Recorder,
    windows: Arc<WindowsOut>,
    source: String,
    sources: Arc<Sources>,
}

impl Outputs for CellRows {
    fn closed(&mut self, c: &Closed<'_>) {
        // Segments and alerts are the city stage's: a partition sees only its own pings.
        self.recorder.closed(&Closed {
            window: c.window,
            statuses: &Arc::default(),
            alerts: &[],
            calibration: c.calibration,
            kind: c.kind,
        });
        self.closed_to = Some(self.closed_to.map_or(c.window.end.0, |e| e.max(c.window.end.0)));
        self.windows.publish_window(
            &self.source,
            c.window,
            c.kind == WindowKind::Silent,
            &self.sources.names(),
        );
    }

    fn late(&mut self, late: &[LateRecord], sources: &Sources) {
        self.recorder.late(late, sources);
    }

    fn persist(&mut self) -> bool {
        // The windows must be on the topic before a checkpoint says the state is past them.
        if let Err(e) = self.windows.flush() {
            tracing::error!(error = %e, "Windows not yet acknowledged by the brokers; the checkpoint waits.");
            return false;
        }
        self.recorder.persist()
    }

    fn finish(&mut self) {
        self.recorder.finish();
    }
}

/// What the member shares between the partitions it holds.
#[derive(Clone)]
pub struct Shared {
    /// The configuration every partition runs under.
    pub cfg: Arc<Config>,
    /// Sensors and stations, loaded once.
    pub registry: Arc<Registry>,
    /// Every segment (a ping is matched against all of them, whoever owns the rows).
    pub map: Arc<SegmentMap>,
    /// The shared folder.
    pub root: PathBuf,
    /// This instance's name.
    pub instance: String,
    /// The producer to the windows topic.
    pub windows: Arc<WindowsOut>,
}

/// One partition's state, held by the instance the group assigned it to.
pub struct Partition {
    /// This instance's lease on the folder.
    lease: u64,
    topic: String,
    partition: i32,
    dir: PathBuf,
    flow: Flow<CellRows>,
    parser: crate::ingest::Parser,
    max_line: usize,
    next_offset: i64,
    clock: i64,
    last_checkpoint: Instant,
    /// Offset of the last checkpoint (nothing to write when unchanged).
    checkpointed_at: Option<i64>,
    /// When the partition last gave a message (for the idle close).
    last_message: Instant,
    /// Since when the partition has been at its end without ever holding a record.
    empty_since: Option<Instant>,
    /// Records taken and lines rejected since the instance took the partition on.
    pub taken: u64,
    /// Lines rejected since the instance took the partition on.
    pub rejected: u64,
}

impl Partition {
    /// Takes `topic`'s partition `partition` on: its checkpoint if it has one (then the offset to
    /// read from), else a fresh state read from the partition's start.
    pub fn open(shared: &Shared, topic: &str, partition: i32) -> Result<Partition, PartitionError> {
        let cfg = &shared.cfg;
        let dir = folder(&shared.root, topic, partition);
        let lease = take_lease(&dir, &shared.instance)?;
        let cp = dir.join(files::names::CHECKPOINT);
        let saved: Option<Saved> = read_checkpoint(&dir)?;
        let names: Vec<String> = saved.as_ref().map(|s| s.sources.clone()).unwrap_or_default();
        let mut pipe = Pipeline::resuming_with(cfg, shared.registry.clone(), &names);
        let (mut flow_state, mut mark, mut next_offset, mut clock) =
            (FlowState::default(), RecorderMark::default(), 0, i64::MIN);
        if let Some(s) = saved {
            if !s.engine.matches(&cfg.window) {
                return Err(PartitionError::Window(cp));
            }
            pipe.engine = s.engine;
            pipe.engine.apply_lbs(&cfg.lbs);
            pipe.engine.set_resend_horizon(&cfg.window);
            (flow_state, mark, next_offset, clock) = (s.flow, s.recorder, s.next_offset, s.clock);
        }
        pipe.refresh_scales();
        let history = History::open(&dir, cfg.history.retention_days, std::time::Duration::ZERO)
            .map_err(|e| PartitionError::History(e.to_string()))?;
        let mut recorder = Recorder::new(Arc::new(history), &dir, cfg.history.flush_every);
        // Alerts and late records the previous owner wrote past its checkpoint are in the files:
        // counted here, so reading their messages again does not write them twice.
        recorder.resume(mark).map_err(|source| PartitionError::Io {
            path: dir.clone(),
            source,
        })?;
        let thresholds = ThresholdStore::open(Some(&shared.root))
            .map_err(|e| PartitionError::History(format!("thresholds in {}: {e}", shared.root.display())))?;
        let risk = Risk::new(
            shared.map.clone(),
            pipe.registry.points().to_vec(),
            cfg.risk.clone(),
            thresholds,
            cfg.window.size.as_millis() as i64,
        );
        let outputs = CellRows {
            closed_to: None,
            recorder,
            windows: shared.windows.clone(),
            source: source_name(topic, partition),
            sources: pipe.sources.clone(),
        };
        let Pipeline {
            engine,
            sources,
            parser,
            ..
        } = pipe;
        let mut flow = Flow::new(engine, sources, risk, outputs, &cfg.window);
        flow.restore(flow_state);
        flow.quiet_tiers();
        let now = Instant::now();
        Ok(Partition {
            lease,
            topic: topic.to_owned(),
            partition,
            dir,
            flow,
            parser,
            max_line: cfg.ingest.max_line_bytes,
            next_offset,
            clock,
            last_checkpoint: now,
            checkpointed_at: None,
            last_message: now,
            empty_since: None,
            taken: 0,
            rejected: 0,
        })
    }

    /// The first offset this state has not seen (where reading resumes).
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Processing time: the newest event time the partition gave (None before any).
    pub fn clock(&self) -> Option<i64> {
        (self.clock != i64::MIN).then_some(self.clock)
    }

    /// End of the newest window this instance closed and published for the partition.
    pub fn closed_to(&self) -> Option<i64> {
        self.flow.outputs().closed_to
    }

    /// The partition's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Given where the partition ends (`high`, the next offset the brokers will give): once it
    /// has been at its end without ever holding a record for `after`, tells the city stage, so it
    /// does not wait for its windows.
    pub fn check_empty(&mut self, high: i64, after: std::time::Duration) {
        if self.clock != i64::MIN || self.next_offset < high {
            self.empty_since = None;
            return;
        }
        if self.empty_since.get_or_insert_with(Instant::now).elapsed() >= after {
            self.flow
                .outputs()
                .windows
                .publish_empty(&source_name(&self.topic, self.partition));
        }
    }

    /// Runs messages (offset, NDJSON payload), in partition order, through the flow. Messages
    /// before `next_offset` were already counted (read again after a rebalance) and are skipped.
    /// Each rejected line is handed to `rejected` with its offset.
    pub fn take(&mut self, messages: &[(i64, &[u8])], mut rejected: impl FnMut(i64, usize, &LineError)) {
        self.last_message = Instant::now();
        for &(offset, payload) in messages {
            if offset < self.next_offset {
                continue;
            }
            let flow = &mut self.flow;
            let clock = &mut self.clock;
            let (taken, bad) = (&mut self.taken, &mut self.rejected);
            crate::ingest::decode::each_line(&self.parser, payload, None, self.max_line, |n, r| match r {
                Ok(rec) => {
                    *clock = (*clock).max(rec.ts.millis());
                    flow.ingest(&rec, *clock);
                    *taken += 1;
                }
                Err(e) => {
                    *bad += 1;
                    rejected(offset, n, &e);
                }
            });
            self.next_offset = offset + 1;
        }
        self.flow.outputs_mut().recorder.flush_if_due();
    }

    /// A partition that has given nothing for `idle` of wall time has its open windows closed as
    /// if its event time had moved on by that much, so a feed that stopped never freezes the
    /// picture; the move is checkpointed at once, so whoever reads the partition next carries on
    /// from it. True when the clock moved.
    pub fn idle(&mut self, idle: std::time::Duration) -> bool {
        let quiet = self.last_message.elapsed();
        if quiet < idle || self.clock == i64::MIN {
            return false;
        }
        let to = self.clock + quiet.as_millis() as i64;
        if !self.flow.would_advance(to) {
            return false;
        }
        self.clock = to;
        self.flow.advance(to);
        self.last_message = Instant::now();
        true
    }

    /// Checkpoints when `every` has passed since the last one and there is something new.
    pub fn checkpoint_if_due(
        &mut self,
        every: std::time::Duration,
        by: &str,
    ) -> Result<bool, PartitionError> {
        if self.last_checkpoint.elapsed() < every || self.checkpointed_at == Some(self.next_offset) {
            return Ok(false);
        }
        self.checkpoint(by).map(|()| true)
    }

    /// Makes every closed window durable, then writes the state with its offset (one atomic
    /// replace). Until it succeeds, the previous checkpoint stands and the partition is read again
    /// from its offset; nothing is lost, nothing counted twice.
    pub fn checkpoint(&mut self, by: &str) -> Result<(), PartitionError> {
        self.last_checkpoint = Instant::now();
        check_lease(&self.dir, self.lease)?;
        if !self.flow.persist() {
            return Err(PartitionError::History(format!(
                "{}: the history could not be written; the checkpoint waits for it",
                self.dir.display()
            )));
        }
        let saved = SavedRef {
            topic: &self.topic,
            partition: self.partition,
            next_offset: self.next_offset,
            clock: self.clock,
            engine: self.flow.engine(),
            flow: self.flow.state(),
            recorder: self.flow.outputs().recorder.mark(),
            sources: self.flow.sources().names(),
            by,
            written_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        write_checkpoint(&self.dir, &saved)?;
        self.checkpointed_at = Some(self.next_offset);
        metrics::counter!("throng_checkpoints_total").increment(1);
        Ok(())
    }

    /// Hands the partition over (revoked, or this instance stopping): checkpoints it and waits for
    /// its history's background work, leaving its windows open for the next owner.
    pub fn hand_over(mut self, by: &str) -> Result<(), PartitionError> {
        let r = self.checkpoint(by);
        self.flow.outputs_mut().finish();
        r
    }
}

/// `Saved`, borrowed (serialising a checkpoint copies nothing).
#[derive(Serialize)]
struct SavedRef<'a> {
    topic: &'a str,
    partition: i32,
    next_offset: i64,
    clock: i64,
    engine: &'a Engine,
    flow: FlowState,
    recorder: RecorderMark,
    sources: Vec<String>,
    by: &'a str,
    written_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_whose_folder_was_taken_on_since_may_not_write_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let first = take_lease(dir.path(), "a").unwrap();
        assert!(check_lease(dir.path(), first).is_ok());
        // `a` is cut off from the group; `b` is given the partition and takes the folder on.
        let second = take_lease(dir.path(), "b").unwrap();
        assert_eq!(second, first + 1);
        let refused = check_lease(dir.path(), first).unwrap_err().to_string();
        assert!(refused.contains("taken on by b"), "{refused}");
        assert!(check_lease(dir.path(), second).is_ok());
    }
}
