//! Recorded NDJSON files merged into one stream in event-time order.
//!
//! Order across files is by event time (a k-way merge on each file's next record); order within a
//! file is kept as recorded, so a record that was late in the recording stays late in the replay.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::Read;
use std::ops::Range;
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
    lines: Lines,
    line_no: u64,
    /// The pending record's line, trimmed, in `lines`' buffer.
    line: Range<usize>,
}

/// A file's lines read in large chunks and handed out in place: a line is parsed where it lies,
/// not copied out first (the copy and a `read_until` per line were ~3 % of a replay, issue 20).
/// A line longer than the limit is skipped as it streams past, never held whole.
struct Lines {
    reader: Box<dyn Read + Send>,
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
}

/// One line from `Lines::next`.
enum Line {
    /// In the buffer, without its newline.
    At(Range<usize>),
    /// Longer than the limit: skipped; its length.
    TooLong(usize),
}

/// Bytes read at a time.
const CHUNK: usize = 1 << 18;

impl Lines {
    fn new(reader: Box<dyn Read + Send>, chunk: usize) -> Lines {
        Lines {
            reader,
            buf: vec![0; chunk],
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// The next line (None at the end of the file); one of more than `max` bytes is skipped.
    fn next(&mut self, max: usize) -> std::io::Result<Option<Line>> {
        // Bytes of an over-long line already let go.
        let mut skipped = 0usize;
        loop {
            let unread = &self.buf[self.start..self.end];
            let found = memchr::memchr(b'\n', unread);
            if found.is_some() || (self.eof && !unread.is_empty()) {
                let len = found.unwrap_or(unread.len());
                let at = self.start..self.start + len;
                self.start = (at.end + 1).min(self.end);
                return Ok(Some(if skipped + len > max {
                    Line::TooLong(skipped + len)
                } else {
                    Line::At(at)
                }));
            }
            if self.eof {
                return Ok((skipped > 0).then_some(Line::TooLong(skipped)));
            }
            // No line end buffered: let go of an over-long line's start, keep a short one's.
            let pending = self.end - self.start;
            if skipped + pending > max {
                skipped += pending;
                self.start = self.end;
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            // A read a signal interrupted is tried again (as `BufRead::read_until` did).
            let n = match self.reader.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r?,
            };
            if n == 0 {
                self.eof = true;
            }
            self.end += n;
        }
    }

    fn get(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }
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
            let reader: Box<dyn Read + Send> = if p == Path::new("-") {
                Box::new(std::io::stdin())
            } else {
                let f = File::open(p)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
                Box::new(f)
            };
            files.push(FileFeed {
                path: p.clone(),
                lines: Lines::new(reader, CHUNK),
                line_no: 0,
                line: 0..0,
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
            // The limit is on the line as trimmed; a few trailing blanks more are read, not held.
            let at = match f.lines.next(self.max_line_bytes.saturating_add(2))? {
                None => return Ok(()),
                Some(Line::At(at)) => at,
                Some(Line::TooLong(len)) => {
                    f.line_no += 1;
                    self.bad.push(too_long(f, len, self.max_line_bytes));
                    continue;
                }
            };
            f.line_no += 1;
            let line = trim(f.lines.get(at.clone()));
            if line.is_empty() {
                continue;
            }
            if line.len() > self.max_line_bytes {
                self.bad.push(too_long(f, line.len(), self.max_line_bytes));
                continue;
            }
            match self.parser.parse_line(line, None) {
                Ok(rec) => {
                    f.line = at.start..at.start + line.len();
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
        out.extend_from_slice(f.lines.get(f.line.clone()));
        self.refill(i)?;
        Ok(rec)
    }

    /// Takes the bad lines met so far.
    pub fn take_bad(&mut self) -> Vec<BadLine> {
        std::mem::take(&mut self.bad)
    }
}

/// The bad line for one over the limit.
fn too_long(f: &FileFeed, len: usize, max: usize) -> BadLine {
    BadLine {
        file: f.path.clone(),
        line: f.line_no,
        reject: Reject {
            field: String::new(),
            reason: format!("line is {len} bytes, over the {max}-byte limit"),
            code: super::RejectCode::Value,
        },
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

    /// Every line `Lines` hands out of `text`, read `chunk` bytes at a time with limit `max`.
    fn lines(text: &[u8], chunk: usize, max: usize) -> Vec<Result<Vec<u8>, usize>> {
        let mut l = Lines::new(Box::new(std::io::Cursor::new(text.to_vec())), chunk);
        let mut out = Vec::new();
        while let Some(line) = l.next(max).unwrap() {
            out.push(match line {
                Line::At(r) => Ok(l.get(r).to_vec()),
                Line::TooLong(n) => Err(n),
            });
        }
        out
    }

    #[test]
    fn lines_read_in_chunks_are_the_files_lines_and_an_over_long_one_is_skipped_unheld() {
        let long = vec![b'x'; 10_000];
        let mut text = Vec::new();
        text.extend_from_slice(b"first\n\nthird\r\n");
        text.extend_from_slice(&long);
        text.extend_from_slice(b"\nafter the long one\n");
        text.extend_from_slice(&long[..150]);
        text.extend_from_slice(b"\nlast, no newline");
        for chunk in [1, 2, 7, 16, 64, 4096, CHUNK] {
            let got = lines(&text, chunk, 100);
            let want: Vec<Result<Vec<u8>, usize>> = vec![
                Ok(b"first".to_vec()),
                Ok(Vec::new()),
                Ok(b"third\r".to_vec()),
                Err(10_000),
                Ok(b"after the long one".to_vec()),
                Err(150),
                Ok(b"last, no newline".to_vec()),
            ];
            assert_eq!(got, want, "chunk {chunk}");
        }
        // Skipped as it streams: the buffer never grew to hold the 10,000-byte line.
        let mut l = Lines::new(Box::new(std::io::Cursor::new(text.clone())), 64);
        while l.next(100).unwrap().is_some() {}
        assert!(l.buf.len() <= 256, "{} bytes held", l.buf.len());
        // A line under the limit but over a chunk is held whole (the buffer grows for it).
        assert_eq!(lines(&long, 64, 20_000), vec![Ok(long.clone())]);
        assert!(lines(b"", 16, 100).is_empty());
        assert_eq!(lines(b"\n", 16, 100), vec![Ok(Vec::new())]);
    }

    #[test]
    fn a_read_a_signal_interrupted_is_tried_again() {
        struct Interrupting(bool, std::io::Cursor<Vec<u8>>);
        impl Read for Interrupting {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.0 = !self.0;
                if self.0 {
                    return Err(std::io::ErrorKind::Interrupted.into());
                }
                self.1.read(buf)
            }
        }
        let reader = Interrupting(false, std::io::Cursor::new(b"one\ntwo\n".to_vec()));
        let mut l = Lines::new(Box::new(reader), 2);
        let mut got = Vec::new();
        while let Some(Line::At(r)) = l.next(100).unwrap() {
            got.push(l.get(r).to_vec());
        }
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
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
