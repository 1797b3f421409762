//! A minimal HTTP/1.1 client over a loopback socket, with bounded time, for the server tests.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends one request; returns the status and the body parsed as JSON (Null when not JSON).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let (status, text) = request_text(addr, method, path, token, body).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Writes one raw request and reads the whole reply (bounded in time).
async fn exchange(addr: SocketAddr, req: String) -> Vec<u8> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("reply in time")
        .unwrap();
    buf
}

fn head(method: &str, path: &str, token: Option<&str>, extra: &str, body: &str) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Sends one request with an `Accept` header; returns the status and the body's bytes.
pub async fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    accept: &str,
    body: &str,
) -> (u16, Vec<u8>) {
    let buf = exchange(
        addr,
        head(method, path, token, &format!("Accept: {accept}\r\n"), body),
    )
    .await;
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("head");
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).expect("status line");
    assert!(
        !head.contains("transfer-encoding: chunked"),
        "chunked bodies are not expected here"
    );
    (status, buf[split + 4..].to_vec())
}

/// Sends one request; returns the status and the raw body.
pub async fn request_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let buf = exchange(addr, head(method, path, token, "", body)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = text.get(9..12).and_then(|s| s.parse().ok()).expect("status line");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Waits (at most 20 s) until the engine has taken `n` records from the `lbs` source.
pub async fn wait_lbs_records(addr: SocketAddr, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, h) = request(addr, "GET", "/api/health", None, "").await;
        let got = h["engine"]["sources"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["source"] == "lbs"))
            .and_then(|s| s["records"].as_u64());
        if got == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "engine has {got:?} lbs records, expected {n}: {h}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
