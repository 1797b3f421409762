//! The log's binary entry format. Each entry is one frame:
//!
//! ```text
//! len: u32 LE | crc32(payload): u32 LE | payload (len bytes)
//! payload = 1 (batch) | at: i64 | sources delta | n: u32 | n records
//!         | 2 (tick)  | at: i64
//! sources delta = 0 | 1, from: u32, count: u32, count × (len: u16, UTF-8 name)
//! ```
//!
//! Records are fixed-width little-endian fields (a ping is 39 bytes against ~180 as a JSON line),
//! so encoding is a few stores and decoding needs no parser. A frame is written whole or cut back
//! (`Wal::write_buf`), so only a crash mid-write leaves a short or corrupt frame, and only at the
//! end of the newest segment: the reader stops there and reports it as torn.
//!
//! `throng wal dump` turns a log back into NDJSON for a person.

use thiserror::Error;

use crate::model::{
    Body, CellId, DeviceId, EventTime, PointIdx, Position, Record, RegisterKey, SensorIdx, SourceId,
};

/// Bytes before a frame's payload.
pub const HEADER: usize = 8;

const BATCH: u8 = 1;
const TICK: u8 = 2;

/// One decoded entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// Records accepted together at processing time `at`, with source names registered since
    /// the last batch (ids `from`, `from + 1`, …).
    Batch {
        /// Processing time of acceptance (ms).
        at: i64,
        /// New source names: (first id, names).
        sources: Option<(usize, Vec<String>)>,
        /// The records.
        records: Vec<Record>,
    },
    /// The engine moved on with processing time alone.
    Tick(i64),
}

/// Why the rest of a segment cannot be read.
#[derive(Debug, Error, PartialEq)]
pub enum FrameError {
    /// Fewer bytes left than the frame says: a write cut short.
    #[error("a frame of {need} bytes with only {have} left (a write cut short)")]
    Short {
        /// Bytes the frame needs.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// The payload does not match its checksum.
    #[error("checksum mismatch")]
    Checksum,
    /// The payload is not a known entry.
    #[error("unreadable entry: {0}")]
    Malformed(&'static str),
}

/// Appends a batch frame to `out`.
pub fn encode_batch(out: &mut Vec<u8>, at: i64, sources: Option<(usize, &[String])>, records: &[Record]) {
    let start = begin(out);
    out.push(BATCH);
    out.extend_from_slice(&at.to_le_bytes());
    match sources {
        None => out.push(0),
        Some((from, names)) => {
            out.push(1);
            out.extend_from_slice(&(from as u32).to_le_bytes());
            out.extend_from_slice(&(names.len() as u32).to_le_bytes());
            for n in names {
                // Names are short; a longer one is cut at a character boundary, so it stays UTF-8.
                let mut end = n.len().min(u16::MAX as usize);
                while !n.is_char_boundary(end) {
                    end -= 1;
                }
                let b = &n.as_bytes()[..end];
                out.extend_from_slice(&(b.len() as u16).to_le_bytes());
                out.extend_from_slice(b);
            }
        }
    }
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        record(out, r);
    }
    finish(out, start);
}

/// Appends a tick frame to `out`.
pub fn encode_tick(out: &mut Vec<u8>, at: i64) {
    let start = begin(out);
    out.push(TICK);
    out.extend_from_slice(&at.to_le_bytes());
    finish(out, start);
}

fn begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    start
}

fn finish(out: &mut [u8], start: usize) {
    let payload = &out[start + HEADER..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn opt_u32(out: &mut Vec<u8>, v: Option<u32>) {
    match v {
        Some(x) => {
            out.push(1);
            out.extend_from_slice(&x.to_le_bytes());
        }
        None => out.push(0),
    }
}

fn record(out: &mut Vec<u8>, r: &Record) {
    out.extend_from_slice(&r.ts.0.to_le_bytes());
    out.extend_from_slice(&r.source.0.to_le_bytes());
    out.extend_from_slice(&r.cell.0.to_le_bytes());
    opt_u32(out, r.point.map(|p| p.0));
    match &r.body {
        Body::Ping { device, pos } => {
            out.push(0);
            out.extend_from_slice(&device.0.to_le_bytes());
            match pos {
                None => out.push(0),
                Some(p) => {
                    out.push(if p.accuracy_dm.is_some() { 2 } else { 1 });
                    out.extend_from_slice(&p.lat_e6.to_le_bytes());
                    out.extend_from_slice(&p.lng_e6.to_le_bytes());
                    if let Some(a) = p.accuracy_dm {
                        out.extend_from_slice(&a.to_le_bytes());
                    }
                }
            }
        }
        Body::CounterInterval {
            inn,
            out: o,
            period_ms,
        } => {
            out.push(1);
            out.extend_from_slice(&inn.to_le_bytes());
            out.extend_from_slice(&o.to_le_bytes());
            opt_u32(out, *period_ms);
        }
        Body::CounterCumulative {
            register,
            in_total,
            out_total,
        } => {
            out.push(2);
            out.extend_from_slice(&register.0.to_le_bytes());
            out.extend_from_slice(&in_total.to_le_bytes());
            out.extend_from_slice(&out_total.to_le_bytes());
        }
        Body::Occupancy { sensor, people } => {
            out.push(3);
            out.extend_from_slice(&sensor.0.to_le_bytes());
            out.extend_from_slice(&people.to_le_bytes());
        }
        Body::GateInterval {
            entries,
            exits,
            period_ms,
        } => {
            out.push(4);
            out.extend_from_slice(&entries.to_le_bytes());
            out.extend_from_slice(&exits.to_le_bytes());
            opt_u32(out, *period_ms);
        }
        Body::GateTap { exit, seq } => {
            out.push(5);
            out.push(*exit as u8);
            match seq {
                Some(s) => {
                    out.push(1);
                    out.extend_from_slice(&s.to_le_bytes());
                }
                None => out.push(0),
            }
        }
        Body::GateCumulative {
            register,
            entries_total,
            exits_total,
        } => {
            out.push(6);
            out.extend_from_slice(&register.0.to_le_bytes());
            out.extend_from_slice(&entries_total.to_le_bytes());
            out.extend_from_slice(&exits_total.to_le_bytes());
        }
    }
}

/// Reads the frames of a segment in order. Ends at the end of `bytes` or at the first frame that
/// cannot be read (returned once as an error, with the offset it starts at; nothing after it is
/// read).
pub struct Frames<'a> {
    bytes: &'a [u8],
    at: usize,
    done: bool,
}

impl<'a> Frames<'a> {
    /// Frames of a whole segment file.
    pub fn new(bytes: &'a [u8]) -> Frames<'a> {
        Frames {
            bytes,
            at: 0,
            done: false,
        }
    }
}

impl Iterator for Frames<'_> {
    type Item = Result<Entry, (usize, FrameError)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.at >= self.bytes.len() {
            return None;
        }
        let start = self.at;
        let rest = &self.bytes[start..];
        let fail = |s: &mut Self, e| {
            s.done = true;
            Some(Err((start, e)))
        };
        if rest.len() < HEADER {
            return fail(
                self,
                FrameError::Short {
                    need: HEADER,
                    have: rest.len(),
                },
            );
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if rest.len() - HEADER < len {
            return fail(
                self,
                FrameError::Short {
                    need: HEADER + len,
                    have: rest.len(),
                },
            );
        }
        let payload = &rest[HEADER..HEADER + len];
        if crc32fast::hash(payload) != crc {
            return fail(self, FrameError::Checksum);
        }
        match entry(payload) {
            Ok(e) => {
                self.at = start + HEADER + len;
                Some(Ok(e))
            }
            Err(e) => fail(self, FrameError::Malformed(e)),
        }
    }
}

/// A cursor over a payload; every read says what it was reading when the bytes ran out.
struct Cur<'a> {
    b: &'a [u8],
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], &'static str> {
        if self.b.len() < n {
            return Err(what);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, &'static str> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, &'static str> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, &'static str> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, &'static str> {
        Ok(self.u32(what)? as i32)
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, &'static str> {
        let b = self.take(8, what)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, &'static str> {
        Ok(self.u64(what)? as i64)
    }
    fn opt_u32(&mut self, what: &'static str) -> Result<Option<u32>, &'static str> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => Ok(Some(self.u32(what)?)),
            _ => Err(what),
        }
    }
}

fn entry(payload: &[u8]) -> Result<Entry, &'static str> {
    let mut c = Cur { b: payload };
    match c.u8("entry type")? {
        TICK => Ok(Entry::Tick(c.i64("tick time")?)),
        BATCH => {
            let at = c.i64("batch time")?;
            let sources = match c.u8("sources flag")? {
                0 => None,
                1 => {
                    let from = c.u32("sources start")? as usize;
                    let n = c.u32("sources count")? as usize;
                    let mut names = Vec::with_capacity(n.min(1024));
                    for _ in 0..n {
                        let len = c.u16("source name length")? as usize;
                        let b = c.take(len, "source name")?;
                        names.push(std::str::from_utf8(b).map_err(|_| "source name")?.to_owned());
                    }
                    Some((from, names))
                }
                _ => return Err("sources flag"),
            };
            let n = c.u32("record count")? as usize;
            // Never trust a count for an allocation beyond what the payload could hold.
            let mut records = Vec::with_capacity(n.min(c.b.len() / 24 + 1));
            for _ in 0..n {
                records.push(read_record(&mut c)?);
            }
            if !c.b.is_empty() {
                return Err("bytes after the last record");
            }
            Ok(Entry::Batch { at, sources, records })
        }
        _ => Err("entry type"),
    }
}

fn read_record(c: &mut Cur<'_>) -> Result<Record, &'static str> {
    let ts = EventTime(c.i64("record time")?);
    let source = SourceId(c.u16("record source")?);
    let cell = CellId(c.u64("record cell")?);
    let point = c.opt_u32("record point")?.map(PointIdx);
    let body = match c.u8("record kind")? {
        0 => {
            let device = DeviceId(c.u64("ping device")?);
            let pos = match c.u8("ping position flag")? {
                0 => None,
                f @ (1 | 2) => Some(Position {
                    lat_e6: c.i32("ping latitude")?,
                    lng_e6: c.i32("ping longitude")?,
                    accuracy_dm: if f == 2 {
                        Some(c.u16("ping accuracy")?)
                    } else {
                        None
                    },
                }),
                _ => return Err("ping position flag"),
            };
            Body::Ping { device, pos }
        }
        1 => Body::CounterInterval {
            inn: c.u32("counter in")?,
            out: c.u32("counter out")?,
            period_ms: c.opt_u32("counter period")?,
        },
        2 => Body::CounterCumulative {
            register: RegisterKey(c.u64("counter register")?),
            in_total: c.u64("counter in total")?,
            out_total: c.u64("counter out total")?,
        },
        3 => Body::Occupancy {
            sensor: SensorIdx(c.u32("occupancy sensor")?),
            people: c.u32("occupancy people")?,
        },
        4 => Body::GateInterval {
            entries: c.u32("gate entries")?,
            exits: c.u32("gate exits")?,
            period_ms: c.opt_u32("gate period")?,
        },
        5 => {
            let exit = match c.u8("tap direction")? {
                0 => false,
                1 => true,
                _ => return Err("tap direction"),
            };
            let seq = match c.u8("tap sequence flag")? {
                0 => None,
                1 => Some(c.u64("tap sequence")?),
                _ => return Err("tap sequence flag"),
            };
            Body::GateTap { exit, seq }
        }
        6 => Body::GateCumulative {
            register: RegisterKey(c.u64("gate register")?),
            entries_total: c.u64("gate entries total")?,
            exits_total: c.u64("gate exits total")?,
        },
        _ => return Err("record kind"),
    };
    Ok(Record {
        ts,
        source,
        cell,
        point,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Record> {
        let base = |body| Record {
            ts: EventTime(1_767_196_800_123),
            source: SourceId(3),
            cell: CellId(0x08b3_0995_8ac3_6fff),
            point: None,
            body,
        };
        let mut v = vec![
            base(Body::Ping {
                device: DeviceId(u64::MAX - 7),
                pos: Some(Position {
                    lat_e6: 31_240_500,
                    lng_e6: 121_483_200,
                    accuracy_dm: Some(125),
                }),
            }),
            base(Body::Ping {
                device: DeviceId(1),
                pos: Some(Position {
                    lat_e6: -33_000_000,
                    lng_e6: -70_000_000,
                    accuracy_dm: None,
                }),
            }),
            base(Body::Ping {
                device: DeviceId(2),
                pos: None,
            }),
            base(Body::CounterInterval {
                inn: 4,
                out: 5,
                period_ms: Some(60_000),
            }),
            base(Body::CounterCumulative {
                register: RegisterKey(9),
                in_total: 1 << 40,
                out_total: 3,
            }),
            base(Body::Occupancy {
                sensor: SensorIdx(7),
                people: 812,
            }),
            base(Body::GateInterval {
                entries: 1,
                exits: 2,
                period_ms: None,
            }),
            base(Body::GateTap {
                exit: true,
                seq: Some(77),
            }),
            base(Body::GateTap {
                exit: false,
                seq: None,
            }),
            base(Body::GateCumulative {
                register: RegisterKey(11),
                entries_total: 100,
                exits_total: 99,
            }),
        ];
        v[3].point = Some(PointIdx(12));
        v
    }

    #[test]
    fn every_record_kind_comes_back_as_it_went_in() {
        let recs = every_kind();
        let names = vec!["lbs/carrier-a".to_string(), "lbs/运营商".to_string()];
        let mut buf = Vec::new();
        encode_batch(&mut buf, 42, Some((3, &names)), &recs);
        encode_tick(&mut buf, 43);
        encode_batch(&mut buf, 44, None, &[]);
        let got: Vec<Entry> = Frames::new(&buf).map(|f| f.unwrap()).collect();
        assert_eq!(
            got,
            vec![
                Entry::Batch {
                    at: 42,
                    sources: Some((3, names)),
                    records: recs
                },
                Entry::Tick(43),
                Entry::Batch {
                    at: 44,
                    sources: None,
                    records: vec![]
                },
            ]
        );
    }

    #[test]
    fn a_ping_is_a_fifth_of_its_json_line() {
        let ping = every_kind().remove(0);
        let mut buf = Vec::new();
        encode_batch(&mut buf, 0, None, std::slice::from_ref(&ping));
        let one = buf.len();
        encode_batch(&mut buf, 0, None, &[ping.clone(), ping.clone()]);
        let per_record = buf.len() - 2 * one;
        let json = serde_json::to_vec(&ping).unwrap().len() + 1;
        assert_eq!(
            per_record, 39,
            "ts 8, source 2, cell 8, point 1, kind 1, device 8, position 11"
        );
        assert!(json >= 4 * per_record, "JSON {json} B against {per_record} B");
    }

    #[test]
    fn a_torn_or_corrupt_tail_stops_the_reader_and_says_where() {
        let mut buf = Vec::new();
        encode_batch(&mut buf, 1, None, &every_kind());
        let whole = buf.len();
        encode_tick(&mut buf, 2);
        // Every cut of the second frame is reported at its start; the first still reads.
        for cut in whole..buf.len() {
            let got: Vec<_> = Frames::new(&buf[..cut]).collect();
            assert!(got[0].is_ok());
            if cut > whole {
                assert!(
                    matches!(got[1], Err((at, FrameError::Short { .. })) if at == whole),
                    "{cut}"
                );
            } else {
                assert_eq!(got.len(), 1);
            }
        }
        // A flipped bit inside the first frame: nothing after it is trusted.
        let mut bad = buf.clone();
        bad[HEADER + 20] ^= 0x10;
        let got: Vec<_> = Frames::new(&bad).collect();
        assert_eq!(got, vec![Err((0, FrameError::Checksum))]);
    }

    #[test]
    fn a_payload_that_lies_about_its_count_is_refused_not_allocated() {
        let mut buf = Vec::new();
        encode_batch(&mut buf, 1, None, &[]);
        // Claim four billion records in an otherwise empty batch, with a valid checksum.
        let n = buf.len();
        buf[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32fast::hash(&buf[HEADER..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        let got: Vec<_> = Frames::new(&buf).collect();
        assert_eq!(got, vec![Err((0, FrameError::Malformed("record time")))]);
    }
}
