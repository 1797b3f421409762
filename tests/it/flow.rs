//! The one flow: a recorded feed replayed offline into a data dir (`throng replay --data-dir`) and
//! the same feed posted to a running server leave the same tables behind — windows, segment
//! evaluations, alerts. The two paths share their code; this is what protects it from drifting.

use crate::http::request;
use crate::support::{query, root, throng};

/// A config whose sources never idle during the test, so the server (wall clock) and the replay
/// (event-time clock) see the same watermark; k = 0 so every cell is queryable.
const CONFIG: &str = "[window]\nsize = \"60s\"\nslide = \"10s\"\nallowed_lateness = \"5s\"\nidle_timeout = \"600s\"\n[privacy]\nk = 0\n";

#[tokio::test(flavor = "multi_thread")]
async fn serve_and_replay_leave_the_same_tables() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("throng.toml");
    let scenario = root().join("fixtures/bund");
    std::fs::write(
        &cfg_path,
        format!("scenario = {:?}\n{CONFIG}", scenario.display().to_string()),
    )
    .unwrap();
    // Four minutes of a simulated night recorded a day ago: a fresh server must not take its
    // clock for the feed's (nothing closes before a source has been seen), so its windows form
    // exactly as offline.
    let start = chrono::DateTime::from_timestamp_millis(throng::model::now_ms() - 86_400_000)
        .unwrap()
        .to_rfc3339();
    let feed = dir.path().join("feed.ndjson");
    let sim = throng(&[
        "simulate",
        "--devices",
        "4000",
        "--duration",
        "240",
        "--seed",
        "7",
        "--start",
        &start,
        "--out",
        &feed.display().to_string(),
    ]);
    assert!(sim.status.success(), "{}", String::from_utf8_lossy(&sim.stderr));

    let offline = dir.path().join("offline");
    let rep = throng(&[
        "replay",
        &feed.display().to_string(),
        "--data-dir",
        &offline.display().to_string(),
        "-c",
        &cfg_path.display().to_string(),
    ]);
    assert!(rep.status.success(), "{}", String::from_utf8_lossy(&rep.stderr));

    let served = dir.path().join("served");
    let cfg = throng::config::Config::load(&cfg_path).unwrap();
    let server = throng::server::start(cfg, "127.0.0.1:0".parse().unwrap(), &served)
        .await
        .unwrap();
    let text = std::fs::read_to_string(&feed).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut sent = 0;
    for chunk in lines.chunks(2_000) {
        let body = chunk.join("\n");
        let (status, v) = request(server.addr, "POST", "/api/ingest", None, &body).await;
        assert_eq!(status, 202, "{v}");
        assert_eq!(v["rejected"].as_array().map(Vec::len), Some(0), "{v}");
        sent += v["accepted"].as_u64().unwrap();
    }
    assert_eq!(sent as usize, lines.len());
    // The server says how late the feed is: a day, per source, from arrival − event time.
    // (Waiting, bounded, until the engine has taken the acknowledged records; the simulator's
    // few exact duplicates are counted once, so "all" is all but a handful.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let sources = loop {
        let (_, health) = request(server.addr, "GET", "/api/health", None, "").await;
        let sources = health["engine"]["sources"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let counted: u64 = sources.iter().map(|s| s["records"].as_u64().unwrap_or(0)).sum();
        if counted + 50 >= sent {
            break sources;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "engine took {counted} of {sent}: {health}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    for s in &sources {
        let p50 = s["delay_p50_ms"].as_i64().unwrap_or(0);
        assert!((86_000_000..=87_500_000).contains(&p50), "{s}");
    }
    server.shutdown().await.unwrap();

    for (table, sql) in [
        (
            "hex_windows",
            "SELECT * FROM hex_windows ORDER BY window_start, cell",
        ),
        (
            "segment_windows",
            "SELECT * FROM segment_windows ORDER BY window_start, segment_id",
        ),
        ("alerts", "SELECT * FROM alerts ORDER BY ts, segment_id, to_tier"),
        ("late_records", "SELECT count(*) AS n FROM late_records"),
    ] {
        let (a, b) = (query(&offline, sql), query(&served, sql));
        assert!(
            a.lines().count() > 1 || table == "late_records",
            "{table} is empty offline"
        );
        assert_eq!(a.lines().count(), b.lines().count(), "{table}: row counts differ");
        if let Some((x, y)) = a.lines().zip(b.lines()).find(|(x, y)| x != y) {
            panic!(
                "{table} differs between replay and serve:\n{}\n  replay: {x}\n  serve:  {y}",
                a.lines().next().unwrap_or("")
            );
        }
    }
    // The test means something only if the night reached the segments and raised tiers.
    let alerts = query(&offline, "SELECT count(*) AS n FROM alerts");
    let n: u64 = alerts.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(
        n > 0,
        "no alert in the simulated minutes: the comparison would not cover alerts"
    );
}
