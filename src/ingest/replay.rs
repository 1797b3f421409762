//! Recorded NDJSON files merged into one stream in event-time order.
//!
//! Order across files is by event time (a k-way merge on each file's next record); order within a
//! file is kept as recorded, so a record that was late in the recording stays late in the replay.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::parse::{Parser, Reject};
use crate::model::Record;

/// A line that could not be used, with where it was.
#[derive(Debug)]
pub struct BadLine {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: u64,
    /// Why.
    pub reject: Reject,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reject)
    }
}

struct FileFeed {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    line_no: u64,
    buf: Vec<u8>,
    /// The pending record's line is `buf[..line_len]` (trimmed).
    line_len: usize,
}

/// Merges several NDJSON files by event time.
pub struct Replay {
    parser: Parser,
    files: Vec<FileFeed>,
    /// Each file's next record by event time; unused with one file, which needs no merge.
    heads: BinaryHeap<Reverse<(i64, usize, u64)>>,
    pending: Vec<Option<Record>>,
    bad: Vec<BadLine>,
    max_line_bytes: usize,
}

impl Replay {
    /// Opens every file (`-` is standard input).
    pub fn open(paths: &[PathBuf], parser: Parser, max_line_bytes: usize) -> std::io::Result<Replay> {
        let mut files = Vec::new();
        for p in paths {
            let reader: Box<dyn BufRead + Send> = if p == Path::new("-") {
                Box::new(BufReader::new(std::io::stdin()))
            } else {
                let f = File::open(p)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
                Box::new(BufReader::with_capacity(1 << 16, f))
            };
            files.push(FileFeed {
                path: p.clone(),
                reader,
                line_no: 0,
                buf: Vec::with_capacity(512),
                line_len: 0,
            });
        }
        let n = files.len();
        let mut r = Replay {
            parser,
            files,
            heads: BinaryHeap::new(),
            pending: (0..n).map(|_| None).collect(),
            bad: Vec::new(),
            max_line_bytes,
        };
        for i in 0..n {
            r.refill(i)?;
        }
        Ok(r)
    }

    /// Reads file `i` up to its next good record.
    fn refill(&mut self, i: usize) -> std::io::Result<()> {
        let merged = self.files.len() > 1;
        let f = &mut self.files[i];
        loop {
            f.buf.clear();
            if f.reader.read_until(b'\n', &mut f.buf)? == 0 {
                return Ok(());
            }
            f.line_no += 1;
            let line = trim(&f.buf);
            if line.is_empty() {
                continue;
            }
            if line.len() > self.max_line_bytes {
                self.bad.push(BadLine {
                    file: f.path.clone(),
                    line: f.line_no,
                    reject: Reject {
                        field: String::new(),
                        reason: format!(
                            "line is {} bytes, over the {}-byte limit",
                            line.len(),
                            self.max_line_bytes
                        ),
                        code: super::RejectCode::Value,
                    },
                });
                continue;
            }
            match self.parser.parse_line(line, None) {
                Ok(rec) => {
                    f.line_len = line.len();
                    if merged {
                        self.heads.push(Reverse((rec.ts.millis(), i, f.line_no)));
                    }
                    self.pending[i] = Some(rec);
                    return Ok(());
                }
                Err(reject) => self.bad.push(BadLine {
                    file: f.path.clone(),
                    line: f.line_no,
                    reject,
                }),
            }
        }
    }

    /// The file whose pending record comes next by event time (taken off the merge).
    fn next_file(&mut self) -> Option<usize> {
        if self.files.len() == 1 {
            return self.pending[0].is_some().then_some(0);
        }
        self.heads.pop().map(|Reverse((_, i, _))| i)
    }

    /// The next record in event-time order, or None at the end of every file.
    pub fn next_record(&mut self) -> std::io::Result<Option<Record>> {
        // No copy of the line: a replay that only reads records allocated one per line before.
        let Some(i) = self.next_file() else {
            return Ok(None);
        };
        let rec = self.pending[i].take();
        self.refill(i)?;
        Ok(rec)
    }

    /// The next record in event-time order, its original line appended to `out` (for sending it
    /// on unchanged: no allocation per line).
    pub fn next_line_into(&mut self, out: &mut Vec<u8>) -> std::io::Result<Option<Record>> {
        let Some(i) = self.next_file() else {
            return Ok(None);
        };
        let rec = self.pending[i].take();
        let f = &self.files[i];
        out.extend_from_slice(&f.buf[..f.line_len]);
        self.refill(i)?;
        Ok(rec)
    }

    /// Takes the bad lines met so far.
    pub fn take_bad(&mut self) -> Vec<BadLine> {
        std::mem::take(&mut self.bad)
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let mut end = b.len();
    while end > 0 && (b[end - 1] == b'\n' || b[end - 1] == b'\r' || b[end - 1] == b' ') {
        end -= 1;
    }
    &b[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LbsConfig;
    use crate::ingest::pseudonym::Pseudonymiser;
    use crate::ingest::sources::Sources;
    use crate::scenario::registry::Registry;
    use h3o::Resolution;
    use std::sync::Arc;

    fn parser() -> Parser {
        Parser::new(
            Arc::new(Registry::default()),
            Pseudonymiser::new("test-key"),
            Arc::new(Sources::new(&LbsConfig::default())),
            Resolution::Eleven,
            100.0,
            i64::MAX / 4,
        )
    }

    fn ping(ts: i64, device: &str) -> String {
        format!(r#"{{"kind":"lbs","ts":{ts},"device":"{device}","lat":31.2405,"lng":121.4832}}"#)
    }

    fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        p
    }

    #[test]
    fn files_are_merged_by_event_time_and_each_record_keeps_its_own_line() {
        let dir = std::env::temp_dir().join(format!("throng-replay-merge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t0 = 1_767_196_800_000i64;
        let a: Vec<String> = (0..50).map(|i| ping(t0 + i * 2_000, "a")).collect();
        let mut b: Vec<String> = (0..50).map(|i| ping(t0 + i * 2_000 + 1_000, "b")).collect();
        b.insert(10, "{not json".into());
        let (pa, pb) = (write(&dir, "a.ndjson", &a), write(&dir, "b.ndjson", &b));

        // Two files: one stream in time order, each record with the line it came from.
        let mut r = Replay::open(&[pa.clone(), pb], parser(), 1 << 16).unwrap();
        let mut got = Vec::new();
        let mut line = Vec::new();
        while let Some(rec) = r.next_line_into(&mut line).unwrap() {
            got.push((
                rec.ts.millis(),
                String::from_utf8(std::mem::take(&mut line)).unwrap(),
            ));
        }
        assert_eq!(got.len(), 100);
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "in event-time order");
        for (ts, line) in &got {
            assert!(
                line.contains(&format!("\"ts\":{ts}")),
                "{line} is not the line of {ts}"
            );
        }
        let bad = r.take_bad();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, 11);

        // One file, read as records only (no line kept): the file's own order, every record.
        let mut r = Replay::open(&[pa], parser(), 1 << 16).unwrap();
        let mut ts = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            ts.push(rec.ts.millis());
        }
        assert_eq!(ts, (0..50).map(|i| t0 + i * 2_000).collect::<Vec<_>>());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
