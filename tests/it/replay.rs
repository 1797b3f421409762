//! `throng replay --print`: every closed-window row checked against counts computed here, independently.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use h3o::{LatLng, Resolution};
use serde_json::Value;

use crate::support::{throng, Rng};

const T0: i64 = 1_767_193_200_000; // 2025-12-31T23:00:00+08:00, a multiple of 60 s
const SIZE: i64 = 60_000;
const SLIDE: i64 = 10_000;

#[derive(Default, Debug, PartialEq, Clone)]
struct Expect {
    lbs_devices: u64,
    counter_in: u64,
    counter_out: u64,
    gate_entries: u64,
    gate_exits: u64,
}

enum Ev {
    Ping {
        ts: i64,
        dev: u32,
        cell: u64,
    },
    /// Flow counted at `at` (already shifted for interval shapes).
    Flow {
        at: i64,
        cell: u64,
        cin: u64,
        cout: u64,
        gin: u64,
        gout: u64,
    },
}

fn cell(lat: f64, lng: f64) -> u64 {
    u64::from(LatLng::new(lat, lng).unwrap().to_cell(Resolution::Eleven))
}

#[test]
fn replay_print_rows_match_an_independent_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut events = Vec::new();
    let mut pings = String::new();
    let mut ts = T0 + 3_000;
    // 3000 pings from 150 devices over ~5 minutes on East Nanjing Road, some in GCJ-02.
    for _ in 0..3000 {
        ts += rng.below(200) as i64;
        let dev = rng.below(150) as u32;
        let lat = rng.range(31.2398, 31.2412);
        let lng = rng.range(121.4800, 121.4880);
        let c = cell(lat, lng);
        if rng.below(4) == 0 {
            let (glat, glng) = throng::ingest::crs::wgs84_to_gcj02(lat, lng);
            writeln!(pings, r#"{{"kind":"lbs","ts":{ts},"device":"phone-{dev}","lat":{glat},"lng":{glng},"crs":"gcj02","source":"carrier-a"}}"#).unwrap();
        } else {
            writeln!(
                pings,
                r#"{{"kind":"lbs","ts":{ts},"device":"phone-{dev}","lat":{lat},"lng":{lng},"accuracy_m":12}}"#
            )
            .unwrap();
        }
        events.push(Ev::Ping { ts, dev, cell: c });
    }
    let end = ts;
    // A bad line in the middle must be reported, not stop the replay.
    pings.push_str("{\"kind\":\"lbs\",\"ts\":1767193300000,\"device\":\"x\",\"lat\":95,\"lng\":121.48}\n");

    // Counters and gates in a second file: interval counts every 10 s, a cumulative register with a
    // reset, and taps.
    let reg = throng::scenario::Registry::load_dir(
        &crate::support::root().join("fixtures/bund"),
        Resolution::Eleven,
    )
    .unwrap();
    let sensor_cell = |id: &str| {
        let s = reg.sensors().iter().find(|s| s.id == id).unwrap();
        cell(s.lat, s.lng)
    };
    let station = reg
        .stations()
        .iter()
        .find(|s| s.id == "east-nanjing-road")
        .unwrap();
    let enr = sensor_cell("enr-xizang-cam");
    let bund = sensor_cell("bund-cam-07");
    let x3 = station.exits.iter().find(|x| x.id == "exit-3").unwrap();
    let exit3 = cell(x3.lat, x3.lng);
    let station = cell(station.lat, station.lng);
    let mut feeds = String::new();
    let mut t = T0 + 10_000;
    let mut total = (100_000u64, 90_000u64);
    while t <= end {
        let (a, b) = (rng.below(40), rng.below(30));
        writeln!(
            feeds,
            r#"{{"kind":"counter","ts":{t},"sensor":"enr-xizang-cam","in":{a},"out":{b},"period_s":10}}"#
        )
        .unwrap();
        events.push(Ev::Flow {
            at: t - 1,
            cell: enr,
            cin: a,
            cout: b,
            gin: 0,
            gout: 0,
        });
        let reset = t == T0 + 120_000;
        let prev = total;
        total = if reset {
            (5, 2)
        } else {
            (total.0 + rng.below(50), total.1 + rng.below(50))
        };
        writeln!(
            feeds,
            r#"{{"kind":"counter","ts":{t},"sensor":"bund-cam-07","in_total":{},"out_total":{}}}"#,
            total.0, total.1
        )
        .unwrap();
        if t > T0 + 10_000 && !reset {
            events.push(Ev::Flow {
                at: t - 1,
                cell: bund,
                cin: total.0 - prev.0,
                cout: total.1 - prev.1,
                gin: 0,
                gout: 0,
            });
        }
        let exits = rng.below(60);
        writeln!(feeds, r#"{{"kind":"gate","ts":{t},"station":"east-nanjing-road","gate":"exit-3","entries":0,"exits":{exits},"period_s":10}}"#).unwrap();
        events.push(Ev::Flow {
            at: t - 1,
            cell: exit3,
            cin: 0,
            cout: 0,
            gin: 0,
            gout: exits,
        });
        let tap = t + 4_321;
        let out = rng.below(2) == 1;
        writeln!(
            feeds,
            r#"{{"kind":"gate","ts":{tap},"station":"east-nanjing-road","gate":"G12","dir":"{}"}}"#,
            if out { "out" } else { "in" }
        )
        .unwrap();
        events.push(Ev::Flow {
            at: tap,
            cell: station,
            cin: 0,
            cout: 0,
            gin: (!out) as u64,
            gout: out as u64,
        });
        t += 10_000;
    }
    let f1 = dir.path().join("pings.ndjson");
    let f2 = dir.path().join("feeds.ndjson");
    std::fs::write(&f1, pings).unwrap();
    std::fs::write(&f2, feeds).unwrap();

    // Independent count: every window [s, s+60 s) with s a multiple of 10 s.
    let mut expect: BTreeMap<(i64, u64), Expect> = BTreeMap::new();
    let max_at = events
        .iter()
        .map(|e| match e {
            Ev::Ping { ts, .. } => *ts,
            Ev::Flow { at, .. } => *at,
        })
        .max()
        .unwrap();
    let mut s = (T0 - SIZE).div_euclid(SLIDE) * SLIDE;
    while s <= max_at {
        let mut latest: HashMap<u32, (i64, u64)> = HashMap::new();
        for e in &events {
            match *e {
                Ev::Ping { ts, dev, cell } if ts >= s && ts < s + SIZE => {
                    let l = latest.entry(dev).or_insert((ts, cell));
                    if ts >= l.0 {
                        *l = (ts, cell);
                    }
                }
                Ev::Flow {
                    at,
                    cell,
                    cin,
                    cout,
                    gin,
                    gout,
                } if at >= s && at < s + SIZE => {
                    let x = expect.entry((s, cell)).or_default();
                    x.counter_in += cin;
                    x.counter_out += cout;
                    x.gate_entries += gin;
                    x.gate_exits += gout;
                }
                _ => {}
            }
        }
        for (_, (_, cell)) in latest {
            expect.entry((s, cell)).or_default().lbs_devices += 1;
        }
        s += SLIDE;
    }

    let out = throng(&[
        "replay",
        f1.to_str().unwrap(),
        f2.to_str().unwrap(),
        "--print",
        "--scenario",
        "fixtures/bund",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay failed: {stderr}");
    assert!(
        stderr.contains("pings.ndjson:3001") && stderr.contains("field `lat`"),
        "bad line reported with file:line: {stderr}"
    );

    let mut got: BTreeMap<(i64, u64), Expect> = BTreeMap::new();
    let mut last_start = i64::MIN;
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let start = v["window_start"].as_i64().unwrap();
        assert!(start >= last_start, "rows come in window order");
        last_start = start;
        assert_eq!(v["window_end"].as_i64().unwrap(), start + SIZE);
        let cell = v["cell"].as_u64().unwrap();
        assert_eq!(v["h3"].as_str().unwrap(), format!("{cell:x}"));
        assert_eq!(v["res"], 11);
        let row = Expect {
            lbs_devices: v["lbs_devices"].as_u64().unwrap(),
            counter_in: v["counter_in"].as_u64().unwrap(),
            counter_out: v["counter_out"].as_u64().unwrap(),
            gate_entries: v["gate_entries"].as_u64().unwrap(),
            gate_exits: v["gate_exits"].as_u64().unwrap(),
        };
        // Default scale is 1 person per device and no zone sensor reports here.
        assert_eq!(v["people"].as_f64().unwrap(), row.lbs_devices as f64);
        assert!(
            got.insert((start, cell), row).is_none(),
            "one row per window and cell"
        );
    }
    assert_eq!(got.len(), expect.len(), "same set of (window, cell) rows");
    for (k, e) in &expect {
        assert_eq!(got.get(k), Some(e), "window {} cell {:x}", k.0, k.1);
    }
}

#[test]
fn replay_without_a_destination_says_how_to_choose_one() {
    let out = throng(&["replay", "Cargo.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--print"));
}

#[test]
fn an_invalid_config_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("throng.toml");
    std::fs::write(&cfg, "[window]\nslide = \"7 parsecs\"\n").unwrap();
    let feed = dir.path().join("f.ndjson");
    std::fs::write(&feed, "").unwrap();
    let out = throng(&[
        "replay",
        feed.to_str().unwrap(),
        "--print",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("window.slide"), "{err}");
}

#[test]
fn late_records_are_counted_and_kept_in_the_late_file() {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("f.ndjson");
    let mut text = String::new();
    for i in 0..30 {
        let ts = T0 + i * 10_000;
        writeln!(
            text,
            r#"{{"kind":"lbs","ts":{ts},"device":"d{i}","lat":31.2405,"lng":121.4832,"source":"carrier-a"}}"#
        )
        .unwrap();
    }
    // Ten minutes behind the rest: every window it belongs to has closed.
    writeln!(
        text,
        r#"{{"kind":"lbs","ts":{},"device":"slow","lat":31.2405,"lng":121.4832,"source":"carrier-a"}}"#,
        T0 - 600_000
    )
    .unwrap();
    std::fs::write(&feed, text).unwrap();
    let late = dir.path().join("late.ndjson");
    let out = throng(&[
        "replay",
        feed.to_str().unwrap(),
        "--print",
        "--late",
        late.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("lbs/carrier-a") && stderr.contains("Late records"),
        "{stderr}"
    );
    let rows: Vec<Value> = std::fs::read_to_string(&late)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["ts"], T0 - 600_000);
    assert_eq!(rows[0]["source"], "lbs/carrier-a");
    assert_eq!(rows[0]["windows_missed"], 6);
}

#[test]
fn a_line_far_over_the_limit_is_reported_and_the_records_around_it_are_kept() {
    // 64 MB of one line between two pings: reported with its place and length, the pings on
    // either side counted. (That the line is never held whole is the unit test of `Lines`.)
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed.ndjson");
    let ping = |ts: i64, dev: &str| {
        format!(r#"{{"kind":"lbs","ts":{ts},"device":"{dev}","lat":31.2405,"lng":121.4832}}"#)
    };
    let mut text = ping(1_767_196_800_000, "a");
    text.push('\n');
    text.push_str(r#"{"kind":"lbs","ts":1767196801000,"device":""#);
    text.push_str(&"x".repeat(64 << 20));
    text.push_str("\"}\n");
    text.push_str(&ping(1_767_196_802_000, "b"));
    text.push('\n');
    std::fs::write(&feed, text).unwrap();
    let out = throng(&["replay", &feed.display().to_string(), "--print"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("feed.ndjson:2: line is 67108909 bytes, over the 65536-byte limit"),
        "{stderr}"
    );
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        rows.iter().any(|r| r["lbs_devices"] == 2),
        "both pings counted: {rows:?}"
    );
}
