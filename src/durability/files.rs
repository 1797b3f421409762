//! The data dir's two ways of writing a file: replaced whole (`replace`: a temporary file, synced,
//! renamed over the old one, the directory synced — a crash leaves the old file or the new one,
//! never half of either) and grown by whole lines (`append_lines`). Every file throng keeps goes
//! through one of them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// The data dir's files, by what they hold (the history's Parquet folders are `history/`'s).
pub mod names {
    /// Tier changes, one JSON alert a line (the `alerts` table).
    pub const ALERTS: &str = "alerts.ndjson";
    /// Records that missed a closed window (the `late_records` table).
    pub const LATE_RECORDS: &str = "late-records.ndjson";
    /// Alert acknowledgements, one JSON line each (the `alert_acks` table).
    pub const ALERT_ACKS: &str = "alert-acks.ndjson";
    /// Organisers' threshold overrides.
    pub const THRESHOLDS: &str = "thresholds.json";
    /// Every threshold change (the `thresholds_audit` table).
    pub const THRESHOLDS_AUDIT: &str = "thresholds-audit.ndjson";
    /// The write-ahead log's folder.
    pub const WAL: &str = "wal";
    /// The engine checkpoint.
    pub const CHECKPOINT: &str = "checkpoint.json";
}

/// Buffer of a replaced file's writer: large enough that a checkpoint is not thousands of syscalls.
const REPLACE_BUFFER_BYTES: usize = 1 << 20;

/// Why `replace` failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError<E> {
    /// The caller's writing failed.
    #[error("{0}")]
    Write(E),
    /// The file system failed around it.
    #[error("{what} {path}: {source}", path = .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: std::path::PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl<E: std::fmt::Display> ReplaceError<E> {
    /// The same as an I/O error (for callers whose own errors are I/O errors).
    pub fn into_io(self) -> io::Error {
        match self {
            ReplaceError::Io { source, .. } => source,
            ReplaceError::Write(e) => io::Error::other(e.to_string()),
        }
    }
}

/// Replaces `path` atomically with what `write` writes (creating the parent folder if needed).
pub fn replace<T, E>(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<T, E>,
) -> Result<T, ReplaceError<E>> {
    let fail = |what: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| ReplaceError::Io {
            what,
            path: p,
            source,
        }
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(fail("creating", dir))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let file = File::create(&tmp).map_err(fail("creating", &tmp))?;
    let written = (|| {
        let mut w = BufWriter::with_capacity(REPLACE_BUFFER_BYTES, file);
        let out = write(&mut w).map_err(ReplaceError::Write)?;
        let file = w
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(fail("writing", &tmp))?;
        file.sync_all().map_err(fail("syncing", &tmp))?;
        fs::rename(&tmp, path).map_err(fail("renaming", &tmp))?;
        Ok(out)
    })();
    let out = match written {
        Ok(out) => out,
        Err(e) => {
            // A half-written temporary file would hold on to the space a full disk needs back.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // The rename is durable only once the directory entry is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail("syncing", dir))?;
    Ok(out)
}

/// Appends `buf` (whole lines) to `path`, creating it; with `sync`, durable when this returns.
pub fn append_lines(path: &Path, buf: &[u8], sync: bool) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    let len = f.metadata()?.len();
    let written = f
        .write_all(buf)
        .and_then(|()| if sync { f.sync_data() } else { Ok(()) });
    if written.is_err() {
        // A full disk lets a write go part way; cut it back so a retry appends whole lines only
        // (a torn tail would otherwise be read as a line of its own, or swallow the next one).
        let _ = f.set_len(len);
    }
    written
}

/// Counts the whole lines of an append-only file, first cutting a torn last line (a crash in the
/// middle of an append) so the next append starts on a line of its own. A missing file has none.
pub fn complete_lines(path: &Path) -> io::Result<u64> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if whole < bytes.len() {
        OpenOptions::new().write(true).open(path)?.set_len(whole as u64)?;
    }
    Ok(bytes[..whole].iter().filter(|b| **b == b'\n').count() as u64)
}

/// Serialises each item as one JSON line.
pub fn json_lines<'a, T: serde::Serialize + 'a>(items: impl IntoIterator<Item = &'a T>) -> Vec<u8> {
    let mut buf = Vec::new();
    for item in items {
        if serde_json::to_writer(&mut buf, item).is_ok() {
            buf.push(b'\n');
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_lines_counts_whole_lines_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.ndjson");
        assert_eq!(complete_lines(&p).unwrap(), 0);
        std::fs::write(&p, "{\"a\":1}\n{\"a\":2}\n{\"a\"").unwrap();
        assert_eq!(complete_lines(&p).unwrap(), 2);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\":1}\n{\"a\":2}\n");
    }

    #[test]
    fn replace_leaves_the_new_content_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/x.json");
        replace(&p, |w| w.write_all(b"one")).unwrap();
        replace(&p, |w| w.write_all(b"two")).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!dir.path().join("sub/x.json.tmp").exists());
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        replace(&p, |w| w.write_all(b"old")).unwrap();
        let r: Result<(), ReplaceError<&str>> = replace(&p, |w| {
            w.write_all(b"half").unwrap();
            Err("encoder failed")
        });
        assert!(matches!(r, Err(ReplaceError::Write("encoder failed"))));
        assert_eq!(fs::read(&p).unwrap(), b"old");
    }

    #[test]
    fn appends_grow_the_file_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.ndjson");
        append_lines(&p, &json_lines([&1, &2]), true).unwrap();
        append_lines(&p, &json_lines([&3]), false).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "1\n2\n3\n");
    }
}
