//! Fuzzing on stable Rust: a mutational and generative harness over every parser that reads
//! outside input. Each target is seeded from the repository's fixtures and real inputs, mutated
//! byte-wise (flips, interesting bytes and numbers, format tokens, deletions, duplications,
//! splices between seeds) and, for feed records, generated field by field. Every input runs
//! under `catch_unwind` and a clock: a panic or an input over 1 s is a finding, saved under
//! `target/fuzz-findings/` and named in the failure; each finding fixed becomes a case in
//! `regressions` below.
//!
//! `fuzz_smoke` (every run) puts a few thousand inputs through each target. The full run is
//! ignored by default: `FUZZ_INPUTS=10000000 cargo test --test it fuzz_every_parser -- --ignored
//! --nocapture` (inputs in total, shared between targets by their cost).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use throng::config::Config;
use throng::ingest::Parser;

use crate::support::{root, Rng};

/// An input still running after this is a hang: written out, and the run stops.
const HANG: Duration = Duration::from_secs(10);

/// Inputs on which pgwire's decoder panicked (contained by the server per connection).
static PG_CONTAINED: AtomicU64 = AtomicU64::new(0);

/// Feeds one input to a parser.
type Runner = Box<dyn Fn(&[u8]) + Sync>;

/// A target fed by mutation alone.
fn mutated(
    name: &'static str,
    weight: u64,
    seeds: Vec<Vec<u8>>,
    dict: &'static [&'static str],
    run: Runner,
) -> Target {
    Target {
        name,
        weight,
        seeds,
        dict,
        run,
        generate: None,
    }
}

/// One parser under test.
struct Target {
    name: &'static str,
    /// Relative cost: inputs are shared out in inverse proportion.
    weight: u64,
    seeds: Vec<Vec<u8>>,
    /// Tokens of the format, inserted whole.
    dict: &'static [&'static str],
    /// Feeds one input; panics are findings.
    run: Runner,
    /// Makes a fresh input from scratch (None: mutation only).
    generate: Option<fn(&mut Rng) -> Vec<u8>>,
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn text(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

const JSON_DICT: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "null",
    "true",
    "false",
    "-",
    "0",
    "1e309",
    "-1e309",
    "NaN",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "0.1e-400",
    "1.5",
    "-0",
    "\"\"",
    "{}",
    "[]",
    "\u{feff}",
    "\u{1F600}",
    "\n",
    "\r\n",
    " ",
];

const NDJSON_DICT: &[&str] = &[
    "\"kind\":",
    "\"lbs\"",
    "\"counter\"",
    "\"gate\"",
    "\"ts\":",
    "\"device\":",
    "\"lat\":",
    "\"lng\":",
    "\"accuracy_m\":",
    "\"source\":",
    "\"crs\":",
    "\"gcj02\"",
    "\"bd09\"",
    "\"wgs84\"",
    "\"sensor\":",
    "\"in\":",
    "\"out\":",
    "\"period_s\":",
    "\"in_total\":",
    "\"out_total\":",
    "\"occupancy\":",
    "\"station\":",
    "\"gate\":",
    "\"entries\":",
    "\"exits\":",
    "\"exit-3\"",
    "\"east-nanjing-road\"",
    "\"enr-xizang-cam\"",
    "\"2026-12-31T23:59:58.120+08:00\"",
    "1767193200000",
    "31.2405",
    "121.4832",
    "{",
    "}",
    ",",
    ":",
    "\"",
    "\\",
    "\\u00e9",
    "\\ud83d\\ude00",
    "null",
    "-1",
    "1e309",
    "9223372036854775807",
    "18446744073709551616",
    "1.5",
    "NaN",
    "\n",
];

const TOML_DICT: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "\"",
    "'",
    "\"\"\"",
    "\n",
    "#",
    "[window]",
    "[lbs]",
    "[privacy]",
    "[auth]",
    "[[auth.tokens]]",
    "[limits]",
    "[durability]",
    "[history]",
    "[h3]",
    "[sql]",
    "[tls]",
    "size",
    "slide",
    "allowed_lateness",
    "idle_timeout",
    "resolution",
    "k",
    "scale",
    "ping_interval",
    "\"10s\"",
    "\"0s\"",
    "\"-1s\"",
    "\"1h\"",
    "\"99999999999d\"",
    "\"1ms\"",
    "0",
    "-1",
    "16",
    "1e400",
    "nan",
    "inf",
    "true",
    "1979-05-27T07:32:00Z",
    "{ a = 1 }",
    "role = \"viewer\"",
    "token = \"x\"",
];

const GEOJSON_DICT: &[&str] = &[
    "\"FeatureCollection\"",
    "\"Feature\"",
    "\"Polygon\"",
    "\"MultiPolygon\"",
    "\"Point\"",
    "\"LineString\"",
    "\"coordinates\":",
    "\"geometry\":",
    "\"properties\":",
    "\"features\":",
    "\"type\":",
    "\"id\":",
    "\"walkable_fraction\":",
    "\"capacity\":",
    "[121.48,31.24]",
    "[[121.48,31.24],[121.49,31.24],[121.49,31.25],[121.48,31.24]]",
    "[-180,-90]",
    "[180,90]",
    "[0,0]",
    "[1e300,1e300]",
    "null",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "-",
    "0.5",
    "2",
];

const CSV_DICT: &[&str] = &[
    ",",
    "\"",
    "\"\"",
    "\n",
    "\r\n",
    "REGULAR",
    "RECOVR AUD",
    "DOOR OPEN",
    "09/19/2015",
    "00:00:00",
    "24:00:00",
    "13/45/2015",
    "-1",
    "99999999999999999999",
    "NaN",
    "R001",
    "A002",
    "02-00-00",
    "2015-09-19T00:00:00",
    "0",
    "39.984702",
    "116.318417",
    "-777",
    "2008-10-23",
    "02:53:04",
    "Sensor_ID",
    "Date_Time",
    "Hourly_Counts",
    "Time",
];

const SQL_DICT: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "hex_windows",
    "segment_windows",
    "late_records",
    "alerts",
    "(",
    ")",
    "*",
    ",",
    ";",
    "'",
    "\"",
    "--",
    "/*",
    "*/",
    "INSERT INTO t VALUES (1)",
    "DROP TABLE x",
    "COPY",
    "CREATE",
    "EXPLAIN",
    "WITH a AS (SELECT 1)",
    "UNION",
    "JOIN",
    "LIMIT 1",
    "ORDER BY",
    "CAST(",
    "AS BIGINT",
    "h3_to_parent(",
    "::",
    "$1",
    "E'\\x00'",
    "\u{0}",
    "SET",
    "RESET",
];

/// `{"kind":...}` lines made field by field: every kind, every field, values of every JSON type
/// and the edges of each, so validation is reached as often as syntax.
fn generate_record(rng: &mut Rng) -> Vec<u8> {
    let pick = |rng: &mut Rng, xs: &[&str]| xs[rng.below(xs.len() as u64) as usize].to_owned();
    let number = |rng: &mut Rng| -> String {
        match rng.below(8) {
            0 => pick(
                rng,
                &[
                    "0",
                    "-0",
                    "1e309",
                    "-1",
                    "9223372036854775807",
                    "18446744073709551616",
                    "1.0",
                    "0.000001",
                ],
            ),
            1 => format!("{}", rng.next() as i64),
            2 => format!("{:.6}", rng.range(-200.0, 200.0)),
            3 => format!("{}", 1_767_193_200_000i64 + rng.below(86_400_000) as i64),
            _ => format!("{}", rng.below(1000)),
        }
    };
    let string = |rng: &mut Rng| -> String {
        match rng.below(6) {
            0 => "\"\"".into(),
            1 => format!("\"{}\"", "x".repeat(rng.below(300) as usize)),
            2 => "\"a\\\"b\\\\c\\u00e9\\ud83d\\ude00\"".into(),
            3 => "\"2026-12-31T23:59:58.120+08:00\"".into(),
            _ => pick(
                rng,
                &[
                    "\"lbs\"",
                    "\"counter\"",
                    "\"gate\"",
                    "\"enr-xizang-cam\"",
                    "\"east-nanjing-road\"",
                    "\"exit-3\"",
                    "\"gcj02\"",
                    "\"carrier-a\"",
                ],
            ),
        }
    };
    let value = |rng: &mut Rng| -> String {
        match rng.below(10) {
            0 => "null".into(),
            1 => "true".into(),
            2 => "[1,2]".into(),
            3 => "{\"a\":1}".into(),
            4..=6 => number(rng),
            _ => string(rng),
        }
    };
    let fields = [
        "kind",
        "ts",
        "device",
        "lat",
        "lng",
        "accuracy_m",
        "source",
        "crs",
        "sensor",
        "in",
        "out",
        "period_s",
        "in_total",
        "out_total",
        "occupancy",
        "station",
        "gate",
        "entries",
        "exits",
        "extra",
    ];
    let kind = pick(rng, &["\"lbs\"", "\"counter\"", "\"gate\"", "\"bus\"", "1"]);
    let mut parts = vec![format!("\"kind\":{kind}")];
    for f in fields.iter().skip(1) {
        if rng.below(3) > 0 {
            parts.push(format!("\"{f}\":{}", value(rng)));
        }
    }
    // Shuffle a little: the scanner must not depend on key order.
    for i in (1..parts.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        parts.swap(i, j);
    }
    format!("{{{}}}", parts.join(",")).into_bytes()
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], dict: &[&str], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&seeds[rng.below(seeds.len() as u64) as usize]);
    for _ in 0..1 + rng.below(6) {
        let len = out.len();
        let at = if len == 0 {
            0
        } else {
            rng.below(len as u64 + 1) as usize
        };
        match rng.below(9) {
            0 if len > 0 => {
                let i = at.min(len - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = at.min(len - 1);
                out[i] = *[
                    0u8, 0xff, b'"', b'{', b'}', b'[', b']', b',', b':', b'\\', b'\n', b'-', b'.', b'e',
                    0x80, 0xc3,
                ]
                .get(rng.below(16) as usize)
                .unwrap_or(&0);
            }
            2 | 3 => {
                let t = dict[rng.below(dict.len() as u64) as usize].as_bytes();
                out.splice(at..at, t.iter().copied());
            }
            4 if len > 0 => {
                let end = (at + 1 + rng.below(32) as usize).min(len);
                out.drain(at.min(end)..end);
            }
            5 if len > 0 => {
                let end = (at + 1 + rng.below(64) as usize).min(len);
                let piece: Vec<u8> = out[at.min(end)..end].to_vec();
                for _ in 0..1 + rng.below(4) {
                    out.splice(at..at, piece.iter().copied());
                }
            }
            6 => {
                let other = &seeds[rng.below(seeds.len() as u64) as usize];
                if !other.is_empty() {
                    let a = rng.below(other.len() as u64) as usize;
                    let b = (a + 1 + rng.below(256) as usize).min(other.len());
                    out.splice(at..at, other[a..b].iter().copied());
                }
            }
            7 if len > 0 => out.truncate(at),
            _ => {
                // Replace a run of digits with an edge number.
                if let Some(i) = out.iter().skip(at).position(u8::is_ascii_digit).map(|i| i + at) {
                    let end = out[i..]
                        .iter()
                        .position(|b| !b.is_ascii_digit())
                        .map_or(out.len(), |e| e + i);
                    let n = [
                        "0",
                        "-1",
                        "1e309",
                        "99999999999999999999",
                        "0.0000000001",
                        "-0",
                        "NaN",
                    ][rng.below(7) as usize];
                    out.splice(i..end, n.bytes());
                }
            }
        }
        // Inputs past 1 MB say nothing new and only slow the run.
        out.truncate(1 << 20);
    }
}

fn targets() -> Vec<Target> {
    let cfg = Config {
        scenario: root().join("fixtures/bund"),
        ..Default::default()
    };
    let parser: Parser = throng::pipeline::Pipeline::from_config(&cfg)
        .expect("the Bund pipeline")
        .parser;
    let parser = std::sync::Arc::new(parser);
    let ndjson_seeds: Vec<Vec<u8>> = {
        let now = throng::model::now_ms();
        let mut v: Vec<Vec<u8>> = [
            format!("{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"a\",\"lat\":31.2405,\"lng\":121.4832}}"),
            r#"{"kind":"lbs","ts":"2026-12-31T23:59:58.120+08:00","device":"d\u00e9v","lat":31.2405,"lng":121.4832,"accuracy_m":12.5,"source":"carrier-a","crs":"gcj02"}"#.to_owned(),
            format!("{{\"kind\":\"counter\",\"ts\":{now},\"sensor\":\"enr-xizang-cam\",\"in\":3,\"out\":1,\"period_s\":10}}"),
            format!("{{\"kind\":\"counter\",\"ts\":{now},\"sensor\":\"enr-henan-cam\",\"in_total\":300,\"out_total\":120,\"occupancy\":40}}"),
            format!("{{\"kind\":\"gate\",\"ts\":{now},\"station\":\"east-nanjing-road\",\"gate\":\"exit-3\",\"entries\":12,\"exits\":30,\"period_s\":60}}"),
        ]
        .into_iter()
        .map(String::into_bytes)
        .collect();
        // The simulator's own output, a little of it.
        let mut rng = Rng(7);
        v.extend((0..20).map(|_| generate_record(&mut rng)));
        v
    };
    let body_seeds: Vec<Vec<u8>> = vec![ndjson_seeds.join(&b'\n'), ndjson_seeds[..3].join(&b"\r\n"[..])];
    let toml_seeds = vec![
        read("fixtures/bund/throng.toml"),
        b"scenario = \"fixtures/bund\"\n[window]\nsize = \"10s\"\nslide = \"10s\"\nallowed_lateness = \"1s\"\nidle_timeout = \"60s\"\n[privacy]\nk = 0\n[durability]\ncheckpoint_every = \"300ms\"\n".to_vec(),
        b"[[auth.tokens]]\nname = \"ana\"\nrole = \"analyst\"\ntoken = \"analyst-secret\"\n[limits]\nmax_connections = 10\n[lbs.sources.carrier-a]\nscale = 1.25\nping_interval = \"55s\"\n".to_vec(),
    ];
    let segments = read("fixtures/bund/segments.geojson");
    // One feature alone mutates into more distinct shapes per second than the whole file.
    let one_feature = {
        let v: serde_json::Value = serde_json::from_slice(&segments).unwrap();
        serde_json::json!({"type": "FeatureCollection", "features": [v["features"][0].clone()]})
            .to_string()
            .into_bytes()
    };
    let ground = read("fixtures/bund/ground.geojson");
    // Ground is cut out of segments by polygon boolean operations: mutated ground goes through
    // them against the Bund's own segments.
    let bund = std::sync::Arc::new(
        throng::scenario::SegmentMap::parse(
            &String::from_utf8_lossy(&segments),
            "segments.geojson",
            h3o::Resolution::Eleven,
        )
        .unwrap(),
    );
    let sensors = read("fixtures/bund/sensors.json");
    let stations = read("fixtures/bund/stations.json");
    let mta_units = read("fixtures/real/mta_turnstile/remote_unit_stations.json");
    let mta_csv: Vec<u8> = read("fixtures/real/mta_turnstile/turnstile_150919_hudsonyd.csv")
        .split(|b| *b == b'\n')
        .take(40)
        .collect::<Vec<_>>()
        .join(&b'\n');
    let plt = read("fixtures/real/geolife/000_20081023025304.plt")
        .split(|b| *b == b'\n')
        .take(60)
        .collect::<Vec<_>>()
        .join(&b'\n');
    let melbourne =
        b"Sensor_ID,Date_Time,Hourly_Counts\n1,2023-01-01T00:00:00,120\n2,2023-01-01T01:00:00,40\n".to_vec();
    let sptcc = b"2015-04-01 08:00:01,1234567,\xe4\xba\xba\xe6\xb0\x91\xe5\xb9\xbf\xe5\x9c\xba,\xe5\x9c\xb0\xe9\x93\x81,3.0,\n".to_vec();
    let units_table = throng::tools::import::mta::units(&text(&mta_units)).expect("unit table");
    let sptcc_stations: std::collections::HashMap<String, (String, f64, f64)> = [(
        "人民广场".to_owned(),
        ("people-square".to_owned(), 31.2325, 121.4751),
    )]
    .into_iter()
    .collect();
    let sql_seeds: Vec<Vec<u8>> = [
        "SELECT CAST(window_start AS BIGINT) AS w, h3, lbs_devices FROM hex_windows ORDER BY w, h3",
        "SELECT segment_id, max(density) FROM segment_windows WHERE tier = 'high' GROUP BY 1",
        "WITH a AS (SELECT * FROM late_records) SELECT count(*) FROM a; SELECT 1",
        "EXPLAIN SELECT h3_to_parent(h3, 9) FROM hex_windows LIMIT 5",
        "INSERT INTO hex_windows VALUES (1)",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let pg_seeds = pg_seeds();

    let p1 = parser.clone();
    let p2 = parser.clone();
    vec![
        Target {
            name: "ndjson record (scanner vs serde)",
            weight: 1,
            seeds: ndjson_seeds,
            dict: NDJSON_DICT,
            generate: Some(generate_record),
            run: Box::new(move |b| {
                let fast = p1.parse_line(b, Some(1_767_193_200_000));
                let slow = p1.parse_line_serde(b, Some(1_767_193_200_000));
                // The scanner is an optimisation: where it takes a line, serde must read the
                // same record; a line both refuse may be refused for different words.
                if let (Ok(f), s) = (&fast, &slow) {
                    assert_eq!(
                        Some(f),
                        s.as_ref().ok(),
                        "scanner and serde disagree on {:?}",
                        text(b)
                    );
                }
                if fast.is_err() {
                    assert!(slow.is_err(), "scanner refused what serde reads: {:?}", text(b));
                }
            }),
        },
        mutated(
            "ndjson body",
            4,
            body_seeds,
            NDJSON_DICT,
            Box::new(move |b| {
                let d = throng::ingest::decode(&p2, b, Some(1_767_193_200_000), 64 * 1024);
                assert!(d.records.len() + d.rejected.len() <= b.split(|c| *c == b'\n').count());
            }),
        ),
        mutated(
            "throng.toml",
            4,
            toml_seeds,
            TOML_DICT,
            Box::new(|b| {
                if let Ok(c) = Config::parse(&text(b)) {
                    let _ = c.validate();
                }
            }),
        ),
        mutated(
            "segments GeoJSON",
            40,
            vec![segments, one_feature],
            GEOJSON_DICT,
            Box::new(|b| {
                let _ = throng::scenario::SegmentMap::parse(
                    &text(b),
                    "segments.geojson",
                    h3o::Resolution::Eleven,
                );
            }),
        ),
        mutated(
            "ground GeoJSON",
            40,
            vec![ground],
            GEOJSON_DICT,
            Box::new(move |b| {
                let mut map = (*bund).clone();
                let _ = map.add_ground(&text(b), "ground.geojson");
            }),
        ),
        mutated(
            "sensor registry",
            4,
            vec![sensors],
            JSON_DICT,
            Box::new(|b| {
                let _ = throng::scenario::Registry::parse(Some(&text(b)), None, h3o::Resolution::Eleven);
            }),
        ),
        mutated(
            "station registry",
            4,
            vec![stations],
            JSON_DICT,
            Box::new(|b| {
                let _ = throng::scenario::Registry::parse(None, Some(&text(b)), h3o::Resolution::Eleven);
            }),
        ),
        mutated(
            "live subscription message",
            1,
            vec![
                br#"{"subscribe":{"res":13,"bbox":[121.47,31.23,121.50,31.25]}}"#.to_vec(),
                br#"{"subscribe":{"res":9}}"#.to_vec(),
            ],
            JSON_DICT,
            Box::new(|b| {
                let mut sub = throng::live::frames::Subscription {
                    res: 11,
                    bbox: [-180.0, -90.0, 180.0, 90.0],
                };
                if sub.update(&text(b), 11).is_ok() {
                    assert!(sub.res <= 11 && sub.bbox[0] < sub.bbox[2] && sub.bbox[1] < sub.bbox[3]);
                }
            }),
        ),
        mutated(
            "importer: MTA turnstile CSV and unit table",
            8,
            vec![mta_csv],
            CSV_DICT,
            Box::new(move |b| {
                let mut s = throng::tools::import::Summary::default();
                let _ = throng::tools::import::mta::import(b, &units_table, &mut Vec::new(), &mut s);
            }),
        ),
        mutated(
            "importer: MTA unit table",
            8,
            vec![mta_units],
            JSON_DICT,
            Box::new(|b| {
                let _ = throng::tools::import::mta::units(&text(b));
            }),
        ),
        mutated(
            "importer: GeoLife PLT",
            4,
            vec![plt],
            CSV_DICT,
            Box::new(|b| {
                let mut s = throng::tools::import::Summary::default();
                let _ = throng::tools::import::geolife::import(b, "000", &mut Vec::new(), &mut s);
            }),
        ),
        mutated(
            "importer: Melbourne pedestrian CSV",
            2,
            vec![melbourne],
            CSV_DICT,
            Box::new(|b| {
                let mut s = throng::tools::import::Summary::default();
                let _ = throng::tools::import::melbourne::import(b, &mut Vec::new(), &mut s);
            }),
        ),
        mutated(
            "importer: SPTCC card records",
            2,
            vec![sptcc],
            CSV_DICT,
            Box::new(move |b| {
                let mut s = throng::tools::import::Summary::default();
                let _ = throng::tools::import::sptcc::import(b, &sptcc_stations, &mut Vec::new(), &mut s);
            }),
        ),
        mutated(
            "SQL read-only check",
            4,
            sql_seeds,
            SQL_DICT,
            Box::new(|b| {
                let _ = throng::query::sql::check_read_only(&text(b));
            }),
        ),
        // pgwire's decoder panics on some malformed frames; the server catches that per
        // connection (`hostile::a_malformed_postgres_frame_costs_only_its_own_connection`),
        // so here such a panic is counted as contained, not failed.
        mutated(
            "PostgreSQL startup and query messages",
            1,
            pg_seeds,
            &[
                "\0",
                "user",
                "database",
                "options",
                "Q",
                "P",
                "B",
                "E",
                "S",
                "X",
                "p",
                "\u{4}\u{d2}\u{16}/",
                "\0\0\0\u{8}",
            ],
            Box::new(|b| {
                if catch_unwind(AssertUnwindSafe(|| decode_pg(b))).is_err() {
                    PG_CONTAINED.fetch_add(1, Ordering::Relaxed);
                }
            }),
        ),
    ]
}

/// Frames a client sends: a startup packet (protocol 3.0, user and database), then a password,
/// a simple query and an extended-protocol parse/bind/execute/sync, and an SSL request.
fn pg_seeds() -> Vec<Vec<u8>> {
    let msg = |tag: u8, body: &[u8]| {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    };
    let mut startup_body = 196_608i32.to_be_bytes().to_vec();
    startup_body.extend_from_slice(b"user\0analyst\0database\0throng\0\0");
    let mut startup = ((startup_body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(&startup_body);
    let mut session = startup.clone();
    session.extend(msg(b'p', b"analyst-secret\0"));
    session.extend(msg(b'Q', b"SELECT count(*) FROM hex_windows\0"));
    session.extend(msg(b'P', b"\0SELECT $1\0\0\x01\0\0\0\x17"));
    session.extend(msg(b'B', b"\0\0\0\x01\0\0\0\x01\0\0\0\x011\0\0"));
    session.extend(msg(b'E', b"\0\0\0\0\0"));
    session.extend(msg(b'S', b""));
    let ssl = [0, 0, 0, 8, 4, 210, 22, 47].to_vec();
    vec![startup, session, ssl]
}

/// Decodes one connection's bytes as pgwire's server does: SSL negotiation or startup first,
/// then frontend messages until the bytes run out or one is malformed.
fn decode_pg(b: &[u8]) {
    use pgwire::messages::{DecodeContext, PgWireFrontendMessage, ProtocolVersion};
    let mut buf = bytes::BytesMut::from(b);
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    for _ in 0..64 {
        let before = buf.len();
        match PgWireFrontendMessage::decode(&mut buf, &ctx) {
            Ok(Some(m)) => {
                if ctx.awaiting_frontend_ssl {
                    ctx.awaiting_frontend_ssl = false;
                } else if ctx.awaiting_frontend_startup {
                    ctx.awaiting_frontend_startup = false;
                }
                // A message that consumed nothing is the state change above; anything else
                // that consumes nothing would loop a server forever.
                if buf.len() == before && !matches!(m, PgWireFrontendMessage::SslNegotiation(_)) {
                    panic!("a message of 0 bytes decoded: {m:?}");
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// Puts `n` inputs through `t` on this thread; findings are returned (input, what happened).
/// What a worker is running now, for the watchdog: an input that never returns cannot report
/// itself.
type Current = Mutex<Option<(Instant, Vec<u8>)>>;

fn run_target(
    t: &Target,
    n: u64,
    seed: u64,
    slowest: &AtomicU64,
    current: &Current,
) -> Vec<(Vec<u8>, String)> {
    let mut rng = Rng(seed | 1);
    let mut input = Vec::new();
    let mut findings = Vec::new();
    for _ in 0..n {
        match t.generate {
            Some(g) if rng.below(3) == 0 => input = g(&mut rng),
            _ => mutate(&mut rng, &t.seeds, t.dict, &mut input),
        }
        let started = Instant::now();
        if let Ok(mut c) = current.lock() {
            match c.as_mut() {
                Some((at, buf)) => {
                    *at = started;
                    buf.clear();
                    buf.extend_from_slice(&input);
                }
                None => *c = Some((started, input.clone())),
            }
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| (t.run)(&input)));
        let took = started.elapsed();
        slowest.fetch_max(took.as_micros() as u64, Ordering::Relaxed);
        if let Err(p) = outcome {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            findings.push((input.clone(), format!("panic: {msg}")));
        } else if took > Duration::from_secs(1) {
            findings.push((input.clone(), format!("took {took:?}")));
        }
        if findings.len() >= 5 {
            break;
        }
    }
    findings
}

/// Runs `total` inputs over every target on every core; fails naming each finding.
fn fuzz(total: u64) {
    let targets = targets();
    let inverse: f64 = targets.iter().map(|t| 1.0 / t.weight as f64).sum();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let findings = Mutex::new(Vec::new());
    let started = Instant::now();
    let mut report = Vec::new();
    // Panics are caught and reported below; the default hook would print each one as it happens.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for t in &targets {
        let n = ((total as f64) * (1.0 / t.weight as f64) / inverse).ceil() as u64;
        let slowest = AtomicU64::new(0);
        let t0 = Instant::now();
        let currents: Vec<Current> = (0..threads).map(|_| Mutex::new(None)).collect();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            // The watchdog: an input still running after HANG is written out and the run ends
            // there, since a parser stuck in a loop never gives its thread back.
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    for c in &currents {
                        let stuck = c.lock().ok().and_then(|c| {
                            c.as_ref()
                                .filter(|(at, _)| at.elapsed() > HANG)
                                .map(|(_, i)| i.clone())
                        });
                        if let Some(input) = stuck {
                            let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-hang.bin");
                            let _ = std::fs::write(&path, &input);
                            eprintln!(
                                "fuzz: {} still running one input after {HANG:?}: {} ({} bytes): {:?}",
                                t.name,
                                path.display(),
                                input.len(),
                                text(&input[..input.len().min(300)])
                            );
                            std::process::exit(101);
                        }
                    }
                }
            });
            let workers: Vec<_> = (0..threads)
                .map(|k| {
                    let (findings, slowest, current) = (&findings, &slowest, &currents[k as usize]);
                    s.spawn(move || {
                        let f = run_target(
                            t,
                            n / threads + 1,
                            0x00f0_2201 + k * 7919 + t.name.len() as u64,
                            slowest,
                            current,
                        );
                        findings
                            .lock()
                            .unwrap()
                            .extend(f.into_iter().map(|(i, w)| (t.name, i, w)));
                    })
                })
                .collect();
            for w in workers {
                let _ = w.join();
            }
            done.store(true, Ordering::Relaxed);
        });
        report.push(format!(
            "{:45} {:>10} inputs  {:>7.1} s  slowest {:>8.1} ms",
            t.name,
            (n / threads + 1) * threads,
            t0.elapsed().as_secs_f64(),
            slowest.load(Ordering::Relaxed) as f64 / 1000.0
        ));
    }
    std::panic::set_hook(hook);
    let findings = findings.into_inner().unwrap();
    eprintln!(
        "fuzz: {} threads, {:.1} s in all; pgwire decoder panics contained: {}\n{}",
        threads,
        started.elapsed().as_secs_f64(),
        PG_CONTAINED.load(Ordering::Relaxed),
        report.join("\n")
    );
    if !findings.is_empty() {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-findings");
        let _ = std::fs::create_dir_all(&dir);
        let mut lines = Vec::new();
        for (i, (target, input, what)) in findings.iter().enumerate() {
            let path = dir.join(format!("{i:03}.bin"));
            let _ = std::fs::write(&path, input);
            lines.push(format!(
                "{target}: {what}\n  input {} ({} bytes): {:?}",
                path.display(),
                input.len(),
                text(&input[..input.len().min(300)])
            ));
        }
        panic!("{} findings:\n{}", findings.len(), lines.join("\n"));
    }
}

#[test]
fn fuzz_smoke_every_parser_survives_mutated_and_generated_input() {
    fuzz(30_000);
}

#[test]
#[ignore = "the full run: FUZZ_INPUTS=10000000 cargo test --test it fuzz_every_parser -- --ignored --nocapture"]
fn fuzz_every_parser() {
    let total = std::env::var("FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    fuzz(total);
}

/// Inputs the fuzzer once broke a parser with, kept so they never break one again.
#[test]
fn regressions() {
    let t = targets();
    for (name, input) in REGRESSIONS {
        let target = t
            .iter()
            .find(|t| t.name == *name)
            .unwrap_or_else(|| panic!("no target {name}"));
        let started = Instant::now();
        (target.run)(input);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{name}: {:?}",
            started.elapsed()
        );
    }
    let wide = throng::scenario::SegmentMap::parse(
        std::str::from_utf8(REGRESSIONS[0].1).unwrap(),
        "segments.geojson",
        h3o::Resolution::Eleven,
    );
    let e = match wide {
        Ok(_) => panic!("a segment spanning 123° was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("spans") && e.contains("lng, lat"), "{e}");
    let short = throng::scenario::SegmentMap::parse(
        std::str::from_utf8(REGRESSIONS[2].1).unwrap(),
        "segments.geojson",
        h3o::Resolution::Eleven,
    );
    let e = match short {
        Ok(_) => panic!("a position of one number was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("position 2 of ring 0 has 1 number"), "{e}");
}

/// (target, input) pairs found by the fuzzer.
const REGRESSIONS: &[(&str, &[u8])] = &[
    // A segment spanning 123° of longitude: tiling it at res 11 took 21 s before segments were
    // bounded in area and span.
    ("segments GeoJSON", br#"{"features":[{"geometry":{"coordinates":[[[-1.4754745,31.2390971],[121.4831746,31.2405971],[121.4852764,31.2409974],[121.4856834,31.2410485],[121.4857166,31.2408515],[121.4853236,31.2408026],[121.4832254,31.2404029],[121.4755255,31.2389029],[121.4754745,31.2390971]]],"type":"Polygon"},"properties":{"area_m2":21885,"capacity":30000,"effective_width_m":22,"id":"enr-xizang-henan","kind":"street","name":"x"},"type":"Feature"}],"type":"FeatureCollection"}"#),
    ("PostgreSQL startup and query messages", crate::hostile::MALFORMED_BIND),
    // A position of one number: geojson's conversion to geo indexed past it and panicked, so a
    // typo in segments.geojson took `throng serve` down at start instead of naming the feature.
    ("segments GeoJSON", br#"{"type":"FeatureCollection","features":[{"type":"Feature","geometry":{"type":"Polygon","coordinates":[[[121.4754745,31.2390971],[121.4831746,31.2405971],[121.48535],[121.4755255,31.2389029],[121.4754745,31.2390971]]]},"properties":{"id":"x","kind":"street","effective_width_m":10}}]}"#),
    // Nested function calls: the SQL parser backtracked for minutes (time doubling per level)
    // before queries were bounded at `query::sql::MAX_NESTING` levels.
    ("SQL read-only check", b"SELECT h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3_to_parent(h3, 9)))))))))))))))))))))))))) FROM hex_windows"),
];
