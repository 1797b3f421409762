//! Closed windows on disk: `<data-dir>/history/<table>/<YYYY-MM-DD>/<HH>/*.parquet` (UTC, by
//! window start), with the newest windows buffered in memory until the next flush.
//!
//! Readers take a snapshot (the files and the buffered batches) under the same lock the writer
//! uses to move batches from memory to a file, so a query sees every window exactly once.
//! Files are written to a temporary name, synced and renamed: a crash leaves whole files only.
//! A file's name holds the first and last window start it contains; at start the newest of them
//! is the high-water mark, and windows at or below it (re-closed by write-ahead-log recovery) are
//! not written twice. Once an hour is complete its files are compacted into one.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::schema::{CALIBRATION_SCHEMA, HEX_WINDOWS_SCHEMA, SEGMENT_WINDOWS_SCHEMA};
use crate::durability::files;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// A partitioned history table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// One row per active cell per closed window.
    HexWindows,
    /// One row per segment per evaluated window.
    SegmentWindows,
    /// One row per LBS source per evaluated window: its people per device.
    Calibration,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 3] = [Table::HexWindows, Table::SegmentWindows, Table::Calibration];

    /// SQL name and folder name.
    pub fn name(self) -> &'static str {
        match self {
            Table::HexWindows => "hex_windows",
            Table::SegmentWindows => "segment_windows",
            Table::Calibration => "calibration",
        }
    }

    /// Arrow schema.
    pub fn schema(self) -> SchemaRef {
        match self {
            Table::HexWindows => HEX_WINDOWS_SCHEMA.clone(),
            Table::SegmentWindows => SEGMENT_WINDOWS_SCHEMA.clone(),
            Table::Calibration => CALIBRATION_SCHEMA.clone(),
        }
    }

    fn idx(self) -> usize {
        self as usize
    }
}

/// Why history could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// A file or folder operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Parquet encoding or decoding failed.
    #[error("Parquet file {path}: {source}")]
    Parquet {
        /// Which file.
        path: PathBuf,
        /// The error.
        source: parquet::errors::ParquetError,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> HistoryError + 'a {
    move |source| HistoryError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Clone)]
struct FileEntry {
    path: PathBuf,
    hour: i64,
    first: i64,
    last: i64,
}

#[derive(Default)]
struct TableState {
    files: Vec<FileEntry>,
    /// (window start, batch), in closing order.
    pending: Vec<(i64, RecordBatch)>,
    /// Newest window start in a file (windows at or below it are already on disk).
    persisted_to: Option<i64>,
}

#[derive(Default)]
struct Inner {
    tables: [TableState; 3],
    /// Files replaced by compaction or retention, deleted once no query can still be reading them.
    doomed: Vec<(PathBuf, Instant)>,
}

/// What one flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushStats {
    /// Files written from memory.
    pub files_written: usize,
    /// Rows they hold.
    pub rows_written: usize,
    /// Hours compacted into one file.
    pub hours_compacted: usize,
    /// Files dropped by retention.
    pub files_expired: usize,
}

/// The history store of one data dir.
pub struct History {
    root: PathBuf,
    inner: Mutex<Inner>,
    /// Serialises flushes (the pipeline's timer and shutdown).
    flushing: Mutex<()>,
    /// One compaction/retention pass at a time (apart from `flushing`, so writing new windows never
    /// waits for an hour being compacted).
    maintaining: Mutex<()>,
    retention_days: u32,
    /// How long a replaced file is kept for queries that may still be reading it.
    grace: Duration,
    read_only: bool,
}

fn hour_of(start_ms: i64) -> i64 {
    start_ms.div_euclid(HOUR_MS) * HOUR_MS
}

fn partition_dir(root: &Path, table: Table, hour: i64) -> PathBuf {
    let t = chrono::DateTime::from_timestamp_millis(hour).unwrap_or_default();
    root.join(table.name())
        .join(t.format("%Y-%m-%d").to_string())
        .join(t.format("%H").to_string())
}

/// `part-<first>-<last>.parquet` (one flush) or `all-<first>-<last>.parquet` (a compacted hour).
fn parse_name(name: &str) -> Option<(bool, i64, i64)> {
    let stem = name.strip_suffix(".parquet")?;
    let (compacted, rest) = if let Some(r) = stem.strip_prefix("all-") {
        (true, r)
    } else {
        (false, stem.strip_prefix("part-")?)
    };
    // Window starts before 1970 would be negative; the engine never produces them.
    let (a, b) = rest.split_once('-')?;
    Some((compacted, a.parse().ok()?, b.parse().ok()?))
}

impl History {
    /// Opens (creating) the history under `data_dir`, removing files a crash left half-done.
    pub fn open(data_dir: &Path, retention_days: u32, grace: Duration) -> Result<History, HistoryError> {
        Self::open_inner(data_dir, retention_days, grace, false)
    }

    /// Opens the history for queries only: nothing is created, cleaned up or deleted.
    pub fn open_read_only(data_dir: &Path) -> Result<History, HistoryError> {
        Self::open_inner(data_dir, 0, Duration::ZERO, true)
    }

    fn open_inner(
        data_dir: &Path,
        retention_days: u32,
        grace: Duration,
        read_only: bool,
    ) -> Result<History, HistoryError> {
        let root = data_dir.join("history");
        let mut inner = Inner::default();
        for table in Table::ALL {
            let dir = root.join(table.name());
            if !read_only {
                std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
            }
            let state = &mut inner.tables[table.idx()];
            state.files = scan_table(&dir, read_only)?;
            state.persisted_to = state.files.iter().map(|f| f.last).max();
        }
        Ok(History {
            root,
            inner: Mutex::new(inner),
            flushing: Mutex::new(()),
            maintaining: Mutex::new(()),
            retention_days,
            grace,
            read_only,
        })
    }

    /// Where the files live.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Buffers one closed window's rows. Returns false (and keeps nothing) when a window with this
    /// start is already in a file — it was written before a crash and re-closed by recovery.
    pub fn append(&self, table: Table, window_start: i64, batch: RecordBatch) -> bool {
        let mut inner = self.lock();
        let state = &mut inner.tables[table.idx()];
        if state.persisted_to.is_some_and(|p| window_start <= p) {
            return false;
        }
        if batch.num_rows() > 0 {
            state.pending.push((window_start, batch));
        }
        true
    }

    /// The files and the buffered batches of `table`, as one consistent view.
    pub fn snapshot(&self, table: Table) -> (Vec<PathBuf>, Vec<RecordBatch>) {
        let inner = self.lock();
        let state = &inner.tables[table.idx()];
        (
            state.files.iter().map(|f| f.path.clone()).collect(),
            state.pending.iter().map(|(_, b)| b.clone()).collect(),
        )
    }

    /// Rows buffered in memory (not yet in a file).
    pub fn pending_rows(&self) -> usize {
        let inner = self.lock();
        inner
            .tables
            .iter()
            .flat_map(|t| t.pending.iter())
            .map(|(_, b)| b.num_rows())
            .sum()
    }

    /// Writes buffered windows to files, then [`maintain`](History::maintain)s them.
    pub fn flush(&self) -> Result<FlushStats, HistoryError> {
        let mut stats = self.write_pending()?;
        let more = self.maintain()?;
        stats.hours_compacted = more.hours_compacted;
        stats.files_expired = more.files_expired;
        Ok(stats)
    }

    /// Writes buffered windows to files (milliseconds: what must happen before a checkpoint).
    pub fn write_pending(&self) -> Result<FlushStats, HistoryError> {
        let mut stats = FlushStats::default();
        if self.read_only {
            return Ok(stats);
        }
        let _one_at_a_time = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        for table in Table::ALL {
            self.flush_table(table, &mut stats)?;
        }
        if stats.files_written > 0 {
            metrics::counter!("throng_history_rows_written_total").increment(stats.rows_written as u64);
        }
        Ok(stats)
    }

    /// Compacts complete hours, applies retention and deletes replaced files whose grace period is
    /// over. About 0.6 s for a Bund-scale hour (`benches/history.rs`), so the server runs it off the
    /// engine's task; it may run beside `write_pending`, which only adds files for the open hour.
    pub fn maintain(&self) -> Result<FlushStats, HistoryError> {
        let mut stats = FlushStats::default();
        if self.read_only {
            return Ok(stats);
        }
        let _one_at_a_time = self.maintaining.lock().unwrap_or_else(|p| p.into_inner());
        for table in Table::ALL {
            self.compact_table(table, &mut stats)?;
        }
        self.expire(&mut stats);
        self.delete_doomed(false);
        Ok(stats)
    }

    /// Flushes and then deletes every replaced file at once (no query can be running any more).
    pub fn close(&self) -> Result<FlushStats, HistoryError> {
        let stats = self.flush()?;
        self.delete_doomed(true);
        Ok(stats)
    }

    fn flush_table(&self, table: Table, stats: &mut FlushStats) -> Result<(), HistoryError> {
        let pending: Vec<(i64, RecordBatch)> = self.lock().tables[table.idx()].pending.clone();
        if pending.is_empty() {
            return Ok(());
        }
        let mut by_hour: BTreeMap<i64, Vec<&(i64, RecordBatch)>> = BTreeMap::new();
        for p in &pending {
            by_hour.entry(hour_of(p.0)).or_default().push(p);
        }
        let mut written = Vec::new();
        for (hour, items) in by_hour {
            let first = items.iter().map(|p| p.0).min().unwrap_or(hour);
            let last = items.iter().map(|p| p.0).max().unwrap_or(hour);
            let dir = partition_dir(&self.root, table, hour);
            let path = dir.join(format!("part-{first}-{last}.parquet"));
            let batches: Vec<&RecordBatch> = items.iter().map(|p| &p.1).collect();
            stats.rows_written += write_file(&path, &table.schema(), &batches)?;
            stats.files_written += 1;
            written.push(FileEntry {
                path,
                hour,
                first,
                last,
            });
        }
        // Swap memory for files in one step: a reader sees the rows in one place or the other.
        let mut inner = self.lock();
        let state = &mut inner.tables[table.idx()];
        state.pending.drain(..pending.len());
        for f in written {
            state.persisted_to = Some(state.persisted_to.map_or(f.last, |p| p.max(f.last)));
            state.files.push(f);
        }
        Ok(())
    }

    fn compact_table(&self, table: Table, stats: &mut FlushStats) -> Result<(), HistoryError> {
        let (files, newest) = {
            let inner = self.lock();
            let s = &inner.tables[table.idx()];
            (s.files.clone(), s.persisted_to)
        };
        let Some(newest) = newest else { return Ok(()) };
        // Windows close in order, so an hour before the newest window's hour gets no more rows.
        let open_hour = hour_of(newest);
        let mut by_hour: BTreeMap<i64, Vec<FileEntry>> = BTreeMap::new();
        for f in files.into_iter().filter(|f| f.hour < open_hour) {
            by_hour.entry(f.hour).or_default().push(f);
        }
        for (hour, group) in by_hour.into_iter().filter(|(_, g)| g.len() > 1) {
            let first = group.iter().map(|f| f.first).min().unwrap_or(hour);
            let last = group.iter().map(|f| f.last).max().unwrap_or(hour);
            let mut batches = Vec::new();
            let mut sorted = group.clone();
            sorted.sort_by_key(|f| f.first);
            for f in &sorted {
                batches.extend(read_file(&f.path)?);
            }
            let path = partition_dir(&self.root, table, hour).join(format!("all-{first}-{last}.parquet"));
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            write_file(&path, &table.schema(), &refs)?;
            let mut inner = self.lock();
            let now = Instant::now();
            let state = &mut inner.tables[table.idx()];
            state.files.retain(|f| !group.iter().any(|g| g.path == f.path));
            state.files.push(FileEntry {
                path,
                hour,
                first,
                last,
            });
            inner.doomed.extend(group.into_iter().map(|f| (f.path, now)));
            stats.hours_compacted += 1;
        }
        Ok(())
    }

    fn expire(&self, stats: &mut FlushStats) {
        if self.retention_days == 0 {
            return;
        }
        let mut inner = self.lock();
        let Some(newest) = inner.tables.iter().filter_map(|t| t.persisted_to).max() else {
            return;
        };
        let cutoff = newest.div_euclid(DAY_MS) * DAY_MS - (self.retention_days as i64 - 1) * DAY_MS;
        let now = Instant::now();
        let mut dropped = Vec::new();
        for t in inner.tables.iter_mut() {
            t.files.retain(|f| {
                let keep = f.hour >= cutoff;
                if !keep {
                    dropped.push((f.path.clone(), now));
                }
                keep
            });
        }
        if !dropped.is_empty() {
            tracing::info!(
                files = dropped.len(),
                keep_days = self.retention_days,
                "History older than the retention period dropped."
            );
        }
        stats.files_expired += dropped.len();
        inner.doomed.extend(dropped);
    }

    fn delete_doomed(&self, all: bool) {
        let due: Vec<PathBuf> = {
            let mut inner = self.lock();
            let grace = self.grace;
            let (due, keep): (Vec<_>, Vec<_>) = inner
                .doomed
                .drain(..)
                .partition(|(_, at)| all || at.elapsed() >= grace);
            inner.doomed = keep;
            due.into_iter().map(|(p, _)| p).collect()
        };
        for p in due {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), error = %e, "Could not delete a replaced history file.");
                }
            }
            // Empty hour and day folders go too (remove_dir fails harmlessly when not empty).
            if let Some(hour_dir) = p.parent() {
                let _ = std::fs::remove_dir(hour_dir);
                if let Some(day_dir) = hour_dir.parent() {
                    let _ = std::fs::remove_dir(day_dir);
                }
            }
        }
    }
}

/// Lists a table's files; unless read-only, removes temporary files and parts a compacted file
/// already holds (a crash between writing it and deleting them).
fn scan_table(dir: &Path, read_only: bool) -> Result<Vec<FileEntry>, HistoryError> {
    let mut out = Vec::new();
    let Ok(days) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for day in days.flatten() {
        let Ok(hours) = std::fs::read_dir(day.path()) else {
            continue;
        };
        for hour in hours.flatten() {
            let hour_path = hour.path();
            let entries = std::fs::read_dir(&hour_path).map_err(io("listing", &hour_path))?;
            let mut found = Vec::new();
            for e in entries.flatten() {
                let path = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") {
                    if !read_only {
                        let _ = std::fs::remove_file(&path);
                    }
                    continue;
                }
                if let Some((compacted, first, last)) = parse_name(&name) {
                    found.push((
                        compacted,
                        FileEntry {
                            path,
                            hour: hour_of(first),
                            first,
                            last,
                        },
                    ));
                }
            }
            let covers: Vec<(i64, i64)> = found
                .iter()
                .filter(|(c, _)| *c)
                .map(|(_, f)| (f.first, f.last))
                .collect();
            for (compacted, f) in found {
                let superseded = !compacted && covers.iter().any(|(a, b)| *a <= f.first && f.last <= *b);
                if superseded {
                    if !read_only {
                        let _ = std::fs::remove_file(&f.path);
                    }
                } else {
                    out.push(f);
                }
            }
        }
    }
    out.sort_by_key(|f| f.first);
    Ok(out)
}

fn write_file(path: &Path, schema: &SchemaRef, batches: &[&RecordBatch]) -> Result<usize, HistoryError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        // Row groups small enough for window_start statistics to skip most of an hour.
        .set_max_row_group_row_count(Some(65_536))
        .build();
    files::replace(path, |file| {
        let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props))?;
        let mut rows = 0;
        for b in batches {
            rows += b.num_rows();
            w.write(b)?;
        }
        w.close()?;
        Ok::<_, parquet::errors::ParquetError>(rows)
    })
    .map_err(|e| match e {
        files::ReplaceError::Write(source) => HistoryError::Parquet {
            path: path.to_owned(),
            source,
        },
        files::ReplaceError::Io { what, path, source } => HistoryError::Io { what, path, source },
    })
}

fn read_file(path: &Path) -> Result<Vec<RecordBatch>, HistoryError> {
    let pq = |source| HistoryError::Parquet {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io("opening", path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(pq)?
        .build()
        .map_err(pq)?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pq(parquet::errors::ParquetError::ArrowError(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CellId, EventTime};
    use crate::window::{to_record_batch, HexRow, HexWindow};

    fn window(start: i64, people: u64) -> RecordBatch {
        let cell = h3o::LatLng::new(31.24, 121.49)
            .unwrap()
            .to_cell(h3o::Resolution::Eleven);
        let row = HexRow {
            cell: CellId(u64::from(cell)),
            lbs_devices: people,
            lbs_people: people as f64,
            ..HexRow::default()
        };
        to_record_batch(&HexWindow {
            start: EventTime(start),
            end: EventTime(start + 60_000),
            rows: vec![row],
            points: Vec::new(),
            segments: Default::default(),
            is_final: true,
        })
        .unwrap()
    }

    fn rows(h: &History) -> usize {
        let (files, mem) = h.snapshot(Table::HexWindows);
        let on_disk: usize = files
            .iter()
            .map(|f| read_file(f).unwrap().iter().map(|b| b.num_rows()).sum::<usize>())
            .sum();
        on_disk + mem.iter().map(|b| b.num_rows()).sum::<usize>()
    }

    #[test]
    fn windows_move_from_memory_to_files_and_are_seen_once() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path(), 0, Duration::ZERO).unwrap();
        let t0 = 1_767_193_200_000; // 2025-12-31T15:00Z
        for i in 0..3 {
            assert!(h.append(Table::HexWindows, t0 + i * 10_000, window(t0 + i * 10_000, 5)));
        }
        assert_eq!(rows(&h), 3);
        let s = h.flush().unwrap();
        assert_eq!((s.files_written, s.rows_written), (1, 3));
        assert_eq!(rows(&h), 3);
        assert_eq!(h.pending_rows(), 0);
        assert!(dir.path().join("history/hex_windows/2025-12-31/15").is_dir());
    }

    #[test]
    fn a_window_already_on_disk_is_not_written_again_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_767_193_200_000;
        {
            let h = History::open(dir.path(), 0, Duration::ZERO).unwrap();
            h.append(Table::HexWindows, t0, window(t0, 5));
            h.append(Table::HexWindows, t0 + 10_000, window(t0 + 10_000, 5));
            h.flush().unwrap();
        }
        let h = History::open(dir.path(), 0, Duration::ZERO).unwrap();
        assert!(!h.append(Table::HexWindows, t0 + 10_000, window(t0 + 10_000, 5)));
        assert!(h.append(Table::HexWindows, t0 + 20_000, window(t0 + 20_000, 5)));
        assert_eq!(rows(&h), 3);
    }

    #[test]
    fn new_windows_are_written_while_a_past_hour_is_compacted_and_each_row_stays_once() {
        let dir = tempfile::tempdir().unwrap();
        let h = std::sync::Arc::new(History::open(dir.path(), 0, Duration::ZERO).unwrap());
        let t0 = 1_767_139_200_000; // 2025-12-31T00:00Z
        for i in 0..30 {
            let t = t0 + i * 60_000;
            h.append(Table::HexWindows, t, window(t, 3));
            h.write_pending().unwrap();
        }
        // The next hour opens: hour 0 may be compacted while hour 1 keeps being written.
        let t1 = t0 + HOUR_MS;
        h.append(Table::HexWindows, t1, window(t1, 3));
        h.write_pending().unwrap();
        let compactor = {
            let h = h.clone();
            std::thread::spawn(move || h.maintain().unwrap())
        };
        for i in 1..20 {
            let t = t1 + i * 60_000;
            h.append(Table::HexWindows, t, window(t, 3));
            h.write_pending().unwrap();
        }
        assert_eq!(compactor.join().unwrap().hours_compacted, 1);
        assert_eq!(rows(&h), 50);
        let (files, _) = h.snapshot(Table::HexWindows);
        let compacted: Vec<_> = files
            .iter()
            .filter(|f| f.file_name().unwrap().to_string_lossy().starts_with("all-"))
            .collect();
        assert_eq!(compacted.len(), 1, "{files:?}");
        assert_eq!(
            read_file(compacted[0])
                .unwrap()
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>(),
            30
        );
    }

    #[test]
    fn a_complete_hour_is_compacted_into_one_file_and_old_days_expire() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path(), 2, Duration::ZERO).unwrap();
        let day0 = 1_767_139_200_000; // 2025-12-31T00:00Z
        for i in 0..4 {
            let t = day0 + i * 600_000;
            h.append(Table::HexWindows, t, window(t, 1));
            h.flush().unwrap();
        }
        assert_eq!(h.snapshot(Table::HexWindows).0.len(), 4);
        let t = day0 + HOUR_MS;
        h.append(Table::HexWindows, t, window(t, 1));
        let s = h.flush().unwrap();
        assert_eq!(s.hours_compacted, 1);
        let (files, _) = h.snapshot(Table::HexWindows);
        assert_eq!(files.len(), 2);
        assert!(files
            .iter()
            .any(|f| f.file_name().unwrap().to_string_lossy().starts_with("all-")));
        assert_eq!(rows(&h), 5);
        // Parts are gone from disk; a restart lists the same files.
        drop(h);
        let h = History::open(dir.path(), 2, Duration::ZERO).unwrap();
        assert_eq!(h.snapshot(Table::HexWindows).0.len(), 2);
        // Two days later the first day is beyond a 2-day retention.
        let later = day0 + 2 * DAY_MS;
        h.append(Table::HexWindows, later, window(later, 1));
        let s = h.flush().unwrap();
        assert_eq!(s.files_expired, 2);
        assert_eq!(rows(&h), 1);
        assert!(!dir.path().join("history/hex_windows/2025-12-31").exists());
    }

    #[test]
    fn parts_a_compacted_file_covers_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_767_193_200_000;
        let h = History::open(dir.path(), 0, Duration::from_secs(3600)).unwrap();
        h.append(Table::HexWindows, t0, window(t0, 1));
        h.flush().unwrap();
        h.append(Table::HexWindows, t0 + 60_000, window(t0 + 60_000, 1));
        h.flush().unwrap();
        h.append(Table::HexWindows, t0 + HOUR_MS, window(t0 + HOUR_MS, 1));
        h.flush().unwrap();
        // The long grace kept the parts on disk, as after a crash right after compaction.
        let part_dir = dir.path().join("history/hex_windows/2025-12-31/15");
        assert_eq!(std::fs::read_dir(&part_dir).unwrap().count(), 3);
        drop(h);
        let h = History::open(dir.path(), 0, Duration::ZERO).unwrap();
        assert_eq!(std::fs::read_dir(&part_dir).unwrap().count(), 1);
        assert_eq!(rows(&h), 3);
    }
}
