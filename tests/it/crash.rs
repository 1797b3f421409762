//! Crash safety: a server killed with SIGKILL at an arbitrary point and restarted on the same data
//! dir ends with every acknowledged record counted exactly once, re-sends included.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use h3o::{LatLng, Resolution};

use crate::http::request;
use crate::support::{Child, Rng};

const HOUR: i64 = 3_600_000;

fn spawn(cfg: &std::path::Path, data: &std::path::Path) -> (Child, std::net::SocketAddr) {
    crate::support::serving(crate::support::serve_command(
        data,
        &["--config", cfg.to_str().unwrap()],
    ))
}

#[tokio::test]
async fn a_killed_server_loses_no_acknowledged_record_and_counts_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    // One open hour-long window that stays open: the watermark trails by six hours.
    std::fs::write(
        &cfg,
        "scenario = \"fixtures/bund\"\n[window]\nsize = \"1h\"\nslide = \"1h\"\nallowed_lateness = \"6h\"\nidle_timeout = \"1s\"\n\
         [privacy]\nk = 0\n[durability]\ncheckpoint_every = \"300ms\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let base = (throng::model::now_ms() - 2 * HOUR).div_euclid(HOUR) * HOUR + 1_000;
    let mut rng = Rng(0x00c4_a511);
    let batches: Vec<Vec<(i64, u32, f64, f64)>> = (0..40)
        .map(|b| {
            (0..50)
                .map(|i| {
                    let ts = base + (b * 50 + i) as i64 * 700;
                    (
                        ts,
                        rng.below(300) as u32,
                        rng.range(31.2380, 31.2420),
                        rng.range(121.4780, 121.4900),
                    )
                })
                .collect()
        })
        .collect();
    let body = |batch: &Vec<(i64, u32, f64, f64)>| -> String {
        batch
            .iter()
            .map(|(ts, d, lat, lng)| {
                format!(
                    "{{\"kind\":\"lbs\",\"ts\":{ts},\"device\":\"dev-{d}\",\"lat\":{lat},\"lng\":{lng}}}\n"
                )
            })
            .collect()
    };
    // Expected: each device once, in the cell of its latest ping.
    let mut latest: HashMap<u32, (i64, u64)> = HashMap::new();
    for (ts, d, lat, lng) in batches.iter().flatten() {
        let cell = u64::from(LatLng::new(*lat, *lng).unwrap().to_cell(Resolution::Eleven));
        let e = latest.entry(*d).or_insert((*ts, cell));
        if *ts >= e.0 {
            *e = (*ts, cell);
        }
    }
    let mut expected: HashMap<String, f64> = HashMap::new();
    for (_, cell) in latest.values() {
        *expected.entry(format!("{cell:x}")).or_default() += 1.0;
    }

    let kill_after = 17 + (throng::model::now_ms() % 13) as usize; // an arbitrary point
    let (mut first, addr) = spawn(&cfg, &data);
    for b in &batches[..kill_after] {
        let (s, v) = request(addr, "POST", "/api/ingest", None, &body(b)).await;
        assert_eq!((s, v["accepted"].as_u64()), (202, Some(50)));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.0.kill().unwrap(); // SIGKILL: no shutdown, no flush
    first.0.wait().unwrap();

    let (_second, addr) = spawn(&cfg, &data);
    // The last batch's acknowledgement "was lost": the feed sends it again.
    for b in &batches[kill_after - 1..] {
        let (s, _) = request(addr, "POST", "/api/ingest", None, &body(b)).await;
        assert_eq!(s, 202);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/live"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let got: HashMap<String, f64> = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no complete provisional frame"
        );
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let tokio_tungstenite::tungstenite::Message::Text(t) = m else {
            continue;
        };
        let f: serde_json::Value = serde_json::from_str(&t).unwrap();
        if f["type"] != "heatmap" || f["window_start"].as_i64() != Some(base - 1_000) {
            continue;
        }
        let cells: HashMap<String, f64> = f["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c[0].as_str().unwrap().to_string(), c[1].as_f64().unwrap()))
            .collect();
        let total: f64 = cells.values().sum();
        if total >= expected.values().sum::<f64>() {
            break cells;
        }
    };
    assert_eq!(got, expected, "killed after {kill_after} batches");
    let (_, metrics) = crate::http::request_text(addr, "GET", "/metrics", None, "").await;
    assert!(
        metrics.contains("throng_ingest_duplicates_total 50"),
        "the re-sent batch was recognised: {metrics}"
    );
    // The log and checkpoints hold pseudonyms only: no raw device id reaches the disk.
    let mut files = vec![data.join("checkpoint.json")];
    files.extend(
        std::fs::read_dir(data.join("wal"))
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("dev-"),
            "raw device id in {}",
            f.display()
        );
    }
}

#[tokio::test]
async fn replay_target_sends_a_recorded_feed_to_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        "scenario = \"fixtures/bund\"\n[window]\nsize = \"1h\"\nslide = \"1h\"\nallowed_lateness = \"6h\"\nidle_timeout = \"1s\"\n[privacy]\nk = 0\n",
    )
    .unwrap();
    let (_server, addr) = spawn(&cfg, &dir.path().join("data"));
    let base = (throng::model::now_ms() - 2 * HOUR).div_euclid(HOUR) * HOUR + 1_000;
    // Two files, each in time order, interleaved in event time by the replay; one bad line.
    let (mut a, mut b) = (String::new(), String::new());
    for i in 0..3000i64 {
        let line = format!(
            "{{\"kind\":\"lbs\",\"ts\":{},\"device\":\"r{}\",\"lat\":31.2405,\"lng\":121.4832}}\n",
            base + i * 100,
            i % 400
        );
        if i % 2 == 0 {
            a.push_str(&line)
        } else {
            b.push_str(&line)
        }
    }
    a.push_str("{\"kind\":\"lbs\",\"ts\":1}\n");
    let (fa, fb) = (dir.path().join("a.ndjson"), dir.path().join("b.ndjson"));
    std::fs::write(&fa, a).unwrap();
    std::fs::write(&fb, b).unwrap();
    let target = format!("http://{addr}");
    let out = tokio::task::spawn_blocking(move || {
        crate::support::throng(&[
            "replay",
            fa.to_str().unwrap(),
            fb.to_str().unwrap(),
            "--target",
            &target,
            "--max",
        ])
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("accepted=3000"), "{stderr}");
    assert!(
        stderr.contains("a.ndjson:1501"),
        "the bad line is reported with its place: {stderr}"
    );
    crate::http::wait_lbs_records(addr, 3000).await;
}
