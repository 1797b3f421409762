//! The one loop from an NDJSON body to records, used by every transport (HTTP, WebSocket, MQTT,
//! the in-process simulator feed) and by offline pipelines: lines split on `\n` with a trailing
//! `\r` dropped, blank lines skipped, over-long lines refused before parsing, every other line
//! parsed alone. Line numbers are 1-based and count every line, blank ones too, so an operator can
//! find a refused line in the body they sent.

use serde::Serialize;

use super::parse::{Parser, Reject};
use crate::model::Record;

/// One refused line of a body.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LineReject {
    /// 1-based line number in the body.
    pub line: usize,
    /// What was wrong, naming the field.
    pub error: String,
}

/// What one body held.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Accepted records, in body order.
    pub records: Vec<Record>,
    /// Refused lines, in body order.
    pub rejected: Vec<LineReject>,
}

/// Why one line is not a record.
#[derive(Debug, Clone, PartialEq)]
pub enum LineError {
    /// Longer than `ingest.max_line_bytes`: not parsed at all.
    TooLong {
        /// The line's length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Parsed and refused.
    Rejected(Reject),
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineError::TooLong { bytes, max } => {
                write!(
                    f,
                    "line is {bytes} bytes, over the {max}-byte limit (ingest.max_line_bytes)"
                )
            }
            LineError::Rejected(r) => r.fmt(f),
        }
    }
}

/// Each non-blank line of `body` with its 1-based number.
pub fn lines(body: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    body.split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.strip_suffix(b"\r").unwrap_or(line)))
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
}

/// Reads one body line by line; `now_ms` is the server clock for the far-future check (`None`
/// offline). Calls `each` with every line's outcome, in order.
pub fn each_line(
    parser: &Parser,
    body: &[u8],
    now_ms: Option<i64>,
    max_line: usize,
    mut each: impl FnMut(usize, Result<Record, LineError>),
) {
    for (n, line) in lines(body) {
        if line.len() > max_line {
            each(
                n,
                Err(LineError::TooLong {
                    bytes: line.len(),
                    max: max_line,
                }),
            );
            continue;
        }
        match parser.parse_line(line, now_ms) {
            Ok(r) => each(n, Ok(r)),
            Err(e) => {
                metrics::counter!("throng_ingest_rejected_total", "reason" => e.code.as_str()).increment(1);
                each(n, Err(LineError::Rejected(e)));
            }
        }
    }
}

/// Reads a whole body into accepted records and refused lines.
pub fn decode(parser: &Parser, body: &[u8], now_ms: Option<i64>, max_line: usize) -> Decoded {
    let mut out = Decoded::default();
    each_line(parser, body, now_ms, max_line, |line, r| match r {
        Ok(rec) => out.records.push(rec),
        Err(e) => out.rejected.push(LineReject {
            line,
            error: e.to_string(),
        }),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_are_skipped_but_counted_and_crlf_is_accepted() {
        let body = b"a\r\n\n  \r\nb\nc";
        let got: Vec<(usize, &[u8])> = lines(body).collect();
        assert_eq!(got, vec![(1, &b"a"[..]), (4, &b"b"[..]), (5, &b"c"[..])]);
    }

    #[test]
    fn over_long_lines_are_refused_before_parsing() {
        let parser = Parser::new(
            std::sync::Arc::new(crate::scenario::Registry::default()),
            crate::ingest::Pseudonymiser::new("test-key"),
            std::sync::Arc::new(crate::ingest::Sources::new(&crate::config::LbsConfig::default())),
            h3o::Resolution::Eleven,
            100.0,
            300_000,
        );
        let long = format!("{{\"kind\":\"lbs\",\"pad\":\"{}\"}}", "x".repeat(200));
        let body = format!("{long}\nnot json\n");
        let d = decode(&parser, body.as_bytes(), None, 100);
        assert!(d.records.is_empty());
        assert_eq!(d.rejected.len(), 2);
        assert_eq!(d.rejected[0].line, 1);
        assert!(
            d.rejected[0].error.contains("over the 100-byte limit"),
            "{:?}",
            d.rejected
        );
        assert_eq!(d.rejected[1].line, 2);
    }
}
