//! The write-ahead log: accepted records (already pseudonymised — no raw device id is ever written)
//! are appended, and fsynced by default, before the feed gets its acknowledgement.
//!
//! Layout in the data dir: `wal/NNNNNNNNNNNN.wal` segments of binary frames (`frame`: a ping is 39
//! bytes, a fifth of its JSON line; `throng wal dump` prints them as NDJSON), and `checkpoint.json`
//! (the whole window engine plus the first segment it does not contain). Segments written before
//! the binary format (`NNNNNNNNNNNN.log`, JSON lines) are still read on recovery. A checkpoint is taken at a
//! segment boundary after the engine has consumed every record of the earlier segments; those
//! segments are then deleted, so the log stays bounded. Recovery = the checkpoint's engine plus a
//! replay of the segments from its boundary on; a torn last frame (a crash mid-write, never
//! acknowledged) is skipped.
//!
//! Every batch carries the processing time it was accepted at. The engine's moves that depend on
//! processing time alone (a source going idle, the watermark moving on while every feed is
//! silent) are logged as tick entries in the same order the engine
//! saw them. Replaying the log therefore hands the engine the same times in the same order as the
//! live run, and it decides the same way: a crash does not change the answer.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::frame::Entry;
use crate::ingest::Sources;
use crate::model::Record;
use crate::window::Engine;

/// The open log.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    segment: u64,
    file: File,
    fsync: bool,
    buf: Vec<u8>,
    clock: Clock,
    /// Newest time stamped: stamps never go back, even when the wall clock does.
    last: i64,
    /// The source table whose new names each mark carries, and how many are logged.
    sources: Option<(Arc<Sources>, usize)>,
    /// Bytes of whole entries in the open segment: where a failed write is cut back to.
    len: u64,
    /// A failed write could not be cut back yet; the next write does it first.
    torn: bool,
}

/// One entry of the log, as recovery hands it back.
#[derive(Debug, Clone, PartialEq)]
pub enum Logged {
    /// Records accepted together at processing time `at` (None: a log written before marks).
    Batch {
        /// Processing time of acceptance (ms).
        at: Option<i64>,
        /// The records, in log order.
        records: Vec<Record>,
    },
    /// The engine moved on with processing time alone, at this time (ms).
    Tick(i64),
}

/// What was found on disk at start.
#[derive(Debug, Default)]
pub struct Recovery {
    /// The checkpointed engine, if any.
    pub engine: Option<Engine>,
    /// What the layers above the engine checkpointed beside it (tier state, output counts).
    pub flow: Option<serde_json::Value>,
    /// Entries logged after the checkpoint, in log order.
    pub entries: Vec<Logged>,
    /// Entries that could not be read: a torn frame ending a segment, or an unreadable line of
    /// an older JSON-lines segment.
    pub torn: usize,
    /// The source names the log's records are numbered by, in id order.
    pub sources: Vec<String>,
}

impl Recovery {
    /// Records logged after the checkpoint, in log order.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.entries.iter().flat_map(|e| match e {
            Logged::Batch { records, .. } => records.as_slice(),
            Logged::Tick(_) => &[],
        })
    }

    /// The newest processing time the log or the checkpoint knows (ms).
    pub fn last_time(&self) -> Option<i64> {
        let logged = self.entries.iter().filter_map(|e| match e {
            Logged::Batch { at, .. } => *at,
            Logged::Tick(t) => Some(*t),
        });
        let checkpointed = self
            .engine
            .iter()
            .flat_map(|e| e.watermark().sources().iter())
            .filter(|c| c.records > 0)
            .map(|c| c.last_seen);
        logged.chain(checkpointed).max()
    }
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    /// First segment not contained in `engine`.
    segment: u64,
    engine: Engine,
    #[serde(default)]
    flow: Option<serde_json::Value>,
    /// Source names in id order when it was written.
    #[serde(default)]
    sources: Vec<String>,
}

/// Source names registered since the last mark: ids `from`, `from + 1`, …
#[derive(Serialize, Deserialize)]
struct SourcesDelta {
    from: usize,
    names: Vec<String>,
}

/// The mark line before a batch, and the tick line.
#[derive(Serialize, Deserialize)]
struct Mark {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tick: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sources: Option<SourcesDelta>,
}

/// Processing time as the log stamps it: the wall clock, less the time the server was down, and
/// never going back. A restart continues from the newest logged time, so the minutes a crashed
/// server spent down do not make every feed look idle (which would close their windows early and
/// turn the re-sent tail late, where the uninterrupted run counted it in time).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset: i64,
}

impl Clock {
    /// A clock continuing from `last` (the newest logged time), or the wall clock when None.
    pub fn resuming(last: Option<i64>) -> Clock {
        let wall = crate::model::now_ms();
        Clock {
            offset: last.map_or(0, |l| (wall - l).max(0)),
        }
    }

    /// Processing time now (ms).
    pub fn now(&self) -> i64 {
        crate::model::now_ms() - self.offset
    }

    /// How far behind the wall clock processing time runs (ms): the downtime skipped.
    pub fn offset_ms(&self) -> i64 {
        self.offset
    }
}

/// A segment in the binary format (what this version writes).
fn seg_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:012}.wal"))
}

/// A segment of JSON lines, written before the binary format.
fn legacy_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:012}.log"))
}

/// Segment numbers in the log folder, either format, ascending.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut v: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            name.strip_suffix(".wal")
                .or_else(|| name.strip_suffix(".log"))?
                .parse()
                .ok()
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// Reads segment `n` (binary, or JSON lines if that is what is on disk) into `rec`; returns where
/// reading stopped early, if it did (byte offset and why), for `throng wal dump`.
fn read_segment(dir: &Path, n: u64, rec: &mut Recovery) -> io::Result<Option<(usize, String)>> {
    let legacy = legacy_path(dir, n);
    if legacy.exists() {
        let f = BufReader::new(File::open(&legacy)?);
        let (torn, mut at, mut first_bad) = (rec.torn, 0usize, None);
        for line in f.split(b'\n') {
            let line = line?;
            if !line.is_empty() {
                read_line(&line, rec);
                if rec.torn > torn && first_bad.is_none() {
                    first_bad = Some(at);
                }
            }
            at += line.len() + 1;
        }
        let skipped = rec.torn - torn;
        return Ok(first_bad.map(|b| (b, format!("{skipped} unreadable JSON line(s), skipped"))));
    }
    let bytes = match fs::read(seg_path(dir, n)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for f in super::frame::Frames::new(&bytes) {
        match f {
            Ok(Entry::Batch { at, sources, records }) => {
                if let Some((from, names)) = sources {
                    rec.sources.truncate(from);
                    if rec.sources.len() == from {
                        rec.sources.extend(names);
                    }
                }
                rec.entries.push(Logged::Batch {
                    at: Some(at),
                    records,
                });
            }
            Ok(Entry::Tick(t)) => rec.entries.push(Logged::Tick(t)),
            Err((at, e)) => {
                rec.torn += 1;
                return Ok(Some((at, e.to_string())));
            }
        }
    }
    Ok(None)
}

impl Wal {
    /// Opens the log in `data_dir`, returning what must be replayed.
    pub fn open(data_dir: &Path, fsync: bool) -> io::Result<(Wal, Recovery)> {
        let dir = data_dir.join(super::files::names::WAL);
        fs::create_dir_all(&dir)?;
        let mut rec = Recovery::default();
        let mut first = 0;
        let cp = data_dir.join(super::files::names::CHECKPOINT);
        if cp.exists() {
            let text = fs::read(&cp)?;
            let c: Checkpoint = serde_json::from_slice(&text)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", cp.display())))?;
            first = c.segment;
            rec.engine = Some(c.engine);
            rec.flow = c.flow;
            rec.sources = c.sources;
        }
        let segs = segments(&dir)?;
        for &n in segs.iter().filter(|n| **n >= first) {
            read_segment(&dir, n, &mut rec)?;
        }
        // Always a fresh segment: one that ended in a torn frame is never appended to.
        let segment = segs.last().map_or(first, |l| l + 1).max(first);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(seg_path(&dir, segment))?;
        let last = rec.last_time();
        let len = file.metadata()?.len();
        Ok((
            Wal {
                dir,
                segment,
                file,
                fsync,
                buf: Vec::with_capacity(1 << 16),
                clock: Clock::resuming(last),
                last: last.unwrap_or(i64::MIN),
                sources: None,
                len,
                torn: false,
            },
            rec,
        ))
    }

    /// The processing clock the log stamps with.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Restarts the clock from the newest logged time (after recovery, just before accepting
    /// records), so neither the downtime nor the start-up counts as processing time.
    pub fn resume_clock(&mut self) {
        self.clock = Clock::resuming((self.last != i64::MIN).then_some(self.last));
    }

    /// Logs the names of sources `sources` registers from now on with the batches that follow, so
    /// a recovery numbers the providers as this run did.
    pub fn log_sources(&mut self, sources: Arc<Sources>) {
        // The first mark carries the whole table: a recovery without a checkpoint needs it too.
        self.sources = Some((sources, 0));
    }

    fn sources_delta(&mut self) -> Option<SourcesDelta> {
        let (s, logged) = self.sources.as_mut()?;
        let n = s.len();
        (n > *logged).then(|| {
            let d = SourcesDelta {
                from: *logged,
                names: s.names_from(*logged),
            };
            *logged = n;
            d
        })
    }

    fn stamp(&mut self) -> i64 {
        self.last = self.last.max(self.clock.now());
        self.last
    }

    /// Appends records accepted now; returns the processing time they were stamped with. When
    /// this returns Ok they survive a crash (with fsync on); when it fails nothing of them is in
    /// the log (a half-written batch is cut off again), so a retry cannot count them twice.
    pub fn append(&mut self, records: &[Record]) -> io::Result<i64> {
        let at = self.stamp();
        let before = self.sources.as_ref().map(|(_, logged)| *logged);
        let sources = self.sources_delta();
        self.buf.clear();
        super::frame::encode_batch(
            &mut self.buf,
            at,
            sources.as_ref().map(|d| (d.from, d.names.as_slice())),
            records,
        );
        if let Err(e) = self.write_buf() {
            // The names were not logged after all: the next mark carries them again.
            if let (Some((_, logged)), Some(b)) = (self.sources.as_mut(), before) {
                *logged = b;
            }
            return Err(e);
        }
        Ok(at)
    }

    /// Logs that the engine moves on with processing time alone; returns the time stamped.
    pub fn tick(&mut self) -> io::Result<i64> {
        let at = self.stamp();
        self.buf.clear();
        super::frame::encode_tick(&mut self.buf, at);
        self.write_buf()?;
        Ok(at)
    }

    /// Writes `buf` whole (and syncs it) or leaves the segment as it was. A full disk or a file
    /// size limit lets a write go part way: left in place, that fragment would end the segment's
    /// readable part there, and every batch after it would be lost to a recovery.
    fn write_buf(&mut self) -> io::Result<()> {
        if self.torn {
            self.file.set_len(self.len)?;
            self.torn = false;
        }
        let written =
            self.file
                .write_all(&self.buf)
                .and_then(|()| if self.fsync { self.file.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cutting back needs no space; if even that fails, the next write tries first.
                self.torn = self.file.set_len(self.len).is_err();
                Err(e)
            }
        }
    }

    /// Starts a new segment; returns its number (the boundary a checkpoint may then be taken at).
    pub fn rotate(&mut self) -> io::Result<u64> {
        if self.fsync {
            self.file.sync_all()?;
        }
        if self.torn {
            self.file.set_len(self.len)?;
            self.torn = false;
        }
        // The number moves on only once the file is open: a failed rotation keeps appending to
        // the segment it had.
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(seg_path(&self.dir, self.segment + 1))?;
        self.segment += 1;
        self.len = 0;
        Ok(self.segment)
    }
}

/// What `dump` found.
#[derive(Debug, Default)]
pub struct DumpSummary {
    /// Segments read.
    pub segments: usize,
    /// Batches and ticks.
    pub batches: usize,
    /// Ticks.
    pub ticks: usize,
    /// Records.
    pub records: usize,
    /// Segments with an entry that could not be read: (file, byte offset of the first, why).
    pub torn: Vec<(PathBuf, usize, String)>,
}

/// Writes every entry of the log in `data_dir` to `out` as NDJSON, for a person or a script: per
/// segment a `{"segment":N}` line, then per batch a `{"at":T}` line followed by its records (the
/// JSON form of `model::Record`), per tick a `{"tick":T}` line; last, `{"sources":[…]}`, the source
/// names the records' numeric `source` ids stand for.
pub fn dump(data_dir: &Path, out: &mut impl Write) -> io::Result<DumpSummary> {
    let dir = data_dir.join(super::files::names::WAL);
    let mut sum = DumpSummary::default();
    let mut sources = Vec::new();
    let cp = data_dir.join(super::files::names::CHECKPOINT);
    if cp.exists() {
        #[derive(Deserialize)]
        struct Names {
            #[serde(default)]
            sources: Vec<String>,
        }
        if let Ok(n) = serde_json::from_slice::<Names>(&fs::read(&cp)?) {
            sources = n.sources;
        }
    }
    for n in segments(&dir)? {
        let mut rec = Recovery {
            sources: std::mem::take(&mut sources),
            ..Default::default()
        };
        let stopped = read_segment(&dir, n, &mut rec)?;
        sum.segments += 1;
        writeln!(out, "{{\"segment\":{n}}}")?;
        for e in &rec.entries {
            match e {
                Logged::Batch { at, records } => {
                    sum.batches += 1;
                    sum.records += records.len();
                    match at {
                        Some(t) => writeln!(out, "{{\"at\":{t}}}")?,
                        None => writeln!(out, "{{}}")?,
                    }
                    for r in records {
                        serde_json::to_writer(&mut *out, r).map_err(io::Error::other)?;
                        out.write_all(b"\n")?;
                    }
                }
                Logged::Tick(t) => {
                    sum.ticks += 1;
                    writeln!(out, "{{\"tick\":{t}}}")?;
                }
            }
        }
        if let Some((at, why)) = stopped {
            let path = if legacy_path(&dir, n).exists() {
                legacy_path(&dir, n)
            } else {
                seg_path(&dir, n)
            };
            sum.torn.push((path, at, why));
        }
        sources = rec.sources;
    }
    serde_json::to_writer(&mut *out, &serde_json::json!({ "sources": sources })).map_err(io::Error::other)?;
    out.write_all(b"\n")?;
    Ok(sum)
}

/// What a checkpoint holds.
#[derive(Debug, Clone, Copy)]
pub struct Checkpointed<'a> {
    /// The window engine, holding every record of the segments before the boundary.
    pub engine: &'a Engine,
    /// The state of the layers above it at the same point (tier machines, output counts).
    pub flow: Option<&'a serde_json::Value>,
    /// Source names in id order.
    pub sources: &'a [String],
}

/// One line of a JSON-lines segment into `rec`: a mark opens a batch, a record joins the open one.
fn read_line(line: &[u8], rec: &mut Recovery) {
    // Records start `{"ts":`; only marks start otherwise, so the hot case is one comparison.
    if !line.starts_with(b"{\"ts\"") {
        if let Ok(m) = serde_json::from_slice::<Mark>(line) {
            if let Some(d) = m.sources {
                rec.sources.truncate(d.from);
                if rec.sources.len() == d.from {
                    rec.sources.extend(d.names);
                }
            }
            match (m.at, m.tick) {
                (Some(at), _) => rec.entries.push(Logged::Batch {
                    at: Some(at),
                    records: Vec::new(),
                }),
                (None, Some(t)) => rec.entries.push(Logged::Tick(t)),
                (None, None) => rec.torn += 1,
            }
            return;
        }
    }
    match serde_json::from_slice::<Record>(line) {
        Ok(r) => match rec.entries.last_mut() {
            Some(Logged::Batch { records, .. }) => records.push(r),
            _ => rec.entries.push(Logged::Batch {
                at: None,
                records: vec![r],
            }),
        },
        Err(_) => rec.torn += 1,
    }
}

/// Writes a checkpoint of `engine`, which holds every record of the segments before `segment`,
/// with `flow` (the state of the layers above it at the same point), then deletes those segments.
pub fn checkpoint(data_dir: &Path, segment: u64, state: Checkpointed<'_>) -> io::Result<()> {
    #[derive(Serialize)]
    struct Out<'a> {
        segment: u64,
        engine: &'a Engine,
        flow: Option<&'a serde_json::Value>,
        sources: &'a [String],
    }
    let out = Out {
        segment,
        engine: state.engine,
        flow: state.flow,
        sources: state.sources,
    };
    super::files::replace(&data_dir.join(super::files::names::CHECKPOINT), |w| {
        serde_json::to_writer(w, &out).map_err(io::Error::other)
    })
    .map_err(super::files::ReplaceError::into_io)?;
    let dir = data_dir.join(super::files::names::WAL);
    for n in segments(&dir)?.into_iter().filter(|n| *n < segment) {
        for p in [seg_path(&dir, n), legacy_path(&dir, n)] {
            match fs::remove_file(p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RegisterConfig, WindowConfig};
    use crate::model::{Body, CellId, DeviceId, EventTime, SourceId};

    fn ping(i: u64) -> Record {
        Record {
            ts: EventTime(1_767_193_200_000 + i as i64 * 1000),
            source: SourceId(2),
            cell: CellId(0x08b3_0995_8ac3_6fff),
            point: None,
            body: Body::Ping {
                device: DeviceId(i),
                pos: None,
            },
        }
    }

    #[test]
    fn logged_records_come_back_after_a_restart_and_a_torn_tail_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, r) = Wal::open(dir.path(), true).unwrap();
        assert!(r.entries.is_empty() && r.engine.is_none());
        w.append(&[ping(1), ping(2)]).unwrap();
        w.rotate().unwrap();
        w.append(&[ping(3)]).unwrap();
        drop(w);
        // A crash in the middle of a write leaves half a line.
        let last = segments(&dir.path().join("wal"))
            .unwrap()
            .into_iter()
            .max()
            .unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(seg_path(&dir.path().join("wal"), last))
            .unwrap();
        f.write_all(b"{\"ts\":17671").unwrap();
        let (_, r) = Wal::open(dir.path(), true).unwrap();
        assert_eq!(
            r.records().cloned().collect::<Vec<_>>(),
            vec![ping(1), ping(2), ping(3)]
        );
        assert_eq!(r.torn, 1);
    }

    #[test]
    fn a_checkpoint_bounds_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = Wal::open(dir.path(), false).unwrap();
        let mut e = Engine::new(&WindowConfig::default(), &RegisterConfig::default(), vec![1.0; 4]);
        for i in 0..10 {
            w.append(&[ping(i)]).unwrap();
            e.ingest(&ping(i), 0);
        }
        let boundary = w.rotate().unwrap();
        let state = Checkpointed {
            engine: &e,
            flow: None,
            sources: &[],
        };
        checkpoint(dir.path(), boundary, state).unwrap();
        w.append(&[ping(10)]).unwrap();
        assert_eq!(segments(&dir.path().join("wal")).unwrap(), vec![boundary]);
        drop(w);
        let (_, r) = Wal::open(dir.path(), false).unwrap();
        assert_eq!(
            r.records().cloned().collect::<Vec<_>>(),
            vec![ping(10)],
            "only what the checkpoint does not hold"
        );
        let mut back = r.engine.unwrap();
        assert!(
            !back.ingest(&ping(3), 0),
            "the checkpointed engine knows what it has counted"
        );
    }

    #[test]
    fn the_log_gives_back_each_batch_with_its_time_and_each_tick_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = Wal::open(dir.path(), false).unwrap();
        let a = w.append(&[ping(1), ping(2)]).unwrap();
        let t = w.tick().unwrap();
        let b = w.append(&[ping(3)]).unwrap();
        assert!(a <= t && t <= b, "stamps never go back");
        drop(w);
        let (w, r) = Wal::open(dir.path(), false).unwrap();
        assert_eq!(
            r.entries,
            vec![
                Logged::Batch {
                    at: Some(a),
                    records: vec![ping(1), ping(2)]
                },
                Logged::Tick(t),
                Logged::Batch {
                    at: Some(b),
                    records: vec![ping(3)]
                },
            ]
        );
        assert_eq!(r.last_time(), Some(b));
        // The clock resumes from the newest logged time, not from the wall clock.
        assert!(w.clock().now() - b < 60_000);
    }

    #[test]
    fn a_restart_after_downtime_resumes_processing_time_where_the_log_left_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = Wal::open(dir.path(), false).unwrap();
        w.append(&[ping(1)]).unwrap();
        drop(w);
        // Make the log look an hour old: rewrite its batch with an older time.
        let seg = seg_path(&dir.path().join("wal"), 0);
        let an_hour_ago = crate::model::now_ms() - 3_600_000;
        let mut old = Vec::new();
        super::super::frame::encode_batch(&mut old, an_hour_ago, None, &[ping(1)]);
        std::fs::write(&seg, old).unwrap();
        let (w, _) = Wal::open(dir.path(), false).unwrap();
        let now = w.clock().now();
        assert!(
            (an_hour_ago..an_hour_ago + 60_000).contains(&now),
            "the hour the server was down is not processing time"
        );
        assert!(w.clock().offset_ms() >= 3_500_000);
    }

    #[test]
    fn a_log_written_before_marks_still_replays() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("wal")).unwrap();
        let lines: String = [ping(1), ping(2)]
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        std::fs::write(legacy_path(&dir.path().join("wal"), 0), lines).unwrap();
        let (_, r) = Wal::open(dir.path(), false).unwrap();
        assert_eq!(
            r.entries,
            vec![Logged::Batch {
                at: None,
                records: vec![ping(1), ping(2)]
            }]
        );
    }

    #[test]
    fn a_log_of_json_lines_from_before_the_binary_format_replays_then_binary_follows() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        std::fs::create_dir_all(&wal).unwrap();
        let lines = format!(
            "{{\"at\":5}}\n{}\n{}\n{{\"tick\":6}}\n",
            serde_json::to_string(&ping(1)).unwrap(),
            serde_json::to_string(&ping(2)).unwrap()
        );
        std::fs::write(legacy_path(&wal, 0), lines).unwrap();
        let (mut w, r) = Wal::open(dir.path(), false).unwrap();
        assert_eq!(r.records().count(), 2);
        w.append(&[ping(3)]).unwrap();
        drop(w);
        assert!(
            seg_path(&wal, 1).exists(),
            "new entries go to a binary segment after the old one"
        );
        let (_, r) = Wal::open(dir.path(), false).unwrap();
        assert_eq!(
            r.records().cloned().collect::<Vec<_>>(),
            vec![ping(1), ping(2), ping(3)]
        );
        assert_eq!(r.entries[1], Logged::Tick(6));
        // A person reads both as NDJSON.
        let mut out = Vec::new();
        let sum = dump(dir.path(), &mut out).unwrap();
        // Three segments: the old one, the binary one, and the empty one the second open started.
        assert_eq!((sum.segments, sum.batches, sum.ticks, sum.records), (3, 2, 1, 3));
        assert!(sum.torn.is_empty());
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["segment"], 0);
        assert_eq!(lines[1]["at"], 5);
        let back: Record = serde_json::from_value(lines[2].clone()).unwrap();
        assert_eq!(back, ping(1));
        assert_eq!(lines[4]["tick"], 6);
        assert_eq!(lines[5]["segment"], 1);
        assert!(lines.last().unwrap()["sources"].is_array());
    }

    #[test]
    fn dump_names_the_segment_and_byte_where_a_torn_tail_starts() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = Wal::open(dir.path(), true).unwrap();
        w.append(&[ping(1)]).unwrap();
        drop(w);
        let seg = seg_path(&dir.path().join("wal"), 0);
        let whole = std::fs::metadata(&seg).unwrap().len() as usize;
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        let sum = dump(dir.path(), &mut Vec::new()).unwrap();
        assert_eq!(sum.records, 1);
        assert_eq!(sum.torn.len(), 1);
        assert_eq!((sum.torn[0].0.clone(), sum.torn[0].1), (seg, whole));
    }

    #[test]
    fn the_log_keeps_the_names_its_source_ids_stand_for() {
        let dir = tempfile::tempdir().unwrap();
        let lbs = crate::config::LbsConfig::default();
        let sources = Arc::new(Sources::new(&lbs));
        let (mut w, _) = Wal::open(dir.path(), false).unwrap();
        w.log_sources(sources.clone());
        sources.lbs(Some("x"));
        w.append(&[ping(1)]).unwrap();
        sources.lbs(Some("y"));
        w.append(&[ping(2)]).unwrap();
        w.append(&[ping(3)]).unwrap();
        drop(w);
        let (_, r) = Wal::open(dir.path(), false).unwrap();
        assert_eq!(r.sources, sources.names());
        assert_eq!(r.sources[2..], ["lbs/x".to_string(), "lbs/y".to_string()]);
    }
}
