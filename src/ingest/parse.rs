//! Feed records (FEEDS.md) from JSON lines to validated, pseudonymised `Record`s.
//!
//! The fast path deserialises into a borrowed struct; only a line that fails is parsed again with
//! `serde_path_to_error` to name the offending field. Raw device strings end here: the record that
//! leaves this module carries only the keyed hash.

use std::fmt;
use std::sync::Arc;

use h3o::Resolution;

use super::crs::Crs;
use super::pseudonym::Pseudonymiser;
use super::raw::{Raw, Ts};
use super::sources::{Sources, COUNTER, GATE};
use crate::model::{Body, CellId, DeviceId, EventTime, Kind, Position, Record, RegisterKey};
use crate::scenario::registry::{Registry, SensorKind};

/// Earliest plausible event time (2000-01-01): anything before is almost surely seconds, not ms.
const MIN_TS_MS: i64 = 946_684_800_000;
/// Largest interval count or occupancy accepted from one report.
const MAX_COUNT: u64 = 1_000_000;
/// Longest device string accepted.
const MAX_DEVICE_BYTES: usize = 128;

/// Why a record was rejected: the field at fault (empty for the whole line) and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The field at fault, or empty when the line as a whole is bad.
    pub field: String,
    /// What was wrong, in words a feed operator can act on.
    pub reason: String,
    /// Low-cardinality class for metrics.
    pub code: RejectCode,
}

/// Classes of rejection, for metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectCode {
    /// Not JSON, or not an object.
    Syntax,
    /// A field has the wrong JSON type.
    Type,
    /// A required field is missing.
    Missing,
    /// A value is impossible (range, NaN, too long…).
    Value,
    /// Sensor or station not in the registry.
    Unregistered,
    /// Too far in the future.
    Future,
}

impl RejectCode {
    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectCode::Syntax => "syntax",
            RejectCode::Type => "type",
            RejectCode::Missing => "missing",
            RejectCode::Value => "value",
            RejectCode::Unregistered => "unregistered",
            RejectCode::Future => "future",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "field `{}`: {}", self.field, self.reason)
        }
    }
}

fn reject(field: &str, code: RejectCode, reason: impl Into<String>) -> Reject {
    Reject {
        field: field.into(),
        reason: reason.into(),
        code,
    }
}

fn missing(field: &str) -> Reject {
    reject(field, RejectCode::Missing, "required but missing")
}

/// Parses and validates feed records for one configuration.
#[derive(Debug, Clone)]
pub struct Parser {
    registry: Arc<Registry>,
    pseudo: Pseudonymiser,
    sources: Arc<Sources>,
    res: Resolution,
    max_accuracy_m: f64,
    max_future_ms: i64,
    /// Validate and read the time only (see `forward_only`).
    forward_only: bool,
}

impl Parser {
    /// A parser for the given registries, key, sources and resolution.
    pub fn new(
        registry: Arc<Registry>,
        pseudo: Pseudonymiser,
        sources: Arc<Sources>,
        res: Resolution,
        max_accuracy_m: f64,
        max_future_ms: i64,
    ) -> Parser {
        Parser {
            registry,
            pseudo,
            sources,
            res,
            max_accuracy_m,
            max_future_ms,
            forward_only: false,
        }
    }

    /// This parser for lines that are sent on unchanged (`replay --target`): every line is
    /// validated as before and its time read, but a ping is neither moved to WGS-84, indexed nor
    /// pseudonymised (its record has no cell, device or position) — the server does all of that
    /// again, and on one machine the sender's copy of that work took a core from the server.
    pub fn forward_only(mut self) -> Parser {
        self.forward_only = true;
        self
    }

    /// The source table records are interned in.
    pub fn sources(&self) -> &Arc<Sources> {
        &self.sources
    }

    /// Parses one line. `now_ms` is the server clock for the far-future check (`None` skips it, for
    /// offline replay of recorded or simulated feeds).
    pub fn parse_line(&self, line: &[u8], now_ms: Option<i64>) -> Result<Record, Reject> {
        // The common line takes the scanner; anything it is unsure of, serde_json.
        let mut raw = Raw::default();
        if !super::scan::raw(line, &mut raw) {
            raw = match serde_json::from_slice(line) {
                Ok(r) => r,
                Err(_) => return Err(explain(line)),
            };
        }
        self.validate(&raw, now_ms)
    }

    /// [`parse_line`](Parser::parse_line) through serde_json alone, without the scanner: what the
    /// fast path must agree with on every line (the fuzzer in `tests/it/fuzz.rs` checks it).
    pub fn parse_line_serde(&self, line: &[u8], now_ms: Option<i64>) -> Result<Record, Reject> {
        match serde_json::from_slice::<Raw>(line) {
            Ok(raw) => self.validate(&raw, now_ms),
            Err(_) => Err(explain(line)),
        }
    }

    fn validate(&self, raw: &Raw, now_ms: Option<i64>) -> Result<Record, Reject> {
        let kind = match raw.kind.as_deref() {
            None => return Err(missing("kind")),
            Some("lbs") => Kind::Lbs,
            Some("counter") => Kind::Counter,
            Some("gate") => Kind::Gate,
            Some(other) => {
                return Err(reject(
                    "kind",
                    RejectCode::Value,
                    format!(
                        "unknown kind {:?} (expected \"lbs\", \"counter\" or \"gate\")",
                        truncate(other)
                    ),
                ))
            }
        };
        let ts = match raw.ts {
            None => return Err(missing("ts")),
            Some(Ts(Err(why))) => return Err(reject("ts", RejectCode::Value, why)),
            Some(Ts(Ok(ms))) => ms,
        };
        if ts < MIN_TS_MS {
            return Err(reject(
                "ts",
                RejectCode::Value,
                format!("{ts} is before the year 2000: send milliseconds since the epoch, not seconds"),
            ));
        }
        if let Some(now) = now_ms {
            if ts > now.saturating_add(self.max_future_ms) {
                return Err(reject(
                    "ts",
                    RejectCode::Future,
                    format!(
                        "{} is {}s ahead of the server clock (limit {}s); check the sender's clock",
                        EventTime(ts),
                        (ts - now) / 1000,
                        self.max_future_ms / 1000
                    ),
                ));
            }
        }
        let ts = EventTime(ts);
        match kind {
            Kind::Lbs => self.lbs(raw, ts),
            Kind::Counter => self.counter(raw, ts),
            Kind::Gate => self.gate(raw, ts),
        }
    }

    fn lbs(&self, raw: &Raw, ts: EventTime) -> Result<Record, Reject> {
        let device = raw.device.as_deref().ok_or_else(|| missing("device"))?;
        if device.is_empty() {
            return Err(reject("device", RejectCode::Value, "must not be empty"));
        }
        if device.len() > MAX_DEVICE_BYTES {
            return Err(reject(
                "device",
                RejectCode::Value,
                format!("{} bytes long, at most {MAX_DEVICE_BYTES} allowed", device.len()),
            ));
        }
        let lat = raw.lat.ok_or_else(|| missing("lat"))?;
        let lng = raw.lng.ok_or_else(|| missing("lng"))?;
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(reject(
                "lat",
                RejectCode::Value,
                format!("{lat} is outside -90..90"),
            ));
        }
        if !lng.is_finite() || !(-180.0..=180.0).contains(&lng) {
            return Err(reject(
                "lng",
                RejectCode::Value,
                format!("{lng} is outside -180..180"),
            ));
        }
        if let Some(acc) = raw.accuracy_m {
            if !acc.is_finite() || acc < 0.0 {
                return Err(reject(
                    "accuracy_m",
                    RejectCode::Value,
                    format!("{acc} is not a distance"),
                ));
            }
            if acc > self.max_accuracy_m {
                return Err(reject(
                    "accuracy_m",
                    RejectCode::Value,
                    format!(
                        "{acc} m is worse than the accepted maximum of {} m",
                        self.max_accuracy_m
                    ),
                ));
            }
        }
        let crs = match raw.crs.as_deref() {
            None => Crs::Wgs84,
            Some(c) => Crs::parse(c).ok_or_else(|| {
                reject(
                    "crs",
                    RejectCode::Value,
                    format!("unknown {:?} (expected wgs84, gcj02 or bd09)", truncate(c)),
                )
            })?,
        };
        if self.forward_only {
            return Ok(Record {
                ts,
                source: self.sources.lbs(raw.source.as_deref()),
                cell: CellId::default(),
                point: None,
                body: Body::Ping {
                    device: DeviceId(0),
                    pos: None,
                },
            });
        }
        let (lat, lng) = crs.to_wgs84(lat, lng);
        let cell = super::cells::locate(lat, lng, self.res)
            .map_err(|e| reject("lat", RejectCode::Value, e.to_string()))?;
        let device = self.pseudo.pseudonym_at(device, ts.millis());
        let source = self.sources.lbs(raw.source.as_deref());
        Ok(Record {
            ts,
            source,
            cell: CellId::from(cell),
            point: None,
            body: Body::Ping {
                device,
                pos: Some(Position::new(lat, lng, raw.accuracy_m)),
            },
        })
    }

    fn counter(&self, raw: &Raw, ts: EventTime) -> Result<Record, Reject> {
        let id = raw.sensor.as_deref().ok_or_else(|| missing("sensor"))?;
        let (idx, sensor, cell, point) = self.registry.sensor(id).ok_or_else(|| {
            reject(
                "sensor",
                RejectCode::Unregistered,
                format!(
                    "unknown sensor {:?}: register it in the scenario's sensors.json",
                    truncate(id)
                ),
            )
        })?;
        let interval = raw.inn.is_some() || raw.out.is_some();
        let cumulative = raw.in_total.is_some() || raw.out_total.is_some();
        let occupancy = raw.occupancy.is_some();
        let shapes = [interval, cumulative, occupancy].iter().filter(|b| **b).count();
        if shapes > 1 {
            return Err(reject(
                "",
                RejectCode::Value,
                "mixes shapes: send either `in`/`out`, `in_total`/`out_total` or `occupancy`",
            ));
        }
        let body = if interval {
            Body::CounterInterval {
                inn: count("in", raw.inn)?,
                out: count("out", raw.out)?,
                period_ms: period(raw.period_s)?,
            }
        } else if cumulative {
            Body::CounterCumulative {
                register: RegisterKey(register_key(0, idx.0 as u64, "")),
                in_total: raw.in_total.ok_or_else(|| missing("in_total"))?,
                out_total: raw.out_total.ok_or_else(|| missing("out_total"))?,
            }
        } else if occupancy {
            if sensor.kind != SensorKind::Zone {
                return Err(reject(
                    "occupancy",
                    RejectCode::Value,
                    format!(
                        "sensor {:?} is a line counter, not a zone: it cannot report occupancy",
                        sensor.id
                    ),
                ));
            }
            Body::Occupancy {
                sensor: idx,
                people: count("occupancy", raw.occupancy)?,
            }
        } else {
            return Err(reject(
                "in",
                RejectCode::Missing,
                "no counts: expected `in`/`out`, `in_total`/`out_total` or `occupancy`",
            ));
        };
        Ok(Record {
            ts,
            source: COUNTER,
            cell,
            point: Some(point),
            body,
        })
    }

    fn gate(&self, raw: &Raw, ts: EventTime) -> Result<Record, Reject> {
        let id = raw.station.as_deref().ok_or_else(|| missing("station"))?;
        let gate = raw.gate.as_deref();
        let (station, cell, point) = self.registry.station_gate_cell(id, gate).ok_or_else(|| {
            reject(
                "station",
                RejectCode::Unregistered,
                format!(
                    "unknown station {:?}: register it in the scenario's stations.json",
                    truncate(id)
                ),
            )
        })?;
        let interval = raw.entries.is_some() || raw.exits.is_some();
        let cumulative = raw.entries_total.is_some() || raw.exits_total.is_some();
        let tap = raw.dir.is_some();
        if [interval, cumulative, tap].iter().filter(|b| **b).count() > 1 {
            return Err(reject(
                "",
                RejectCode::Value,
                "mixes shapes: send either `entries`/`exits`, `entries_total`/`exits_total` or `dir`",
            ));
        }
        let body = if interval {
            Body::GateInterval {
                entries: count("entries", raw.entries)?,
                exits: count("exits", raw.exits)?,
                period_ms: period(raw.period_s)?,
            }
        } else if cumulative {
            let g = gate.ok_or_else(|| missing("gate"))?;
            Body::GateCumulative {
                register: RegisterKey(register_key(1, station as u64, g)),
                entries_total: raw.entries_total.ok_or_else(|| missing("entries_total"))?,
                exits_total: raw.exits_total.ok_or_else(|| missing("exits_total"))?,
            }
        } else if let Some(dir) = raw.dir.as_deref() {
            let exit = match dir {
                "in" | "entry" => false,
                "out" | "exit" => true,
                other => {
                    return Err(reject(
                        "dir",
                        RejectCode::Value,
                        format!("{:?} is neither \"in\" nor \"out\"", truncate(other)),
                    ))
                }
            };
            Body::GateTap { exit, seq: raw.seq }
        } else {
            return Err(reject(
                "entries",
                RejectCode::Missing,
                "no counts: expected `entries`/`exits`, `entries_total`/`exits_total` or a tap's `dir`",
            ));
        };
        Ok(Record {
            ts,
            source: GATE,
            cell,
            point,
            body,
        })
    }
}

fn count(field: &str, v: Option<u64>) -> Result<u32, Reject> {
    let v = v.unwrap_or(0);
    if v > MAX_COUNT {
        return Err(reject(
            field,
            RejectCode::Value,
            format!("{v} is implausibly large for one report"),
        ));
    }
    Ok(v as u32)
}

fn period(p: Option<f64>) -> Result<Option<u32>, Reject> {
    match p {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Some((s * 1000.0).round() as u32)),
        Some(s) => Err(reject(
            "period_s",
            RejectCode::Value,
            format!("{s} is not a period of 0–86400 s"),
        )),
    }
}

fn register_key(kind: u64, owner: u64, gate: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    (kind, owner, gate).hash(&mut h);
    h.finish()
}

fn truncate(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_string();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The slow path: say precisely what is wrong with a line the fast path refused.
fn explain(line: &[u8]) -> Reject {
    let text = match std::str::from_utf8(line) {
        Ok(t) => t,
        Err(e) => {
            return reject(
                "",
                RejectCode::Syntax,
                format!("not valid UTF-8 at byte {}", e.valid_up_to()),
            )
        }
    };
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return reject("", RejectCode::Syntax, format!("not valid JSON: {e}")),
    };
    if !value.is_object() {
        return reject(
            "",
            RejectCode::Syntax,
            "not a JSON object: each line must be one record {...}",
        );
    }
    let mut de = serde_json::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, Raw>(&mut de) {
        Ok(_) => reject("", RejectCode::Syntax, "could not be read"),
        Err(e) => {
            let field = e.path().to_string();
            let inner = e.into_inner().to_string();
            let reason = inner.split(" at line ").next().unwrap_or(&inner).to_string();
            reject(&field, RejectCode::Type, reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LbsConfig;
    use crate::scenario::registry::{Sensor, Station, StationExit};
    use h3o::LatLng;

    const NOW: i64 = 1_767_196_800_000; // 2025-12-31T16:00:00Z: New Year in Shanghai

    fn parser() -> Parser {
        let res = Resolution::Eleven;
        let mut reg = Registry::default();
        let sensor = |id: &str, kind| Sensor {
            id: id.into(),
            name: String::new(),
            lat: 31.2405,
            lng: 121.4832,
            segment: Some("enr".into()),
            kind,
            direction: None,
            period_s: Some(10.0),
            width_m: None,
        };
        reg.add_sensor(sensor("bund-cam-07", SensorKind::Line), res)
            .unwrap();
        reg.add_sensor(sensor("chenyi-zone", SensorKind::Zone), res)
            .unwrap();
        reg.add_station(
            Station {
                id: "east-nanjing-road".into(),
                name: String::new(),
                lines: vec!["2".into()],
                lat: 31.2383,
                lng: 121.4780,
                exits: vec![StationExit {
                    id: "exit-3".into(),
                    name: String::new(),
                    lat: 31.2390,
                    lng: 121.4800,
                    segment: None,
                }],
                period_s: None,
            },
            res,
        )
        .unwrap();
        Parser::new(
            Arc::new(reg),
            Pseudonymiser::new("test-key"),
            Arc::new(Sources::new(&LbsConfig::default())),
            res,
            100.0,
            300_000,
        )
    }

    fn ok(line: &str) -> Record {
        parser()
            .parse_line(line.as_bytes(), Some(NOW))
            .unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    fn err(line: &str) -> Reject {
        parser().parse_line(line.as_bytes(), Some(NOW)).expect_err(line)
    }

    #[test]
    fn a_forwarding_parser_accepts_and_refuses_exactly_the_lines_the_full_one_does() {
        let full = parser();
        let fwd = parser().forward_only();
        let lines = [
            r#"{"kind":"lbs","ts":1767196798120,"device":"a","lat":31.2405,"lng":121.4832,"accuracy_m":12}"#,
            r#"{"kind":"lbs","ts":1767196798120,"device":"a","lat":31.2405,"lng":121.4832,"crs":"gcj02","source":"carrier-b"}"#,
            r#"{"kind":"lbs","ts":"2025-12-31T23:59:58.120+08:00","device":"b","lat":31.24,"lng":121.49}"#,
            r#"{"kind":"lbs","ts":1767196798120,"device":"a","lat":91,"lng":121.4832}"#,
            r#"{"kind":"lbs","ts":1767196798120,"device":"a","lat":31.2,"lng":181}"#,
            r#"{"kind":"lbs","ts":1767196798120,"device":"","lat":31.2,"lng":121.4}"#,
            r#"{"kind":"lbs","ts":1767196798120,"lat":31.2,"lng":121.4}"#,
            r#"{"kind":"lbs","ts":1767196798120,"device":"a","lat":31.2,"lng":121.4,"crs":"utm"}"#,
            r#"{"kind":"lbs","ts":1767196798120,"device":"a","lat":31.2,"lng":121.4,"accuracy_m":1000}"#,
            r#"{"kind":"lbs","ts":1767196798120,"device":"a","lat":31.2,"lng":121.4,"accuracy_m":-1}"#,
            r#"{"kind":"lbs","ts":9999999999999,"device":"a","lat":31.2,"lng":121.4}"#,
            r#"{"kind":"counter","ts":1767196798120,"sensor":"bund-cam-07","in":3,"out":1}"#,
            r#"{"kind":"counter","ts":1767196798120,"sensor":"nobody","in":3,"out":1}"#,
            r#"{"kind":"gate","ts":1767196798120,"station":"east-nanjing-road","gate":"exit-3","entries":2,"exits":5}"#,
            r#"{"kind":"lbs","ts":1767196798120,"device":"a","lat":31.2"#,
            r#"not json"#,
        ];
        let mut refused = 0;
        for line in lines {
            let (a, b) = (
                full.parse_line(line.as_bytes(), Some(NOW)),
                fwd.parse_line(line.as_bytes(), Some(NOW)),
            );
            match (&a, &b) {
                (Ok(x), Ok(y)) => assert_eq!(
                    (x.ts, x.source, x.body.kind()),
                    (y.ts, y.source, y.body.kind()),
                    "{line}"
                ),
                (Err(x), Err(y)) => {
                    assert_eq!((&x.field, &x.reason), (&y.field, &y.reason), "{line}");
                    refused += 1;
                }
                _ => panic!("{line}: {a:?} vs {b:?}"),
            }
        }
        assert!(refused >= 10, "the bad lines are refused by both: {refused}");
    }

    #[test]
    fn lbs_ping_is_indexed_and_pseudonymised() {
        let r = ok(
            r#"{"kind":"lbs","ts":1767196798120,"device":"9f2c","lat":31.24053,"lng":121.48532,"accuracy_m":18,"source":"carrier-a"}"#,
        );
        let expect = LatLng::new(31.24053, 121.48532)
            .unwrap()
            .to_cell(Resolution::Eleven);
        assert_eq!(r.cell, CellId::from(expect));
        assert_eq!(r.ts, EventTime(1767196798120));
        assert_eq!(
            r.body,
            Body::Ping {
                device: Pseudonymiser::new("test-key").pseudonym("9f2c"),
                pos: Some(Position::new(31.24053, 121.48532, Some(18.0))),
            }
        );
        assert!(
            !format!("{r:?}").contains("9f2c"),
            "raw device must not survive parsing"
        );
    }

    #[test]
    fn rfc3339_and_epoch_ms_agree() {
        let a = ok(
            r#"{"kind":"lbs","ts":"2025-12-31T23:59:58.120+08:00","device":"d","lat":31.24,"lng":121.48}"#,
        );
        assert_eq!(a.ts, EventTime(1767196798120));
    }

    #[test]
    fn gcj02_and_bd09_points_are_moved_to_wgs84() {
        let (glat, glng) = crate::ingest::crs::wgs84_to_gcj02(31.2405, 121.4832);
        let g = ok(&format!(
            r#"{{"kind":"lbs","ts":1767196798120,"device":"d","lat":{glat},"lng":{glng},"crs":"gcj02"}}"#
        ));
        let w = ok(r#"{"kind":"lbs","ts":1767196798120,"device":"d","lat":31.2405,"lng":121.4832}"#);
        assert_eq!(g.cell, w.cell);
        let raw = ok(&format!(
            r#"{{"kind":"lbs","ts":1767196798120,"device":"d","lat":{glat},"lng":{glng}}}"#
        ));
        assert_ne!(
            raw.cell, w.cell,
            "an unconverted GCJ-02 point lands hundreds of metres away"
        );
    }

    #[test]
    fn counter_shapes() {
        let r = ok(
            r#"{"kind":"counter","ts":1767196800000,"sensor":"bund-cam-07","in":37,"out":12,"period_s":10}"#,
        );
        assert_eq!(
            r.body,
            Body::CounterInterval {
                inn: 37,
                out: 12,
                period_ms: Some(10_000)
            }
        );
        let r = ok(
            r#"{"kind":"counter","ts":1767196800000,"sensor":"bund-cam-07","in_total":103422,"out_total":99813}"#,
        );
        assert!(matches!(
            r.body,
            Body::CounterCumulative {
                in_total: 103422,
                out_total: 99813,
                ..
            }
        ));
        let r = ok(r#"{"kind":"counter","ts":1767196800000,"sensor":"chenyi-zone","occupancy":812}"#);
        assert!(matches!(r.body, Body::Occupancy { people: 812, .. }));
        assert_eq!(r.source, COUNTER);
    }

    #[test]
    fn gate_shapes() {
        let r = ok(
            r#"{"kind":"gate","ts":1767196800000,"station":"east-nanjing-road","gate":"exit-3","entries":0,"exits":57,"period_s":10}"#,
        );
        assert_eq!(
            r.body,
            Body::GateInterval {
                entries: 0,
                exits: 57,
                period_ms: Some(10_000)
            }
        );
        let tap = ok(
            r#"{"kind":"gate","ts":1767196800120,"station":"east-nanjing-road","gate":"G12","dir":"out"}"#,
        );
        assert_eq!(
            tap.body,
            Body::GateTap {
                exit: true,
                seq: None
            }
        );
        // A numbered tap: the scanner and serde read the number alike.
        let line = r#"{"kind":"gate","ts":1767196800120,"station":"east-nanjing-road","gate":"G12","dir":"out","seq":7}"#;
        let numbered = ok(line);
        assert_eq!(
            numbered.body,
            Body::GateTap {
                exit: true,
                seq: Some(7)
            }
        );
        assert_eq!(
            parser().parse_line_serde(line.as_bytes(), None).ok(),
            Some(numbered)
        );
        assert_ne!(
            r.cell, tap.cell,
            "exit-3 counts at its own location, G12 at the station's"
        );
        let r = ok(
            r#"{"kind":"gate","ts":1767196800000,"station":"east-nanjing-road","gate":"G12","entries_total":88213,"exits_total":90150}"#,
        );
        assert!(matches!(
            r.body,
            Body::GateCumulative {
                entries_total: 88213,
                exits_total: 90150,
                ..
            }
        ));
        assert_eq!(r.source, GATE);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        ok(
            r#"{"kind":"lbs","ts":1767196798120,"device":"d","lat":31.24,"lng":121.48,"speed":3.2,"extra":{"a":[1]}}"#,
        );
    }

    fn assert_reject(line: &str, field: &str, words: &str) {
        let e = err(line);
        assert_eq!(e.field, field, "{line}: {e}");
        assert!(e.to_string().contains(words), "{line}: {e}");
    }

    #[test]
    fn each_rejection_names_its_field() {
        let p = r#""kind":"lbs","device":"d""#;
        assert_reject(r#"{"ts":1767196798120}"#, "kind", "missing");
        assert_reject(r#"{"kind":"wifi","ts":1767196798120}"#, "kind", "unknown kind");
        assert_reject(&format!(r#"{{{p},"lat":31,"lng":121}}"#), "ts", "missing");
        assert_reject(
            &format!(r#"{{{p},"ts":1767196798,"lat":31,"lng":121}}"#),
            "ts",
            "not seconds",
        );
        assert_reject(
            &format!(r#"{{{p},"ts":"yesterday","lat":31,"lng":121}}"#),
            "ts",
            "RFC 3339",
        );
        assert_reject(
            &format!(r#"{{{p},"ts":1767197800000,"lat":31,"lng":121}}"#),
            "ts",
            "ahead of the server clock",
        );
        assert_reject(
            &format!(r#"{{{p},"ts":1767196798120,"lat":95,"lng":121}}"#),
            "lat",
            "outside -90..90",
        );
        assert_reject(
            &format!(r#"{{{p},"ts":1767196798120,"lat":31,"lng":-190}}"#),
            "lng",
            "outside -180..180",
        );
        assert_reject(
            &format!(r#"{{{p},"ts":1767196798120,"lng":121}}"#),
            "lat",
            "missing",
        );
        assert_reject(
            &format!(r#"{{{p},"ts":1767196798120,"lat":"31.2","lng":121}}"#),
            "lat",
            "invalid type",
        );
        assert_reject(
            &format!(r#"{{{p},"ts":1767196798120,"lat":31,"lng":121,"accuracy_m":900}}"#),
            "accuracy_m",
            "worse than",
        );
        assert_reject(
            &format!(r#"{{{p},"ts":1767196798120,"lat":31,"lng":121,"crs":"utm"}}"#),
            "crs",
            "unknown",
        );
        assert_reject(
            r#"{"kind":"lbs","ts":1767196798120,"lat":31,"lng":121}"#,
            "device",
            "missing",
        );
        let long = "x".repeat(200);
        assert_reject(
            &format!(r#"{{"kind":"lbs","device":"{long}","ts":1767196798120,"lat":31,"lng":121}}"#),
            "device",
            "at most 128",
        );
        assert_reject(
            r#"{"kind":"counter","ts":1767196800000,"sensor":"nope","in":1}"#,
            "sensor",
            "unknown sensor",
        );
        assert_reject(
            r#"{"kind":"counter","ts":1767196800000,"in":1}"#,
            "sensor",
            "missing",
        );
        assert_reject(
            r#"{"kind":"counter","ts":1767196800000,"sensor":"bund-cam-07","in":-3}"#,
            "in",
            "invalid value",
        );
        assert_reject(
            r#"{"kind":"counter","ts":1767196800000,"sensor":"bund-cam-07"}"#,
            "in",
            "no counts",
        );
        assert_reject(
            r#"{"kind":"counter","ts":1767196800000,"sensor":"bund-cam-07","in":1,"in_total":5}"#,
            "",
            "mixes shapes",
        );
        assert_reject(
            r#"{"kind":"counter","ts":1767196800000,"sensor":"bund-cam-07","in_total":5}"#,
            "out_total",
            "missing",
        );
        assert_reject(
            r#"{"kind":"counter","ts":1767196800000,"sensor":"bund-cam-07","occupancy":5}"#,
            "occupancy",
            "not a zone",
        );
        assert_reject(
            r#"{"kind":"counter","ts":1767196800000,"sensor":"bund-cam-07","in":1,"period_s":0}"#,
            "period_s",
            "not a period",
        );
        assert_reject(
            r#"{"kind":"counter","ts":1767196800000,"sensor":"bund-cam-07","in":5000000}"#,
            "in",
            "implausibly",
        );
        assert_reject(
            r#"{"kind":"gate","ts":1767196800000,"station":"nowhere","dir":"in"}"#,
            "station",
            "unknown station",
        );
        assert_reject(
            r#"{"kind":"gate","ts":1767196800000,"station":"east-nanjing-road","gate":"G1","dir":"up"}"#,
            "dir",
            "neither",
        );
        assert_reject(
            r#"{"kind":"gate","ts":1767196800000,"station":"east-nanjing-road","entries_total":1,"exits_total":2}"#,
            "gate",
            "missing",
        );
    }

    #[test]
    fn broken_lines_say_what_is_wrong() {
        assert!(err("{\"kind\":").reason.contains("not valid JSON"));
        assert!(err("[1,2]").reason.contains("not a JSON object"));
        let e = parser().parse_line(b"{\"kind\":\"lbs\xff\"}", None).unwrap_err();
        assert!(e.reason.contains("UTF-8"), "{e}");
        assert_eq!(e.code, RejectCode::Syntax);
    }

    #[test]
    fn far_future_check_can_be_skipped_for_offline_replay() {
        let line = br#"{"kind":"lbs","ts":1767197800000,"device":"d","lat":31,"lng":121}"#;
        assert!(parser().parse_line(line, None).is_ok());
    }
}
