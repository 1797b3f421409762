//! Late data through a server process: a record whose oldest window has closed is counted per
//! source (`/api/health`, `/metrics`), kept (`late-records.ndjson`, the `late_records` table), and
//! still counted in the windows it belongs to that are open; one too late for every window is
//! counted and kept but in no window.

use std::time::Duration;

use crate::http::{request, request_text, wait_lbs_records};
use crate::recovery::stop;
use crate::support::{metric, query_with, serve_command, serving};

const HOUR: i64 = 3_600_000;
const A: (f64, f64) = (31.2405, 121.4832);
const B: (f64, f64) = (31.2355, 121.4900);

fn ping(ts: i64, device: &str, p: (f64, f64)) -> String {
    format!(
        "{{\"kind\":\"lbs\",\"ts\":{ts},\"device\":\"{device}\",\"lat\":{},\"lng\":{}}}\n",
        p.0, p.1
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn late_records_on_the_server_path_are_counted_kept_queryable_and_fill_open_windows() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    // Hopping 20 s / 10 s windows: a record can miss one of its windows and still be in the other.
    std::fs::write(
        &cfg,
        "scenario = \"fixtures/bund\"\n[window]\nsize = \"20s\"\nslide = \"10s\"\nallowed_lateness = \"1s\"\nidle_timeout = \"60s\"\n[privacy]\nk = 0\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let (child, addr) = serving(serve_command(&data, &["--config", cfg.to_str().unwrap()]));
    // A recorded minute two hours ago: the watermark follows the feed (1 s behind its newest).
    let base = (throng::model::now_ms() - 2 * HOUR).div_euclid(HOUR) * HOUR;
    let on_time: String = (0..60)
        .map(|i| ping(base + i * 1_000, &format!("d{}", i % 5), A))
        .collect();
    assert_eq!(request(addr, "POST", "/api/ingest", None, &on_time).await.0, 202);
    wait_lbs_records(addr, 60).await;
    // The watermark is at base + 58 s: the window starting at +30 s has closed, +40 s is open.
    let partly = base + 45_000;
    let hopeless = base - 600_000;
    let late = ping(partly, "late-1", B) + &ping(hopeless, "late-2", B);
    assert_eq!(request(addr, "POST", "/api/ingest", None, &late).await.0, 202);
    wait_lbs_records(addr, 62).await;

    let (_, health) = request(addr, "GET", "/api/health", None, "").await;
    let lbs = health["engine"]["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["source"] == "lbs"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(lbs["late"], 2, "{health}");
    let (_, page) = request_text(addr, "GET", "/metrics", None, "").await;
    assert_eq!(
        metric(&page, "throng_late_records_total{source=\"lbs\"}"),
        Some(2.0),
        "{page}"
    );
    // Queryable while the server runs.
    let q = "SELECT CAST(ts AS BIGINT) AS ts, source, kind, h3, windows_missed FROM late_records ORDER BY ts";
    let b = h3o::LatLng::new(B.0, B.1)
        .unwrap()
        .to_cell(h3o::Resolution::Eleven)
        .to_string();
    let want =
        format!("ts,source,kind,h3,windows_missed\n{hopeless},lbs,lbs,{b},2\n{partly},lbs,lbs,{b},1\n");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = request(
            addr,
            "POST",
            "/api/sql",
            None,
            &serde_json::json!({ "sql": q }).to_string(),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        if v.as_array().map(Vec::len) == Some(2) {
            assert_eq!(v[0]["ts"], hopeless, "{v}");
            assert_eq!(v[1]["windows_missed"], 1, "{v}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "late_records: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(child);

    // Kept on disk, one line each, and the same through the CLI.
    let file = std::fs::read_to_string(data.join("late-records.ndjson")).unwrap();
    assert_eq!(file.lines().count(), 2, "{file}");
    assert_eq!(query_with(&data, Some(&cfg), q), want);
    // The partly late one is in its open window (+40 s) in cell B, and in no closed one.
    let rows = query_with(
        &data,
        Some(&cfg),
        &format!(
            "SELECT CAST(window_start AS BIGINT) - {base} AS start, lbs_devices FROM hex_windows WHERE h3 = '{b}' ORDER BY start"
        ),
    );
    assert_eq!(rows, "start,lbs_devices\n40000,1\n");
}
