//! The write-ahead log: accepted records (already pseudonymised — no raw device id is ever written)
//! are appended, and fsynced by default, before the feed gets its acknowledgement.
//!
//! Layout in the data dir: `wal/NNNNNNNNNNNN.log` segments of JSON lines, and `checkpoint.json` (the
//! whole window engine plus the first segment it does not contain). A checkpoint is taken at a
//! segment boundary after the engine has consumed every record of the earlier segments; those
//! segments are then deleted, so the log stays bounded. Recovery = the checkpoint's engine plus a
//! replay of the segments from its boundary on; a torn last line (a crash mid-write, never
//! acknowledged) is skipped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
}

/// What was found on disk at start.
#[derive(Debug, Default)]
pub struct Recovery {
    /// The checkpointed engine, if any.
    pub engine: Option<Engine>,
    /// Records logged after the checkpoint, in log order.
    pub records: Vec<Record>,
    /// Lines that could not be read (a torn tail).
    pub torn: usize,
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    /// First segment not contained in `engine`.
    segment: u64,
    engine: Engine,
}

fn seg_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:012}.log"))
}

fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut v: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
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
        }
        let segs = segments(&dir)?;
        for &n in segs.iter().filter(|n| **n >= first) {
            let f = BufReader::new(File::open(seg_path(&dir, n))?);
            for line in f.split(b'\n') {
                let line = line?;
                if line.is_empty() {
                    continue;
                }
                match serde_json::from_slice::<Record>(&line) {
                    Ok(r) => rec.records.push(r),
                    Err(_) => rec.torn += 1,
                }
            }
        }
        let segment = segs.last().map_or(first, |l| l + 1).max(first);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(seg_path(&dir, segment))?;
        Ok((
            Wal {
                dir,
                segment,
                file,
                fsync,
                buf: Vec::with_capacity(1 << 16),
            },
            rec,
        ))
    }

    /// Appends records; when this returns Ok they survive a crash (with fsync on).
    pub fn append(&mut self, records: &[Record]) -> io::Result<()> {
        self.buf.clear();
        for r in records {
            serde_json::to_writer(&mut self.buf, r).map_err(io::Error::other)?;
            self.buf.push(b'\n');
        }
        self.file.write_all(&self.buf)?;
        if self.fsync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Starts a new segment; returns its number (the boundary a checkpoint may then be taken at).
    pub fn rotate(&mut self) -> io::Result<u64> {
        if self.fsync {
            self.file.sync_all()?;
        }
        self.segment += 1;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(seg_path(&self.dir, self.segment))?;
        Ok(self.segment)
    }
}

/// Writes a checkpoint of `engine`, which holds every record of the segments before `segment`, then
/// deletes those segments.
pub fn checkpoint(data_dir: &Path, segment: u64, engine: &Engine) -> io::Result<()> {
    #[derive(Serialize)]
    struct Out<'a> {
        segment: u64,
        engine: &'a Engine,
    }
    super::files::replace(&data_dir.join(super::files::names::CHECKPOINT), |w| {
        serde_json::to_writer(w, &Out { segment, engine }).map_err(io::Error::other)
    })
    .map_err(super::files::ReplaceError::into_io)?;
    let dir = data_dir.join(super::files::names::WAL);
    for n in segments(&dir)?.into_iter().filter(|n| *n < segment) {
        fs::remove_file(seg_path(&dir, n))?;
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
        assert!(r.records.is_empty() && r.engine.is_none());
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
        assert_eq!(r.records, vec![ping(1), ping(2), ping(3)]);
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
        checkpoint(dir.path(), boundary, &e).unwrap();
        w.append(&[ping(10)]).unwrap();
        assert_eq!(segments(&dir.path().join("wal")).unwrap(), vec![boundary]);
        drop(w);
        let (_, r) = Wal::open(dir.path(), false).unwrap();
        assert_eq!(
            r.records,
            vec![ping(10)],
            "only what the checkpoint does not hold"
        );
        let mut back = r.engine.unwrap();
        assert!(
            !back.ingest(&ping(3), 0),
            "the checkpointed engine knows what it has counted"
        );
    }
}
