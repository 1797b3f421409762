//! `throng serve` over real HTTP on an ephemeral loopback port.

use std::time::Duration;

use throng::app;
use throng::config::Config;

fn config() -> Config {
    Config {
        scenario: crate::support::root().join("fixtures/bund"),
        ..Default::default()
    }
}

async fn post(addr: std::net::SocketAddr, path: &str, body: String) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status: u16 = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf)
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn ingest_accepts_good_lines_rejects_bad_ones_and_windows_close_on_idle() {
    let mut cfg = config();
    cfg.window.size = Duration::from_secs(1);
    cfg.window.slide = Duration::from_secs(1);
    cfg.window.allowed_lateness = Duration::from_millis(100);
    cfg.window.idle_timeout = Duration::from_millis(300);
    let server = app::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let now = app::now_ms();
    let body = format!(
        "{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"a\",\"lat\":31.2405,\"lng\":121.4832}}\n\
         {{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"b\",\"lat\":91,\"lng\":121.4832}}\n\
         not json\n\
         {{\"kind\":\"counter\",\"ts\":{now},\"sensor\":\"enr-xizang-cam\",\"in\":3,\"out\":1}}\n"
    );
    let (status, v) = post(server.addr, "/api/ingest", body).await;
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
        let h: serde_json::Value = serde_json::from_str(&get(server.addr, "/api/health").await).unwrap();
        if h["engine"]["windows_closed"].as_u64().unwrap_or(0) >= 1 {
            let sources = h["engine"]["sources"].as_array().unwrap();
            assert!(sources.iter().any(|s| s["source"] == "lbs" && s["records"] == 1));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "window never closed: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = get(server.addr, "/metrics").await;
    assert!(metrics.contains("throng_windows_closed_total"), "{metrics}");
    assert!(metrics.contains("throng_ingest_rejected_total"), "{metrics}");
    server.shutdown().await.unwrap();
}
