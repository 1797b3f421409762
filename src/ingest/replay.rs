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
}

/// Merges several NDJSON files by event time.
pub struct Replay {
    parser: Parser,
    files: Vec<FileFeed>,
    heads: BinaryHeap<Reverse<(i64, usize, u64)>>,
    pending: Vec<Option<(Record, Vec<u8>)>>,
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
                    self.heads.push(Reverse((rec.ts.millis(), i, f.line_no)));
                    self.pending[i] = Some((rec, line.to_vec()));
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

    /// The next record in event-time order, or None at the end of every file.
    pub fn next_record(&mut self) -> std::io::Result<Option<Record>> {
        Ok(self.next_line()?.map(|(r, _)| r))
    }

    /// The next record and its original line, in event-time order (for sending it on unchanged).
    pub fn next_line(&mut self) -> std::io::Result<Option<(Record, Vec<u8>)>> {
        let Some(Reverse((_, i, _))) = self.heads.pop() else {
            return Ok(None);
        };
        let rec = self.pending[i].take();
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
