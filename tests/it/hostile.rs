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
