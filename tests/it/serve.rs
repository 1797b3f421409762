//! `throng serve` over real HTTP on an ephemeral loopback port.

use std::time::Duration;

use throng::config::Config;
use throng::server;

use crate::http::{request, request_text};

pub fn config() -> Config {
    Config {
        scenario: crate::support::root().join("fixtures/bund"),
        ..Default::default()
    }
}

/// Windows of one second that close as soon as feeds go quiet, so tests run fast.
pub fn fast(mut cfg: Config) -> Config {
    cfg.window.size = Duration::from_secs(1);
    cfg.window.slide = Duration::from_secs(1);
    cfg.window.allowed_lateness = Duration::from_millis(100);
    cfg.window.idle_timeout = Duration::from_millis(300);
    cfg
}

#[tokio::test]
async fn ingest_accepts_good_lines_rejects_bad_ones_and_windows_close_on_idle() {
    let dir = tempfile::tempdir().unwrap();
    let server = server::start(fast(config()), "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let now = throng::model::now_ms();
    let body = format!(
        "{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"a\",\"lat\":31.2405,\"lng\":121.4832}}\n\
         {{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"b\",\"lat\":91,\"lng\":121.4832}}\n\
         not json\n\
         {{\"kind\":\"counter\",\"ts\":{now},\"sensor\":\"enr-xizang-cam\",\"in\":3,\"out\":1}}\n"
    );
    let (status, v) = request(server.addr, "POST", "/api/ingest", None, &body).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["accepted"], 2);
    let rejected = v["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["line"], 2);
    assert!(rejected[0]["error"].as_str().unwrap().contains("field `lat`"));
    assert_eq!(rejected[1]["line"], 3);

    // Every source goes idle; the watermark follows the clock and the window closes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, h) = request(server.addr, "GET", "/api/health", None, "").await;
        if h["engine"]["windows_closed"].as_u64().unwrap_or(0) >= 1 {
            let sources = h["engine"]["sources"].as_array().unwrap();
            assert!(sources.iter().any(|s| s["source"] == "lbs" && s["records"] == 1));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "window never closed: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = request_text(server.addr, "GET", "/metrics", None, "").await;
    assert!(metrics.contains("throng_windows_closed_total"), "{metrics}");
    assert!(metrics.contains("throng_ingest_rejected_total"), "{metrics}");
    server.shutdown().await.unwrap();
}
