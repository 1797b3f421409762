//! Segment people from device positions, through the real server: the packed-steps case.

use std::time::Duration;

use throng::scenario::SegmentMap;
use throng::server;

use crate::http::request;
use crate::serve::{config, fast};

/// 1,012 phones placed inside `chenyi-steps` (253 m², 4 p/m², accuracy 5 m, scale 1), where the
/// 2014 crush happened. The steps share their res-11 cells with the square and the promenade; by
/// cell shares they read a third of the crowd. By position they read it whole: critical at once
/// (the first closed window), with an alert.
#[tokio::test]
async fn a_packed_crowd_on_the_steps_reads_critical_within_one_slide_with_an_alert() {
    let cfg = fast(config());
    let map = SegmentMap::load(&cfg.scenario.join("segments.geojson"), cfg.resolution()).unwrap();
    let steps = map.index("chenyi-steps").unwrap();
    let poly = &map.segments()[steps].polygon;
    let m = map.matcher();
    let mut rng = crate::support::Rng(15);
    let (mut lo, mut hi) = ([f64::MAX; 2], [f64::MIN; 2]);
    for c in poly.exterior().0.iter() {
        lo = [lo[0].min(c.x), lo[1].min(c.y)];
        hi = [hi[0].max(c.x), hi[1].max(c.y)];
    }
    let mut phones = Vec::new();
    while phones.len() < 1012 {
        let (lng, lat) = (rng.range(lo[0], hi[0]), rng.range(lo[1], hi[1]));
        if m.distance(steps, m.local(lat, lng)) == 0.0 {
            phones.push((lat, lng));
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let server = server::start(cfg, "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let a = server.addr;
    // Each phone pings every 250 ms for 3 s of 1 s windows.
    let start = throng::model::now_ms();
    let mut first_window_end = None;
    for k in 0..12 {
        let ts = start + k * 250;
        first_window_end.get_or_insert((ts / 1000 + 1) * 1000);
        let body: String = phones
            .iter()
            .enumerate()
            .map(|(i, (lat, lng))| {
                format!(
                    "{{\"kind\":\"lbs\",\"ts\":{ts},\"device\":\"steps-{i}\",\"lat\":{lat:.7},\"lng\":{lng:.7},\"accuracy_m\":5}}\n"
                )
            })
            .collect();
        let (s, v) = request(a, "POST", "/api/ingest", None, &body).await;
        assert_eq!(s, 202, "{v}");
        assert_eq!(v["accepted"], 1012);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let first_window_end = first_window_end.unwrap();

    // Wait (bounded) for the feed to go idle and its windows to close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let alert = loop {
        let (_, alerts) = request(a, "GET", "/api/alerts", None, "").await;
        let found = alerts.as_array().and_then(|v| {
            v.iter()
                .find(|x| x["segment_id"] == "chenyi-steps" && x["to_tier"] == "critical")
                .cloned()
        });
        if let Some(x) = found {
            break x;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no critical alert on the steps: {alerts}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ts = alert["ts"].as_i64().unwrap();
    assert!(
        ts <= first_window_end + 1000,
        "critical at {ts}: more than one slide after the first window ({first_window_end})"
    );
    let people = alert["people"].as_f64().unwrap();
    eprintln!("steps at the critical alert: {people:.0} people (truth 1,012)");
    assert!(people > 855.0, "the steps read {people} people: {alert}");

    let (_, segs) = request(a, "GET", "/api/segments", None, "").await;
    let s = segs
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "chenyi-steps")
        .unwrap()
        .clone();
    let density = s["density"].as_f64().unwrap_or(0.0);
    eprintln!("steps now: {density:.2} p/m², {}", s["tier"]);
    assert!(
        (density - 4.0).abs() < 0.4 || s["tier"] == "degraded",
        "steps density {density}: {s}"
    );
    // The square beside the steps is not handed the steps' crowd.
    let square = segs
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "chenyi-square")
        .unwrap();
    assert!(
        square["people"].as_f64().unwrap_or(0.0) < 100.0,
        "the square took the steps' people: {square}"
    );
    server.shutdown().await.unwrap();
}

/// Off-network pings are counted, not lost: through `throng replay --data-dir` they are in
/// `hex_windows.lbs_off_network`, still on the heatmap (`lbs_devices`), and on no segment.
#[test]
fn off_network_pings_are_visible_in_sql_and_on_no_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("throng.toml");
    std::fs::write(
        &cfg,
        format!(
            "scenario = {:?}\n[window]\nsize = \"10s\"\nslide = \"10s\"\nallowed_lateness = \"1s\"\n[privacy]\nk = 1\n",
            crate::support::root().join("fixtures/bund")
        ),
    )
    .unwrap();
    let t = 1_767_196_800_000i64;
    let mut feed = String::new();
    // Five phones on the Huangpu 1.5 km east of every segment; three on Chen Yi Square.
    for i in 0..5 {
        feed += &format!(
            "{{\"kind\":\"lbs\",\"ts\":{},\"device\":\"river-{i}\",\"lat\":31.2400,\"lng\":121.5050,\"accuracy_m\":10}}\n",
            t + 1000 + i
        );
    }
    for i in 0..3 {
        feed += &format!(
            "{{\"kind\":\"lbs\",\"ts\":{},\"device\":\"square-{i}\",\"lat\":31.241294,\"lng\":121.490922,\"accuracy_m\":5}}\n",
            t + 2000 + i
        );
    }
    let data = replay_into_history(dir.path(), &feed, &cfg);
    let q = |sql: &str| crate::history::query_json(&data, &cfg, sql);
    let v = q("SELECT sum(lbs_off_network) AS off, sum(lbs_devices) AS devices FROM hex_windows");
    assert_eq!(v[0]["off"], 5, "{v}");
    assert_eq!(v[0]["devices"], 8, "{v}");
    let v = q("SELECT sum(people) AS people FROM segment_windows");
    let people = v[0]["people"].as_f64().unwrap();
    assert!(
        (people - 3.0).abs() < 1e-6,
        "only the square's three are on segments: {v}"
    );
}

/// Ten phones on the Henan Road junction, 6 m past the end of East Nanjing Road's west block
/// (accuracy 5 m): with the scenario's ground (`ground.geojson`) they stand on no segment, as they
/// do; with the ground file taken away they are handed whole to the street, the only segment
/// within their reach.
#[test]
fn pings_on_a_junction_the_scenario_draws_as_ground_are_on_no_segment() {
    let run = |ground: bool| {
        let dir = tempfile::tempdir().unwrap();
        let scenario = dir.path().join("scenario");
        std::fs::create_dir(&scenario).unwrap();
        let mut files = vec!["segments.geojson", "sensors.json", "stations.json"];
        if ground {
            files.push("ground.geojson");
        }
        for f in files {
            std::fs::copy(
                crate::support::root().join("fixtures/bund").join(f),
                scenario.join(f),
            )
            .unwrap();
        }
        let cfg = dir.path().join("throng.toml");
        std::fs::write(
            &cfg,
            format!(
                "scenario = {scenario:?}\n[window]\nsize = \"10s\"\nslide = \"10s\"\nallowed_lateness = \"1s\"\n[privacy]\nk = 1\n"
            ),
        )
        .unwrap();
        let t = 1_767_196_800_000i64;
        let feed: String = (0..10)
            .map(|i| {
                format!(
                    "{{\"kind\":\"lbs\",\"ts\":{},\"device\":\"junction-{i}\",\"lat\":{},\"lng\":121.485763,\"accuracy_m\":5}}\n",
                    t + 1000 + i,
                    31.24093 + i as f64 * 0.000004
                )
            })
            .collect();
        let data = replay_into_history(dir.path(), &feed, &cfg);
        let v = crate::history::query_json(
            &data,
            &cfg,
            "SELECT sum(lbs_off_network) AS off, sum(lbs_devices) AS devices FROM hex_windows",
        );
        assert_eq!(
            (v[0]["off"].as_i64(), v[0]["devices"].as_i64()),
            (Some(0), Some(10)),
            "{v}"
        );
        let v = crate::history::query_json(
            &data,
            &cfg,
            "SELECT segment_id, sum(people) AS people FROM segment_windows GROUP BY segment_id HAVING sum(people) > 0.001",
        );
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["segment_id"].as_str().unwrap().to_owned(),
                    r["people"].as_f64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let without = run(false);
    assert_eq!(without.len(), 1, "{without:?}");
    assert_eq!(without[0].0, "enr-xizang-henan");
    assert!((without[0].1 - 10.0).abs() < 1e-6, "{without:?}");
    let with = run(true);
    let on_segments: f64 = with.iter().map(|(_, p)| p).sum();
    eprintln!("with the ground, on segments: {with:?}");
    assert!(on_segments < 1.5, "the junction's phones leak into {with:?}");
}

/// Writes `feed` to a file in `dir` and replays it under `cfg` into a data dir there, as a user
/// would: the data dir, for SQL.
fn replay_into_history(dir: &std::path::Path, feed: &str, cfg: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("feed.ndjson");
    std::fs::write(&file, feed).unwrap();
    let data = dir.join("data");
    let o = crate::support::throng(&[
        "replay",
        file.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    data
}
