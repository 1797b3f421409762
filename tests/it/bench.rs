//! `throng bench`: the load harness runs to completion by itself and reports what it measured.

use crate::support::{root, throng};

/// Runs `throng bench` on the Bund with 1 s windows (so a short run closes many) and `args`.
fn bench(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bench.toml");
    std::fs::write(
        &cfg,
        "[window]\nsize = \"2s\"\nslide = \"1s\"\nallowed_lateness = \"500ms\"\nidle_timeout = \"10s\"\n\
         [lbs.sources.carrier-a]\nscale = 1.36\n[lbs.sources.carrier-b]\nscale = 1.25\n",
    )
    .unwrap();
    let scenario = root().join("fixtures/bund");
    let mut all = vec![
        "bench",
        "--scenario",
        scenario.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    throng(&all)
}

#[test]
fn bench_drives_a_server_with_viewers_and_reports_rates_latencies_and_memory() {
    let out = bench(&[
        "--devices",
        "3000",
        "--duration",
        "30",
        "--viewers",
        "5",
        "--senders",
        "2",
        "--batch",
        "500",
        "--max-seconds",
        "60",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let records = r["records"].as_u64().unwrap();
    assert!(records > 1000, "{r}");
    // Every record the simulator writes is valid: the server takes them all.
    assert_eq!(r["accepted"].as_u64(), Some(records), "{r}");
    // And every record it acknowledged reached the windows (or was recognised as an identical
    // resend of one that did).
    let taken = r["engine_records"].as_u64().unwrap() + r["duplicates"].as_u64().unwrap_or(0);
    assert_eq!(taken, records, "{r}");
    assert!(r["accepted_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["offline_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["ratio_to_offline"].as_f64().unwrap() > 0.0);
    assert!(r["ack_ms"][1].as_f64().unwrap() >= r["ack_ms"][0].as_f64().unwrap());
    // 1 s windows closed while 5 viewers watched: they saw final frames, stamped with close times.
    assert!(r["heatmap_frames"].as_u64().unwrap() >= 5, "{r}");
    // Latencies are measured, not asserted against a wall clock (shared machines): they are
    // real (positive) and ordered p50 ≤ p99 ≤ max.
    let c: Vec<f64> = (0..3)
        .map(|i| r["close_to_viewer_ms"][i].as_f64().unwrap())
        .collect();
    assert!(c[0] > 0.0 && c[0] <= c[1] && c[1] <= c[2], "{r}");
    // A viewer misses a window only when the server skipped frames for it (it fell behind).
    let gaps = r["viewer_gaps"].as_u64().unwrap();
    let skipped = r["frames_skipped"].as_f64().unwrap_or(0.0);
    assert!(
        gaps == 0 || skipped > 0.0,
        "viewers lost frames nobody skipped: {r}"
    );
    assert!(r["peak_rss_mib"].as_f64().unwrap() > 1.0);
    // At this scale (a few hundred active devices, 2 s windows) fixed table sizes and presence
    // records dominate (measured 800–1,230 B); the per-device figure at city scale is a bench's
    // (docs/PERFORMANCE.md), not this test's.
    let per_device = r["state_bytes_per_device"].as_f64().unwrap();
    assert!(per_device > 8.0 && per_device < 5_000.0, "{r}");
}

#[test]
fn soak_streams_real_time_traffic_until_its_time_is_up_and_reports_memory_by_minute() {
    let started = std::time::Instant::now();
    let out = bench(&[
        "--devices",
        "3000",
        "--duration",
        "10",
        "--soak",
        "14",
        "--viewers",
        "2",
        "--batch",
        "200",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    // The stream is paced by the clock: it lasts its 14 s (and not much more), spans two nights,
    // and every record generated is accepted (event time = wall clock, so nothing is refused).
    let secs = r["send_seconds"].as_f64().unwrap();
    assert!((13.0..40.0).contains(&secs), "{r}");
    assert!(started.elapsed().as_secs() < 90);
    let records = r["records"].as_u64().unwrap();
    assert!(records > 100, "{r}");
    assert_eq!(r["accepted"].as_u64(), Some(records), "{r}");
    assert!(r["offline_per_s"].is_null(), "{r}");
    let by_minute = r["rss_by_minute_mib"].as_array().unwrap();
    assert!(
        !by_minute.is_empty() && by_minute.iter().all(|m| m.as_f64().unwrap() > 1.0),
        "{r}"
    );
    assert!(r["heatmap_frames"].as_u64().unwrap() >= 2, "{r}");
}
