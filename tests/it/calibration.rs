//! Self-calibrating fusion through the real server: a zone headcount corrects a panel whose
//! configured people per device is wrong, the correction reaches segments without counters, and
//! the estimate is visible in `/api/health`, `/metrics` and the `calibration` SQL table; a zone
//! reporting nonsense is ignored and said so.

use std::time::Duration;

use throng::config::LbsSourceConfig;
use throng::scenario::SegmentMap;
use throng::server;

use crate::history::sql;
use crate::http::{request, request_text};
use crate::serve::{config, fast};
use crate::support::{metric, Rng};

/// `n` points inside segment `id`, at least `margin` metres from its edge (so a 5 m ping is not
/// shared with a neighbour).
fn inside(map: &SegmentMap, id: &str, n: usize, margin: f64, seed: u64) -> Vec<(f64, f64)> {
    let i = map.index(id).unwrap();
    let poly = &map.segments()[i].polygon;
    let m = map.matcher();
    let mut rng = Rng(seed);
    let (mut lo, mut hi) = ([f64::MAX; 2], [f64::MIN; 2]);
    for c in poly.exterior().0.iter() {
        lo = [lo[0].min(c.x), lo[1].min(c.y)];
        hi = [hi[0].max(c.x), hi[1].max(c.y)];
    }
    let mut out = Vec::new();
    while out.len() < n {
        let (lng, lat) = (rng.range(lo[0], hi[0]), rng.range(lo[1], hi[1]));
        let p = m.local(lat, lng);
        let clear = (0..map.segments().len()).all(|j| (j == i) == (m.distance(j, p) == 0.0))
            && [(margin, 0.0), (-margin, 0.0), (0.0, margin), (0.0, -margin)]
                .iter()
                .all(|(dx, dy)| {
                    let q = m.local(lat + dy / 111_320.0, lng + dx / 95_000.0);
                    m.distance(i, q) == 0.0
                });
        if clear {
            out.push((lat, lng));
        }
    }
    out
}

// The accuracy nights below run at the full scale of docs/ACCURACY.md (20,000 people, 30 min),
// one seed: at 6,000 people Chen Yi Square holds ~300, and one zone that small learns people per
// device only within ±7 % (sampling and the placement of pings near its edges); at 20,000 within
// ±3 %. Seed 1 measured on 2026-12-07, with the scenario's ground (the bounds are the issue's
// targets, not these figures):
//
// | panel  | scale | counted MAPE (right, calibration off) | total (right factors) | people per device | settled |
// | bund   | ±30   | 7.5 % (6.4 %)                         | −1.8 % (+0.0 %)       | +0.2 %            | 390 s   |
// | bund   | +30   | 6.6 %                                 | −1.3 %                | −0.0 %            | 390 s   |
// | sparse | ±30   | 15.6 % (14.2 %)                       | −3.7 % (−2.5 %)       | −1.1 %            | 390 s   |
// | sparse | +30   | 14.8 %                                | −4.4 %                | −0.3 %            | 390 s   |
// Without calibration, +30: total +30 % / +27 %.
//
// The total is held to ±3 points of the total under the right factors: what is left beyond that
// is the placement's (the sparse panel's streets read low since the scenario drew its ground,
// docs/ACCURACY.md), which it::simulation guards; calibration must not add to it.

/// The targets: counted segments within 2 points of their MAPE under the right factors,
/// the total within ±3 points of its own under the right factors.
const COUNTED_MAPE_POINTS: f64 = 0.02;
const TOTAL: f64 = 0.03;
/// Seconds into the night by which the factors' effect on the total stays within ±5 % (the
/// 5-minute warm-up, then a few windows).
const SETTLED_S: f64 = 600.0;
/// A 30 %/hour drift (seed 1, measured 2026-12-07): people per device at the end −2.5 % (bund) and
/// −5.0 % (sparse: silent phones stay present up to 10 minutes, and the 5-minute memory lags),
/// total −2.8 % and −5.7 % (without calibration −8.1 % and −9.6 %). Bounds: those plus a fifth.
/// Since the prior is tempered by each ping's error (stop 47), the square (the one zone) keeps
/// pings near its edge that the steps' density used to draw off, so its phones read ~2 % more and
/// the factor learnt from it ~1.5 points less: −4.2 % and −6.3 % at the end, total −2.5 % and
/// −5.5 % (without calibration −7.5 % and −9.0 %). Stop 48 (a shorter projection, L 6 m): −5.7 %
/// and −7.0 %, total −2.0 % and −5.1 % (without calibration −6.6 % and −8.6 %); L 8 m took the
/// sparse night to −7.9 %, and 6 m was kept (docs/ACCURACY.md).
const DRIFT_LAG: f64 = 0.075;
const DRIFT_TOTAL: f64 = 0.07;

async fn calibration_of(addr: std::net::SocketAddr, source: &str) -> serde_json::Value {
    let (_, h) = request(addr, "GET", "/api/health", None, "").await;
    h["engine"]["calibration"]
        .as_array()
        .and_then(|v| v.iter().find(|c| c["source"] == source).cloned())
        .unwrap_or(serde_json::Value::Null)
}

/// Carrier-a is configured at 1.25 people per device; really each phone stands for 2. 300 phones
/// on Chen Yi Square with its zone counting 600, 100 on the south promenade with no counter.
#[tokio::test]
async fn a_zone_headcount_corrects_a_wrong_scale_and_the_correction_reaches_uncounted_segments() {
    let mut cfg = fast(config());
    // Seconds, not minutes, of feeds here: the warm-up scaled down with the windows.
    cfg.risk.calibration.warmup = Duration::from_secs(1);
    cfg.lbs.sources.insert(
        "carrier-a".into(),
        LbsSourceConfig {
            scale: 1.25,
            accuracy_m: None,
            ping_interval: Some(Duration::from_millis(250)),
            max_delay: None,
        },
    );
    let map = SegmentMap::load(&cfg.scenario.join("segments.geojson"), cfg.resolution()).unwrap();
    let square = inside(&map, "chenyi-square", 300, 12.0, 16);
    let south = inside(&map, "bund-promenade-south", 100, 12.0, 17);
    let dir = tempfile::tempdir().unwrap();
    let server = server::start(cfg, "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let a = server.addr;
    let post = |ts: i64, zone: u64| {
        let mut body = String::new();
        for (i, (lat, lng)) in square.iter().chain(&south).enumerate() {
            body += &format!(
                "{{\"kind\":\"lbs\",\"ts\":{ts},\"device\":\"p{i}\",\"lat\":{lat:.7},\"lng\":{lng:.7},\"accuracy_m\":5,\"source\":\"carrier-a\"}}\n"
            );
        }
        body += &format!(
            "{{\"kind\":\"counter\",\"ts\":{ts},\"sensor\":\"chenyi-zone\",\"occupancy\":{zone}}}\n"
        );
        body
    };

    // Phase 1: honest counts, 4 s of 1 s windows.
    for _ in 0..16 {
        let (s, v) = request(
            a,
            "POST",
            "/api/ingest",
            None,
            &post(throng::model::now_ms(), 600),
        )
        .await;
        assert_eq!(s, 202, "{v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let c = calibration_of(a, "lbs/carrier-a").await;
    let k = c["people_per_device"].as_f64().unwrap_or(0.0);
    eprintln!("carrier-a after 4 s: {c}");
    assert!((k / 2.0 - 1.0).abs() < 0.05, "people per device {k}, not ~2: {c}");
    assert_eq!(c["prior"], 1.25);
    assert_eq!(c["status"], "calibrated", "{c}");
    assert!(c["confidence"].as_f64().unwrap_or(0.0) > 0.5, "{c}");

    // The south promenade has no counter: its 100 phones now read ~200 people, not 125.
    let (_, segs) = request(a, "GET", "/api/segments", None, "").await;
    let people = segs
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "bund-promenade-south")
        .map(|x| x["people"].as_f64().unwrap_or(0.0))
        .unwrap();
    assert!((people - 200.0).abs() < 15.0, "south promenade {people}: {segs}");

    let (_, page) = request_text(a, "GET", "/metrics", None, "").await;
    let g = metric(
        &page,
        "throng_calibration_people_per_device{source=\"lbs/carrier-a\"}",
    );
    assert!(g.is_some_and(|g| (g - k).abs() < 0.05), "gauge {g:?} vs {k}");

    let (s, rows) = sql(
        a,
        None,
        "SELECT source, prior, people_per_device, status FROM calibration \
         WHERE source = 'lbs/carrier-a' ORDER BY window_end",
    )
    .await;
    assert_eq!(s, 200, "{rows}");
    let rows = rows.as_array().cloned().unwrap_or_default();
    assert!(rows.len() >= 3, "calibration rows: {rows:?}");
    assert_eq!(rows[0]["prior"], 1.25);
    let last = rows.last().unwrap();
    assert_eq!(last["status"], "calibrated", "{last}");
    assert!(
        (last["people_per_device"].as_f64().unwrap() / 2.0 - 1.0).abs() < 0.05,
        "{last}"
    );

    // Phase 2: the zone reports 60,000 (10 × the square's capacity of 6,000): ignored. Twelve
    // posts a quarter second apart span more than 2.75 s, so at least three 1 s windows hold the
    // nonsense however the posts fall against the window boundaries (eight did not, under load).
    for _ in 0..12 {
        let (s, v) = request(
            a,
            "POST",
            "/api/ingest",
            None,
            &post(throng::model::now_ms(), 60_000),
        )
        .await;
        assert_eq!(s, 202, "{v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Wait (bounded) for the windows holding the nonsense to close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (note, rejected) = loop {
        let (_, h) = request(a, "GET", "/api/health", None, "").await;
        let note = h["engine"]["calibration_note"].as_str().unwrap_or("").to_string();
        let (_, page) = request_text(a, "GET", "/metrics", None, "").await;
        let rejected =
            metric(&page, "throng_calibration_rejected_total{reason=\"implausible\"}").unwrap_or(0.0);
        if rejected >= 3.0 || tokio::time::Instant::now() > deadline {
            break (note, rejected);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(rejected >= 3.0, "implausible zone counts rejected: {rejected}");
    assert!(note.contains("capacity"), "note: {note:?}");
    let c = calibration_of(a, "lbs/carrier-a").await;
    let k2 = c["people_per_device"].as_f64().unwrap_or(0.0);
    assert!(
        (k2 / 2.0 - 1.0).abs() < 0.05,
        "nonsense moved the factor to {k2}: {c}"
    );
    server.shutdown().await.unwrap();
}

/// One `throng accuracy --json` run, its nights keyed by (panel, scale-error model).
fn nights(args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec![
        "accuracy",
        "--people",
        "20000",
        "--duration",
        "1800",
        "--seeds",
        "1",
        "--panels",
        "bund,sparse",
        "--errors",
        "panel",
        "--json",
    ];
    all.extend_from_slice(args);
    let o = crate::support::throng_within(&all, Duration::from_secs(300));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn f(s: &serde_json::Value, k: &str) -> f64 {
    s[k].as_f64().unwrap_or_else(|| panic!("no {k} in {s}"))
}

/// The mode: every panel's configured people per device wrong by 30 % (one provider high
/// and the other low, or both high), and the only correction the zone headcount on Chen Yi
/// Square. The segments with counters must come within 2 points of their MAPE under the right
/// factors, and the total within ±3 points of its own under them. Without calibration the same wrong factors miss by far
/// (so the test can fail).
#[test]
fn calibration_recovers_scale_factors_wrong_by_thirty_percent_in_a_simulated_night() {
    let scores = nights(&["--scale-errors", "±30,+30"]);
    let off = nights(&["--scale-errors", "0,+30", "--no-calibration"]);
    assert_eq!(scores.len(), 4, "{scores:?}");
    assert_eq!(off.len(), 4, "{off:?}");
    for panel in ["bund", "sparse"] {
        let of = |k: &str| {
            scores
                .iter()
                .find(|s| s["panel"] == panel && s["scale_error"] == k)
                .unwrap_or_else(|| panic!("no {panel} / {k}"))
        };
        let right = off
            .iter()
            .find(|s| s["panel"] == panel && s["scale_error"] == "0")
            .unwrap_or_else(|| panic!("no {panel} / 0 without calibration"));
        for model in ["±30", "+30"] {
            let s = of(model);
            let name = format!("{panel} / scale {model}");
            eprintln!(
                "{name}: counted MAPE {:.1} % (right factors {:.1} %), total {:+.1} %, people per device {:+.1} % settled at {} s, {}",
                f(s, "counted_mape") * 100.0,
                f(right, "counted_mape") * 100.0,
                f(s, "total_error") * 100.0,
                f(s, "factor_error") * 100.0,
                s["factor_settled_s"],
                s["factors"]
            );
            assert!(
                f(s, "counted_mape") - f(right, "counted_mape") < COUNTED_MAPE_POINTS,
                "{name}: counted MAPE {} vs {} with the right factors",
                f(s, "counted_mape"),
                f(right, "counted_mape")
            );
            assert!(
                (f(s, "total_error") - f(right, "total_error")).abs() < TOTAL,
                "{name}: total {} against {} with the right factors",
                f(s, "total_error"),
                f(right, "total_error")
            );
            assert!(
                f(s, "total_error").abs() < 0.055,
                "{name}: total {}",
                f(s, "total_error")
            );
            assert!(f(s, "factor_error").abs() < 0.05, "{name}: {s}");
            let settled = s["factor_settled_s"].as_f64().unwrap_or(f64::MAX);
            assert!(settled <= SETTLED_S, "{name}: settled at {settled} s");
        }
        let uncal = off
            .iter()
            .find(|s| s["panel"] == panel && s["scale_error"] == "+30")
            .unwrap();
        eprintln!(
            "{panel} / scale +30 without calibration: counted MAPE {:.1} %, total {:+.1} %",
            f(uncal, "counted_mape") * 100.0,
            f(uncal, "total_error") * 100.0
        );
        assert!(
            f(uncal, "total_error") > 0.2,
            "{panel}: the wrong factors should show: {uncal}"
        );
    }
}

/// A panel whose people per device rise 15 % over 30 minutes (30 % an hour: phones falling
/// silent) is followed: the factor at the end is within a few percent of the right one, and the
/// total stays closer than without calibration.
#[test]
fn calibration_follows_a_panel_whose_share_drifts_thirty_percent_an_hour() {
    let on = nights(&["--drift", "15"]);
    let off = nights(&["--drift", "15", "--no-calibration"]);
    for s in &on {
        let name = format!("{} / drift 15 % in 30 min", s["panel"]);
        let unc = off.iter().find(|o| o["panel"] == s["panel"]).unwrap();
        eprintln!(
            "{name}: people per device {:+.1} % at the end, total {:+.1} % (without calibration {:+.1} %), {}",
            f(s, "factor_error") * 100.0,
            f(s, "total_error") * 100.0,
            f(unc, "total_error") * 100.0,
            s["factors"]
        );
        assert!(f(s, "factor_error").abs() < DRIFT_LAG, "{name}: {s}");
        assert!(f(s, "total_error").abs() < DRIFT_TOTAL, "{name}: {s}");
        assert!(f(s, "total_error").abs() < f(unc, "total_error").abs(), "{name}");
    }
}
