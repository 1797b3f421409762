//! The commit path every feed takes: records are appended to the write-ahead log, then queued for
//! the engine, under one lock so the queue's order is the log's order; only then is the feed told
//! they were accepted. `FeedSink` is what a transport is handed: the one decoder in front of it.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::wal::Wal;
use crate::faults::{Component, Faults};
use crate::ingest::{decode, Decoded, Parser};
use crate::model::Record;

/// What the engine task's input queue carries, in write-ahead-log order.
#[derive(Debug)]
pub enum Ingest {
    /// Accepted records, already in the log, and the processing time they were accepted at.
    Batch {
        /// Processing time of acceptance, as logged (ms).
        at: i64,
        /// The records.
        records: Vec<Record>,
    },
    /// The engine may move on with processing time alone, at this logged time (ms).
    Tick(i64),
    /// Every record of the log segments before this one has been queued: checkpoint here.
    Checkpoint(u64),
}

/// Why records could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The queue is full (answer 503 with Retry-After); nothing was taken.
    #[error("ingest queue full: nothing from this request was taken; retry after the delay")]
    Full,
    /// The server is stopping.
    #[error("server is shutting down")]
    Closed,
    /// The log could not be written; nothing was taken.
    #[error("could not write the write-ahead log: {0}")]
    Log(std::io::Error),
}

/// Whether a commit waits for room in a full queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Refuse at once (`CommitError::Full`): HTTP answers 503 and the client retries.
    Refuse,
    /// Wait: the transport stops reading its socket or broker meanwhile (backpressure).
    Wait,
}

/// The log and the queue behind it. Cheap to clone.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Ingest>,
    wal: Arc<Mutex<Wal>>,
    faults: Arc<Faults>,
}

impl Committer {
    /// A committer over `wal` and a queue of `capacity` batches; the receiver is the engine's.
    /// Log failures and recoveries are reported to `faults`.
    pub fn new(wal: Wal, capacity: usize, faults: Arc<Faults>) -> (Committer, mpsc::Receiver<Ingest>) {
        let (queue, rx) = mpsc::channel(capacity);
        (
            Committer {
                queue,
                wal: Arc::new(Mutex::new(wal)),
                faults,
            },
            rx,
        )
    }

    /// Logs `records` and queues them, all or nothing. When it returns Ok they are durable (per
    /// the fsync policy) and will be counted exactly once, even across a crash.
    pub async fn commit(&self, records: Vec<Record>, when_full: WhenFull) -> Result<(), CommitError> {
        let permit = match when_full {
            WhenFull::Wait => self
                .queue
                .clone()
                .reserve_owned()
                .await
                .map_err(|_| CommitError::Closed)?,
            WhenFull::Refuse => self.queue.clone().try_reserve_owned().map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => CommitError::Full,
                mpsc::error::TrySendError::Closed(_) => CommitError::Closed,
            })?,
        };
        let (wal, faults) = (self.wal.clone(), self.faults.clone());
        tokio::task::spawn_blocking(move || {
            let mut w = wal.lock().unwrap_or_else(|p| p.into_inner());
            match w.append(&records) {
                Ok(at) => {
                    faults.succeeded(Component::Wal);
                    permit.send(Ingest::Batch { at, records });
                    Ok(())
                }
                Err(e) => {
                    if faults.failed(Component::Wal, &e) {
                        tracing::error!(error = %e, "Write-ahead log failed: ingest answers 503 and acknowledges nothing until a write succeeds.");
                    }
                    Err(CommitError::Log(e))
                }
            }
        })
        .await
        .map_err(|_| CommitError::Closed)?
    }

    /// The engine task's side: asks for checkpoints without keeping the queue open.
    pub fn checkpoints(&self) -> CheckpointRequests {
        CheckpointRequests {
            queue: self.queue.downgrade(),
            wal: self.wal.clone(),
            faults: self.faults.clone(),
        }
    }
}

/// Starts log segments and queues checkpoint markers behind the batches already queued.
pub struct CheckpointRequests {
    /// Weak, so the queue still closes when every producer is gone.
    queue: mpsc::WeakSender<Ingest>,
    wal: Arc<Mutex<Wal>>,
    faults: Arc<Faults>,
}

impl CheckpointRequests {
    /// Starts a new log segment and queues a checkpoint marker behind every batch of the old ones.
    /// Does nothing when the queue is full or closed: the next request tries again.
    pub fn request(&self) {
        let Some(queue) = self.queue.upgrade() else { return };
        let mut wal = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(permit) = queue.try_reserve() else { return };
        match wal.rotate() {
            Ok(seg) => permit.send(Ingest::Checkpoint(seg)),
            Err(e) => {
                if self.faults.failed(Component::Wal, &e) {
                    tracing::error!(error = %e, "Could not start a new log segment.");
                }
            }
        }
    }

    /// Logs a tick and queues it behind every batch already queued, so the engine moves on with
    /// processing time at the same point of the log a recovery will. Does nothing when the queue
    /// is full or closed (the batches in it carry their own times).
    pub fn tick(&self) {
        let Some(queue) = self.queue.upgrade() else { return };
        let mut wal = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(permit) = queue.try_reserve() else { return };
        match wal.tick() {
            Ok(at) => {
                self.faults.succeeded(Component::Wal);
                permit.send(Ingest::Tick(at));
            }
            Err(e) => {
                if self.faults.failed(Component::Wal, &e) {
                    tracing::error!(error = %e, "Could not log a tick; the engine waits until the log can be written.");
                }
            }
        }
    }

    /// Starts a new log segment now (at shutdown, once the queue is drained); returns its number.
    pub fn rotate_now(&self) -> std::io::Result<u64> {
        self.wal.lock().unwrap_or_else(|p| p.into_inner()).rotate()
    }

    /// Where log and checkpoint failures are reported.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// The processing clock the log stamps with.
    pub fn clock(&self) -> super::wal::Clock {
        self.wal.lock().unwrap_or_else(|p| p.into_inner()).clock()
    }
}

/// What a transport is handed: NDJSON bodies in, records committed. Cheap to clone.
#[derive(Clone)]
pub struct FeedSink {
    parser: Parser,
    committer: Committer,
    max_line: usize,
}

impl FeedSink {
    /// A sink parsing with `parser` (lines over `max_line` bytes refused) into `committer`.
    pub fn new(parser: Parser, committer: Committer, max_line: usize) -> FeedSink {
        FeedSink {
            parser,
            committer,
            max_line,
        }
    }

    /// Reads a body at processing time `now_ms` (the far-future check) without committing it.
    pub fn decode(&self, body: &[u8], now_ms: i64) -> Decoded {
        decode(&self.parser, body, Some(now_ms), self.max_line)
    }

    /// Reads a body line by line with this sink's parser and limits, handing each line's number
    /// and outcome to `each` (for transports that must know which line made which record).
    pub fn each_line(
        &self,
        body: &[u8],
        now_ms: i64,
        each: impl FnMut(usize, Result<crate::model::Record, crate::ingest::LineError>),
    ) {
        crate::ingest::decode::each_line(&self.parser, body, Some(now_ms), self.max_line, each)
    }

    /// Commits decoded records (counted in `throng_ingest_records_total` once accepted).
    pub async fn commit(&self, records: Vec<Record>, when_full: WhenFull) -> Result<usize, CommitError> {
        let n = records.len();
        if n > 0 {
            let started = std::time::Instant::now();
            self.committer.commit(records, when_full).await?;
            metrics::histogram!("throng_ingest_ack_seconds").record(started.elapsed().as_secs_f64());
            metrics::counter!("throng_ingest_records_total").increment(n as u64);
        }
        Ok(n)
    }

    /// Decodes and commits a body: the records it accepted and the lines it refused. On an error
    /// nothing of the body was taken.
    pub async fn take(&self, body: &[u8], when_full: WhenFull) -> Result<Taken, CommitError> {
        let d = self.decode(body, crate::model::now_ms());
        let accepted = self.commit(d.records, when_full).await?;
        Ok(Taken {
            accepted,
            rejected: d.rejected,
        })
    }
}

/// What `FeedSink::take` did with a body.
#[derive(Debug)]
pub struct Taken {
    /// Records committed.
    pub accepted: usize,
    /// Lines refused, with why.
    pub rejected: Vec<crate::ingest::LineReject>,
}
