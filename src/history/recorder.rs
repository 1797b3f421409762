//! The flow's history output: a closed window's `hex_windows` rows and its `segment_windows`
//! rows into the store, its alerts into `alerts.ndjson`, late records into
//! `late-records.ndjson`. `serve` and `replay --data-dir` both write through this, so a data
//! dir means the same whichever wrote it.
//!
//! A window the history already holds in a file (written before a crash, closed again by
//! recovery) is recognised by its start and skipped, per table, so nothing is written twice.
//! Alerts and late records are recognised by count: recovery replays the log deterministically,
//! so the n-th alert it emits is the n-th the live run emitted; the checkpoint says how many came
//! before it, the file how many were written, and those in between are not written again. Buffered windows are written every `history.flush_every`, or sooner after
//! `WINDOWS_PER_FLUSH` windows (a fast replay must not hold a night in memory); compaction of
//! complete hours runs on a thread of its own so writing new windows never waits for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::store::{History, HistoryError, Table};
use crate::durability::files::{self, names};
use crate::faults::{Component, Faults};
use crate::flow::{Closed, Outputs, WindowKind};
use crate::ingest::Sources;
use crate::window::{late_row, to_record_batch, LateRecord};

/// Windows buffered before a flush at the latest: an hour of 10-second windows.
pub const WINDOWS_PER_FLUSH: usize = 360;

/// What the recorder wrote.
#[derive(Debug, Default, Clone)]
pub struct RecorderStats {
    /// Windows whose `hex_windows` rows were taken.
    pub windows: u64,
    /// `hex_windows` rows taken.
    pub rows: u64,
    /// Windows skipped because the history already held them.
    pub skipped: u64,
    /// Late records kept.
    pub late: u64,
    /// Writes that failed (logged; the next flush retries buffered windows).
    pub errors: u64,
}

/// How many alerts and late records this data dir's logs have received in all: checkpointed, so a
/// recovery knows which of those it emits again are already in the files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecorderMark {
    /// Alerts emitted.
    pub alerts: u64,
    /// Late records emitted.
    pub late: u64,
}

/// Writes closed windows, alerts and late records into one data dir.
pub struct Recorder {
    history: Arc<History>,
    alerts_file: PathBuf,
    late_file: PathBuf,
    flush_every: Duration,
    last_flush: Instant,
    unflushed: usize,
    maintenance: Option<JoinHandle<()>>,
    stats: RecorderStats,
    first_error: Option<HistoryError>,
    /// Emitted so far, counting from the data dir's first.
    taken: RecorderMark,
    /// Lines already in the files when a recovery began (0 when not recovering).
    in_files: RecorderMark,
    /// Lines a failed append left to write, per log, in order (written before any newer line).
    unwritten: Vec<(PathBuf, Vec<u8>)>,
    faults: Arc<Faults>,
    /// False when another writer keeps `hex_windows` (a cluster's city stage).
    cells: bool,
}

impl Recorder {
    /// A recorder into `history` and the NDJSON logs of `data_dir`.
    pub fn new(history: Arc<History>, data_dir: &Path, flush_every: Duration) -> Recorder {
        Recorder {
            history,
            alerts_file: data_dir.join(names::ALERTS),
            late_file: data_dir.join(names::LATE_RECORDS),
            flush_every,
            last_flush: Instant::now(),
            unflushed: 0,
            maintenance: None,
            stats: RecorderStats::default(),
            first_error: None,
            taken: RecorderMark::default(),
            in_files: RecorderMark::default(),
            unwritten: Vec::new(),
            faults: Arc::default(),
            cells: true,
        }
    }

    /// Leaves `hex_windows` to another writer (in a cluster each partition writes its own cells;
    /// the city stage writes segments and alerts).
    pub fn without_cells(mut self) -> Recorder {
        self.cells = false;
        self
    }

    /// Reports write failures and recoveries to `faults` (what `/api/health` shows).
    pub fn with_faults(mut self, faults: Arc<Faults>) -> Recorder {
        self.faults = faults;
        self
    }

    /// Counts to checkpoint (everything emitted so far is in the files once `persist` is true).
    pub fn mark(&self) -> RecorderMark {
        self.taken
    }

    /// Recovery: `mark` was emitted before the checkpoint being replayed from; what the files
    /// hold beyond it was emitted again by the replay and is skipped.
    pub fn resume(&mut self, mark: RecorderMark) -> std::io::Result<()> {
        self.taken = mark;
        self.in_files = RecorderMark {
            alerts: files::complete_lines(&self.alerts_file)?,
            late: files::complete_lines(&self.late_file)?,
        };
        Ok(())
    }

    /// What was written so far.
    pub fn stats(&self) -> &RecorderStats {
        &self.stats
    }

    /// True when every window, alert and late record taken is in the files (nothing waits in
    /// memory for a write that failed).
    pub fn all_written(&self) -> bool {
        self.unwritten.is_empty() && self.history.pending_rows() == 0
    }

    /// The history written to.
    pub fn history(&self) -> &Arc<History> {
        &self.history
    }

    /// The first write that failed, if any (offline runs turn it into their exit status).
    pub fn take_error(&mut self) -> Option<HistoryError> {
        self.first_error.take()
    }

    /// Writes buffered windows if `history.flush_every` has passed.
    pub fn flush_if_due(&mut self) {
        if self.last_flush.elapsed() >= self.flush_every {
            self.write();
        }
    }

    fn failed(&mut self, e: HistoryError, what: &str) {
        if self.faults.failed(Component::History, &e) {
            tracing::error!(error = %e, "{what}");
        } else {
            tracing::debug!(error = %e, "{what}");
        }
        self.stats.errors += 1;
        self.first_error.get_or_insert(e);
    }

    /// Writes buffered windows to files, then starts compaction in the background. False when the
    /// write failed (the windows stay buffered, queryable, and the next flush retries).
    fn write(&mut self) -> bool {
        self.last_flush = Instant::now();
        self.unflushed = 0;
        let logs = self.write_unwritten();
        match self.history.write_pending() {
            Ok(s) => {
                self.faults.succeeded(Component::History);
                if s.files_written > 0 {
                    tracing::debug!(files = s.files_written, rows = s.rows_written, "History flushed.");
                }
                self.maintain_in_background();
                logs
            }
            Err(e) => {
                self.failed(
                    e,
                    "History flush failed; windows stay in memory and the next flush retries.",
                );
                false
            }
        }
    }

    fn maintain_in_background(&mut self) {
        if self.maintenance.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let history = self.history.clone();
        self.maintenance = Some(std::thread::spawn(move || match history.maintain() {
            Ok(m) if m.hours_compacted > 0 => {
                tracing::debug!(hours = m.hours_compacted, "History compacted.")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "History compaction failed; the next flush retries."),
        }));
    }

    /// Appends `buf` to the log at `path`, after any lines still waiting for it; what cannot be
    /// written waits in memory (a checkpoint waits with it, so the write-ahead log keeps it too).
    fn append_log(&mut self, path: &Path, buf: &[u8]) {
        if let Some((_, waiting)) = self.unwritten.iter_mut().find(|(p, _)| p == path) {
            waiting.extend_from_slice(buf);
        } else if self.unwritten.is_empty() && files::append_lines(path, buf, false).is_ok() {
            // The usual case: nothing waiting, the write goes through, nothing is copied.
            return;
        } else {
            self.unwritten.push((path.to_owned(), buf.to_vec()));
        }
        self.write_unwritten();
    }

    /// Writes the lines waiting for each log; true when none are left.
    fn write_unwritten(&mut self) -> bool {
        if self.unwritten.is_empty() {
            return true;
        }
        let mut failed = None;
        self.unwritten
            .retain(|(path, buf)| match files::append_lines(path, buf, false) {
                Ok(()) => false,
                Err(e) => {
                    failed = Some((path.clone(), e));
                    true
                }
            });
        match failed {
            None => {
                self.faults.succeeded(Component::HistoryLogs);
                true
            }
            Some((path, e)) => {
                self.stats.errors += 1;
                if self.faults.failed(Component::HistoryLogs, &e) {
                    tracing::error!(error = %e, path = %path.display(), "Could not append to the data dir; the lines wait in memory and the next write retries.");
                }
                false
            }
        }
    }
}

impl Outputs for Recorder {
    fn closed(&mut self, c: &Closed<'_>) {
        let start = c.window.start.0;
        if c.kind == WindowKind::Data && self.cells {
            match to_record_batch(c.window) {
                Ok(batch) => {
                    let rows = batch.num_rows() as u64;
                    if self.history.append(Table::HexWindows, start, batch) {
                        self.stats.windows += 1;
                        self.stats.rows += rows;
                    } else {
                        self.stats.skipped += 1;
                    }
                }
                Err(e) => tracing::error!(error = %e, "Could not build the hex_windows rows."),
            }
        }
        if !c.statuses.is_empty() {
            // Each table has its own high-water mark: a crash between two tables' files loses neither.
            match super::schema::segment_batch(c.statuses) {
                Ok(batch) => {
                    self.history.append(Table::SegmentWindows, start, batch);
                }
                Err(e) => tracing::error!(error = %e, "Could not build the segment_windows rows."),
            }
        }
        if !c.calibration.is_empty() {
            match super::schema::calibration_batch(start, c.window.end.0, c.calibration) {
                Ok(batch) => {
                    self.history.append(Table::Calibration, start, batch);
                }
                Err(e) => tracing::error!(error = %e, "Could not build the calibration rows."),
            }
        }
        if !c.alerts.is_empty() {
            let already = self
                .in_files
                .alerts
                .saturating_sub(self.taken.alerts)
                .min(c.alerts.len() as u64);
            self.taken.alerts += c.alerts.len() as u64;
            let buf = files::json_lines(&c.alerts[already as usize..]);
            let path = self.alerts_file.clone();
            self.append_log(&path, &buf);
        }
        self.unflushed += 1;
        if self.unflushed >= WINDOWS_PER_FLUSH {
            self.write();
        } else {
            self.flush_if_due();
        }
    }

    fn late(&mut self, late: &[LateRecord], sources: &Sources) {
        let already = self
            .in_files
            .late
            .saturating_sub(self.taken.late)
            .min(late.len() as u64);
        self.taken.late += late.len() as u64;
        let late = &late[already as usize..];
        if late.is_empty() {
            return;
        }
        let mut rows = String::new();
        for l in late {
            rows.push_str(&late_row(l, &sources.name(l.source)));
            rows.push('\n');
        }
        self.stats.late += late.len() as u64;
        tracing::debug!(late = late.len(), "Late records kept.");
        // Appended at once (one write per engine step that met late records), so `late_records`
        // answers as soon as a record is late, as `hex_windows` does as soon as a window closes.
        let path = self.late_file.clone();
        self.append_log(&path, rows.as_bytes());
    }

    fn persist(&mut self) -> bool {
        self.write()
    }

    fn finish(&mut self) {
        if let Some(h) = self.maintenance.take() {
            let _ = h.join();
        }
        match self.history.close() {
            Ok(_) => tracing::info!(history = %self.history.root().display(), "History written."),
            Err(e) => self.failed(e, "The history could not be written at the end."),
        }
        if !self.write_unwritten() {
            tracing::error!("Late records or alerts could not be written at the end; the log keeps them for the next start.");
        }
        if self.stats.skipped > 0 {
            tracing::warn!(
                windows = self.stats.skipped,
                "Windows already in this history were skipped (not written twice)."
            );
        }
    }
}
