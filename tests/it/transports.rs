//! Ingest transports and bad input over real sockets: gzip, limits, WebSocket ingest with acks.

use std::io::Write;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use throng::server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::http::request;
use crate::serve::{config, fast};

async fn raw(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "{head}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // A server refusing a body by its Content-Length may answer and close before the body is all
    // written: a failed write or a reset after the answer is that refusal, not a test failure.
    let _ = s.write_all(body).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(buf.len() >= 12, "no answer from the server");
    let text = String::from_utf8_lossy(&buf).to_string();
    (text[9..12].parse().unwrap(), text)
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn gzip_bodies_are_accepted_and_bombs_and_oversize_bodies_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = server::start(fast(config()), "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let now = throng::model::now_ms();
    let lines: String = (0..20)
        .map(|i| {
            format!(
                "{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"g{i}\",\"lat\":31.2405,\"lng\":121.4832}}\n"
            )
        })
        .collect();
    let head = "POST /api/ingest HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n";
    let (s, text) = raw(server.addr, head, &gzip(lines.as_bytes())).await;
    assert_eq!(s, 202, "{text}");
    assert!(text.contains("\"accepted\":20"), "{text}");
    // 64 MB of zeros compress to ~64 KB: refused without expanding it all.
    let bomb = gzip(&vec![b'\n'; 64 << 20]);
    let (s, text) = raw(server.addr, head, &bomb).await;
    assert_eq!(s, 413, "{text}");
    assert!(text.contains("expands past"), "{text}");
    let (s, text) = raw(server.addr, head, b"not gzip at all").await;
    assert_eq!(s, 400, "{text}");
    let big = vec![b' '; 17 << 20];
    let (s, text) = raw(server.addr, "POST /api/ingest HTTP/1.1\r\nHost: x\r\n", &big).await;
    assert_eq!(s, 413, "{text}");
    assert!(text.contains("\"error\""), "errors are JSON: {text}");
    // A line over the line limit is that line's problem only.
    let long = format!(
        "{{\"kind\":\"lbs\",\"pad\":\"{}\"}}\n{}",
        "x".repeat(70_000),
        lines.lines().next().unwrap()
    );
    let (s, v) = request(server.addr, "POST", "/api/ingest", None, &long).await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)));
    assert!(v["rejected"][0]["error"]
        .as_str()
        .unwrap()
        .contains("over the 65536-byte limit"));
    // The server is unharmed.
    assert_eq!(request(server.addr, "GET", "/api/health", None, "").await.0, 200);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn websocket_ingest_acknowledges_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let server = server::start(fast(config()), "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/ingest", server.addr))
        .await
        .unwrap();
    let now = throng::model::now_ms();
    for f in 1..=5u64 {
        let frame: String = (0..10)
            .map(|i| format!("{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"w{f}-{i}\",\"lat\":31.2405,\"lng\":121.4832}}\n"))
            .chain(std::iter::once("{\"kind\":\"lbs\"}\n".to_string()))
            .collect();
        ws.send(Message::Text(frame.into())).await.unwrap();
    }
    ws.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    let mut acks = Vec::new();
    while acks.len() < 6 {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            acks.push(serde_json::from_str::<serde_json::Value>(&t).unwrap());
        }
    }
    for (i, a) in acks[..5].iter().enumerate() {
        assert_eq!(a["frame"], i as u64 + 1, "one ack per frame, in order");
        assert_eq!(a["accepted"], 10);
        assert_eq!(a["rejected"][0]["line"], 11);
    }
    assert!(acks[5]["error"].as_str().unwrap().contains("binary"));
    crate::http::wait_lbs_records(server.addr, 50).await;
    server.shutdown().await.unwrap();
}

/// Status, Retry-After and body of one POST.
async fn post_raw(addr: std::net::SocketAddr, body: &str) -> (u16, Option<String>, String) {
    let (status, text) = raw(addr, "POST /api/ingest HTTP/1.1\r\nHost: x\r\n", body.as_bytes()).await;
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let retry = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("retry-after:")
            .map(|v| v.trim().to_string())
    });
    (status, retry, rest.to_string())
}

/// A server whose ingest queue holds one batch, with hour-long windows that stay open (nothing
/// closes or turns late while feeds compete for the queue).
async fn one_batch_queue_server(dir: &std::path::Path) -> server::Server {
    let mut cfg = fast(config());
    cfg.ingest.queue_batches = 1;
    cfg.window.size = Duration::from_secs(3600);
    cfg.window.slide = Duration::from_secs(3600);
    cfg.window.allowed_lateness = Duration::from_secs(7200);
    server::start(cfg, "127.0.0.1:0".parse().unwrap(), dir)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_takes_nothing_half() {
    let dir = tempfile::tempdir().unwrap();
    let server = one_batch_queue_server(dir.path()).await;
    let addr = server.addr;
    let now = throng::model::now_ms();
    let mut tasks = Vec::new();
    for t in 0..6 {
        tasks.push(tokio::spawn(async move {
            let (mut accepted, mut busy) = (0u64, 0u64);
            for r in 0..12 {
                let body: String = (0..3000)
                    .map(|i| format!("{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"b{t}-{r}-{i}\",\"lat\":31.2405,\"lng\":121.4832}}\n"))
                    .collect();
                let (status, retry, text) = post_raw(addr, &body).await;
                match status {
                    202 => accepted += serde_json::from_str::<serde_json::Value>(&text).unwrap()["accepted"].as_u64().unwrap(),
                    503 => {
                        assert!(retry.is_some(), "503 carries Retry-After");
                        assert!(text.contains("nothing from this request was taken"), "{text}");
                        busy += 1;
                    }
                    other => panic!("unexpected {other}: {text}"),
                }
            }
            (accepted, busy)
        }));
    }
    let (mut accepted, mut busy) = (0, 0);
    for t in tasks {
        let (a, b) = t.await.unwrap();
        accepted += a;
        busy += b;
    }
    eprintln!("accepted {accepted} records, {busy} requests told to retry");
    assert!(busy > 0, "a one-batch queue under six eager feeds fills up");
    // Exactly what was acknowledged reaches the engine: no request half-taken.
    crate::http::wait_lbs_records(addr, accepted).await;
    assert_eq!(accepted % 3000, 0);
    server.shutdown().await.unwrap();
}

/// WebSocket feeds while HTTP feeds keep a one-batch queue full: the socket waits for room, so
/// every frame is acknowledged — late, but in order and whole — and what reaches the engine is
/// exactly what was acknowledged, over both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_ingest_under_a_full_queue_acknowledges_every_frame_late_but_whole() {
    let dir = tempfile::tempdir().unwrap();
    let server = one_batch_queue_server(dir.path()).await;
    let addr = server.addr;
    let now = throng::model::now_ms();
    let line = move |dev: String| {
        format!("{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"{dev}\",\"lat\":31.2405,\"lng\":121.4832}}\n")
    };
    let http = tokio::spawn(async move {
        let (mut accepted, mut busy) = (0u64, 0u64);
        for r in 0..30 {
            let body: String = (0..3000).map(|i| line(format!("h{r}-{i}"))).collect();
            let (status, _, text) = post_raw(addr, &body).await;
            match status {
                202 => accepted += 3000,
                503 => busy += 1,
                other => panic!("unexpected {other}: {text}"),
            }
        }
        (accepted, busy)
    });
    const FRAMES: u64 = 40;
    let mut sockets = Vec::new();
    for c in 0..3 {
        sockets.push(tokio::spawn(async move {
            let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/ingest"))
                .await
                .unwrap();
            let (mut tx, mut rx) = ws.split();
            let send = tokio::spawn(async move {
                for f in 0..FRAMES {
                    let frame: String = (0..200).map(|i| line(format!("w{c}-{f}-{i}"))).collect();
                    tx.send(Message::Text(frame.into())).await.unwrap();
                }
                tx
            });
            let mut acks = Vec::new();
            while (acks.len() as u64) < FRAMES {
                let m = tokio::time::timeout(Duration::from_secs(30), rx.next())
                    .await
                    .expect("an ack in time")
                    .unwrap()
                    .unwrap();
                if let Message::Text(t) = m {
                    acks.push(serde_json::from_str::<serde_json::Value>(&t).unwrap());
                }
            }
            let _ = send.await;
            for (i, a) in acks.iter().enumerate() {
                assert_eq!(a["frame"], i as u64 + 1, "client {c}: acks in order: {a}");
                assert_eq!(a["accepted"], 200, "client {c}: frame {} whole: {a}", i + 1);
            }
        }));
    }
    for s in sockets {
        s.await.unwrap();
    }
    let (accepted, busy) = http.await.unwrap();
    eprintln!("HTTP: {accepted} records accepted, {busy} requests told to retry");
    assert!(
        busy > 0,
        "the queue was never full: the test would not test waiting"
    );
    crate::http::wait_lbs_records(addr, accepted + 3 * FRAMES * 200).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_sends_its_feed_to_a_server_at_a_rate() {
    let dir = tempfile::tempdir().unwrap();
    let server = server::start(fast(config()), "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let url = format!("http://{}", server.addr);
    let scenario = crate::support::root().join("fixtures/bund");
    let file = dir.path().join("same.ndjson");
    let (sent, written) = tokio::task::spawn_blocking(move || {
        let common = [
            "simulate",
            "--scenario",
            scenario.to_str().unwrap(),
            "--devices",
            "400",
            "--duration",
            "20",
            "--seed",
            "5",
        ];
        let sent = crate::support::throng(&[&common[..], &["--target", &url, "--rate", "20000"]].concat());
        let written = crate::support::throng(&[&common[..], &["--out", file.to_str().unwrap()]].concat());
        assert!(written.status.success());
        (
            sent,
            std::fs::read_to_string(&file).unwrap().lines().count() as u64,
        )
    })
    .await
    .unwrap();
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    assert!(written > 100);
    // The server took exactly the records the same simulation writes to a file.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, h) = request(server.addr, "GET", "/api/health", None, "").await;
        let got: u64 = h["engine"]["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["records"].as_u64().unwrap())
            .sum();
        if got == written {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server has {got} of {written}: {h}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown().await.unwrap();
}
