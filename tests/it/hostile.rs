//! Hostile and broken clients against a real server: half-sent headers, connection floods from
//! one address and from many, stalled bodies, token guessing over HTTP and the PostgreSQL wire.
//! Several loopback addresses (127.0.0.x) stand in for several clients.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use throng::config::{Config, TokenConfig};
use throng::server;

use crate::serve::{config, fast};

/// A TCP connection to `to` from the loopback address `from` (127.0.0.x).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), s.connect(to))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Everything the server sends until it closes (bounded).
async fn read_all(s: &mut TcpStream, limit: Duration) -> Result<String, &'static str> {
    let mut buf = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut buf)).await {
        Ok(_) => Ok(String::from_utf8_lossy(&buf).into_owned()),
        Err(_) => Err("still open"),
    }
}

/// One request with `Connection: close` from `from`; the whole reply.
async fn get_from(from: &str, to: SocketAddr, path: &str, token: Option<&str>) -> String {
    let mut s = connect_from(from, to).await;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {to}\r\n{auth}Connection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_all(&mut s, Duration::from_secs(10))
        .await
        .expect("a reply in time")
}

fn status(reply: &str) -> u16 {
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {reply:?}"))
}

fn limited(mut cfg: Config) -> Config {
    cfg.limits.header_timeout = Duration::from_millis(800);
    cfg.limits.max_connections = 12;
    cfg.limits.connections_per_address = 8;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_are_closed_after_the_header_timeout_and_caps_refuse_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = server::start(
        limited(fast(config())),
        "127.0.0.1:0".parse().unwrap(),
        dir.path(),
    )
    .await
    .unwrap();
    let a = server.addr;
    // Slowloris: eight connections from one address that send half a header and stop.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut s = connect_from("127.0.0.1", a).await;
        s.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    // Let the accept loop take all eight before counting on them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ninth = get_from("127.0.0.1", a, "/api/health", None).await;
    assert_eq!(status(&ninth), 429, "{ninth}");
    assert!(ninth.contains("limits.connections_per_address"), "{ninth}");
    assert!(ninth.to_lowercase().contains("retry-after: 5"), "{ninth}");
    // Another address still gets in, until the total is reached.
    let mut others = Vec::new();
    for _ in 0..4 {
        let mut s = connect_from("127.0.0.2", a).await;
        s.write_all(b"GET /api/health HTTP/1.1\r\n").await.unwrap();
        others.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let full = get_from("127.0.0.3", a, "/api/health", None).await;
    assert_eq!(status(&full), 503, "{full}");
    assert!(full.contains("limits.max_connections"), "{full}");

    // Within the header timeout (plus the check's slack) the server hangs up on every one.
    let started = Instant::now();
    for s in stalled.iter_mut().chain(others.iter_mut()) {
        let left = Duration::from_secs(5).saturating_sub(started.elapsed());
        let got = read_all(s, left).await;
        assert!(
            got.is_ok(),
            "a half-sent header was still open {:?} later",
            started.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // Their places are free again.
    let ok = get_from("127.0.0.1", a, "/api/health", None).await;
    assert_eq!(status(&ok), 200, "{ok}");
    let metrics = get_from("127.0.0.1", a, "/metrics", None).await;
    let refused = |reason: &str| {
        crate::support::metric(
            &metrics,
            &format!("throng_connections_refused_total{{listener=\"http\",reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(refused("header_timeout") >= 12.0, "{metrics}");
    assert!(refused("connections_per_address") >= 1.0);
    assert!(refused("max_connections") >= 1.0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast(config());
    // The idle timeout never undercuts a query: here sql.timeout 1 s + 5 s.
    cfg.limits.idle_timeout = Duration::from_secs(1);
    cfg.sql.timeout = Duration::from_secs(1);
    let server = server::start(cfg, "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let mut s = connect_from("127.0.0.1", server.addr).await;
    s.write_all(b"POST /api/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"kind\":")
        .await
        .unwrap();
    let started = Instant::now();
    let got = read_all(&mut s, Duration::from_secs(15)).await;
    let took = started.elapsed();
    assert!(got.is_ok(), "a stalled body was still open after 15 s");
    assert!(
        took >= Duration::from_secs(5),
        "closed after {took:?}, before sql.timeout + 5 s"
    );
    server.shutdown().await.unwrap();
}

fn tokens() -> Vec<TokenConfig> {
    ["viewer", "analyst"]
        .iter()
        .map(|r| TokenConfig {
            name: format!("{r}-holder"),
            role: r.parse().unwrap(),
            token: format!("{r}-secret-token"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_bad_tokens_from_one_address_get_429_over_http_and_postgres_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast(config());
    cfg.auth.tokens = tokens();
    cfg.limits.auth_failures_per_minute = 5;
    let server = server::start_with(
        cfg,
        "127.0.0.1:0".parse().unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
        dir.path(),
    )
    .await
    .unwrap();
    let a = server.addr;
    for i in 0..5 {
        let r = get_from("127.0.0.1", a, "/api/segments", Some(&format!("guess-{i}"))).await;
        assert_eq!(status(&r), 401, "guess {i}: {r}");
    }
    // Over budget: even the right token waits, and is told how long.
    let r = get_from("127.0.0.1", a, "/api/segments", Some("viewer-secret-token")).await;
    assert_eq!(status(&r), 429, "{r}");
    assert!(r.contains("limits.auth_failures_per_minute"), "{r}");
    assert!(r.to_lowercase().contains("retry-after:"), "{r}");
    // Requests without a token (the page, health) are not held up.
    assert_eq!(status(&get_from("127.0.0.1", a, "/api/health", None).await), 200);
    // Another address is not affected.
    let r = get_from("127.0.0.2", a, "/api/segments", Some("viewer-secret-token")).await;
    assert_eq!(status(&r), 200, "{r}");
    let r = get_from("127.0.0.2", a, "/api/segments", Some("guess")).await;
    assert_eq!(status(&r), 401, "{r}");

    // The PostgreSQL wire shares the count: 127.0.0.1 is refused before its password is read,
    // 127.0.0.2 logs in.
    let pg = server.pg_addr.unwrap();
    let login = |host: &'static str| async move {
        let conf = format!(
            "host=127.0.0.1 port={} user=analyst password=analyst-secret-token dbname=throng",
            pg.port()
        );
        let socket = connect_from(host, pg).await;
        conf.parse::<tokio_postgres::Config>()
            .unwrap()
            .connect_raw(socket, tokio_postgres::NoTls)
            .await
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    };
    let refused = login("127.0.0.1")
        .await
        .expect_err("an address over its budget is refused");
    assert!(refused.contains("too many failed logins"), "{refused}");
    login("127.0.0.2").await.expect("another address logs in");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_port_caps_connections_and_closes_clients_that_never_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = server::start_with(
        limited(fast(config())),
        "127.0.0.1:0".parse().unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
        dir.path(),
    )
    .await
    .unwrap();
    let pg = server.pg_addr.unwrap();
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(connect_from("127.0.0.1", pg).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The ninth from the same address gets a PostgreSQL ErrorResponse (53300) naming the limit.
    let mut ninth = connect_from("127.0.0.1", pg).await;
    let got = read_all(&mut ninth, Duration::from_secs(5))
        .await
        .expect("answered and closed");
    assert!(got.starts_with('E'), "{got:?}");
    assert!(
        got.contains("53300") && got.contains("limits.connections_per_address"),
        "{got:?}"
    );
    let started = Instant::now();
    for s in &mut silent {
        let left = Duration::from_secs(5).saturating_sub(started.elapsed());
        assert!(
            read_all(s, left).await.is_ok(),
            "a silent client was still open {:?} later",
            started.elapsed()
        );
    }
    // And a real client logs in afterwards (demo mode: no tokens).
    let conf = format!(
        "host=127.0.0.1 port={} user=analyst dbname=throng connect_timeout=5",
        pg.port()
    );
    let (client, conn) = tokio_postgres::connect(&conf, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let rows = client.simple_query("SELECT 1").await.unwrap();
    assert!(!rows.is_empty());
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    server.shutdown().await.unwrap();
}

/// Pings from `n` phones scattered over the Bund, now: at res 13 nearly every phone is a cell
/// of its own, so a heatmap frame is most of a megabyte.
fn scattered(rng: &mut crate::support::Rng, n: usize) -> String {
    let now = throng::model::now_ms();
    (0..n)
        .map(|i| {
            format!(
                "{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"p{i}\",\"lat\":{:.6},\"lng\":{:.6}}}\n",
                rng.range(31.2320, 31.2480),
                rng.range(121.4780, 121.4950)
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_that_stops_reading_big_frames_is_dropped_and_the_others_stay_on_time() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        "scenario = \"fixtures/bund\"\n[h3]\nresolution = 13\n[window]\nsize = \"1s\"\nslide = \"1s\"\n\
         allowed_lateness = \"100ms\"\nidle_timeout = \"300ms\"\n[privacy]\nk = 0\n",
    )
    .unwrap();
    let (child, addr) = crate::support::serving(crate::support::serve_command(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    ));
    let subscribe = r#"{"subscribe":{"res":13,"bbox":[121.47,31.23,121.50,31.25]}}"#;

    // The viewer that reads.
    let mut live = crate::live::connect(addr).await;
    futures_util::SinkExt::send(&mut live, Message::Text(subscribe.into()))
        .await
        .unwrap();
    // The viewer that stops: a small receive buffer, a subscription, and then no reads at all.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut stalled = tokio::time::timeout(Duration::from_secs(5), sock.connect(addr))
        .await
        .unwrap()
        .unwrap();
    stalled
        .write_all(
            b"GET /ws/live HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = [0u8; 129];
    let n = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"));
    // A masked client text frame carrying the subscription (mask of zeros).
    let mut frame = vec![0x81, 0x80 | subscribe.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(subscribe.as_bytes());
    stalled.write_all(&frame).await.unwrap();
    let stalled_at = Instant::now();

    // Feeds: 10,000 scattered phones twice a second, on a task of their own.
    let feeding = tokio::spawn(async move {
        let mut rng = crate::support::Rng(0x5107);
        loop {
            let (s, v) =
                crate::http::request(addr, "POST", "/api/ingest", None, &scattered(&mut rng, 10_000)).await;
            assert_eq!(s, 202, "{v}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    // Read as a viewer does; watch the server's metrics for the drop.
    let mut finals: Vec<(i64, i64, usize)> = Vec::new(); // window start, close → arrival (ms), bytes
    let mut dropped_after = None;
    let mut last_poll = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let m = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("the reading viewer gets frames")
            .expect("open")
            .expect("a frame");
        if let Message::Text(t) = m {
            let arrived = throng::model::now_ms();
            let f: serde_json::Value = serde_json::from_str(&t).unwrap();
            if f["type"] == "heatmap"
                && f["final"] == true
                && f["cells"].as_array().is_some_and(|c| c.len() > 1_000)
            {
                let closed = f["closed_at"].as_i64().unwrap();
                finals.push((f["window_start"].as_i64().unwrap(), arrived - closed, t.len()));
            }
        }
        if last_poll.elapsed() > Duration::from_millis(200) {
            last_poll = Instant::now();
            let (_, page) = crate::http::request_text(addr, "GET", "/metrics", None, "").await;
            if dropped_after.is_none()
                && crate::support::metric(&page, "throng_live_clients_dropped_total") == Some(1.0)
            {
                dropped_after = Some(stalled_at.elapsed());
            }
        }
        // Three more seconds of frames once the stalled viewer is gone.
        if dropped_after.is_some_and(|d| stalled_at.elapsed() > d + Duration::from_secs(3)) {
            break;
        }
    }
    feeding.abort();
    let dropped_after = dropped_after.expect("the viewer that stopped reading was dropped");
    // The dropped viewer's task is gone (its close is bounded at 1 s after the drop is counted).
    let mut clients = None;
    for _ in 0..50 {
        let (_, page) = crate::http::request_text(addr, "GET", "/metrics", None, "").await;
        clients = crate::support::metric(&page, "throng_live_clients");
        if clients == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(clients, Some(1.0), "only the reader is left");
    // Its connection is closed: reading now drains what was buffered and ends.
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "the stalled viewer's socket was closed by the server"
    );

    assert!(
        finals.len() >= 5,
        "final frames while the stalled viewer was held: {}",
        finals.len()
    );
    for w in finals.windows(2) {
        assert_eq!(
            w[1].0 - w[0].0,
            1_000,
            "the reading viewer missed no window: {:?}",
            finals.iter().map(|f| f.0).collect::<Vec<_>>()
        );
    }
    let mut lat: Vec<i64> = finals.iter().map(|f| f.1).collect();
    lat.sort_unstable();
    let max = *lat.last().unwrap();
    // Blocked behind the stalled viewer, a frame would wait out its 5 s write timeout.
    assert!(max < 5_000, "a frame to the reading viewer waited {max} ms");
    eprintln!(
        "slow viewer: dropped {:.1} s after it stopped reading; reading viewer: {} final frames of ~{} kB, close→arrival p50 {} ms, max {} ms; stalled socket held {} kB unread",
        dropped_after.as_secs_f64(),
        finals.len(),
        finals.iter().map(|f| f.2).max().unwrap_or(0) / 1000,
        lat[lat.len() / 2],
        max,
        sink.len() / 1000
    );
    drop(child);
}

/// A startup packet, then a Bind whose parameter claims more bytes than the frame holds: pgwire
/// 0.41's decoder panics on it (found by `fuzz.rs`).
pub const MALFORMED_BIND: &[u8] =
    b"\x00\x00\x00&\x00\x03\x00\x00user\x00analyst\x00database\x00throng\x00\x00\
B\x00\x00\x00\x13\x00\x00\x00\x01\x00\x00\x00\x01options\x00\x00\x00\x011\x00\x00";

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_postgres_frame_costs_only_its_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, port) =
        crate::support::serving_pg(crate::support::serve_command(&dir.path().join("data"), &[]));
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(MALFORMED_BIND).await.unwrap();
    let mut sink = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
    assert!(ended.is_ok(), "the connection that sent it is closed");
    // Everyone else is served as before: a real psql runs a query.
    let out = crate::history::psql(port, "analyst", "", &["-c", "SELECT 1 + 1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    // Nested function calls make the SQL parser backtrack in time doubling per level: refused
    // before it parses, over the simple protocol (psql) and the extended one (a prepare).
    let nested = format!("SELECT {}1{}", "abs(".repeat(40), ")".repeat(40));
    let out = crate::history::psql(port, "analyst", "", &["-c", &nested]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("40 parentheses deep"), "{e}");
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=analyst dbname=throng"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let prepared = tokio::time::timeout(Duration::from_secs(10), client.prepare(&nested)).await;
    let err = match prepared.expect("refused in time") {
        Ok(_) => panic!("a query nested 40 deep was prepared"),
        Err(e) => e,
    };
    let msg = err
        .as_db_error()
        .map_or_else(|| err.to_string(), |d| d.message().to_owned());
    assert!(msg.contains("parentheses deep"), "{msg}");
    drop(client);
    let _ = conn.await;
    let (_, page) = crate::http::request_text(addr, "GET", "/metrics", None, "").await;
    assert_eq!(
        crate::support::metric(
            &page,
            "throng_connections_refused_total{listener=\"pgwire\",reason=\"malformed\"}"
        ),
        Some(1.0),
        "counted as a malformed client"
    );
    drop(child);
}
