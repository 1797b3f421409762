//! Who may do what: every route and both WebSockets against every role, no token and a wrong token.

use throng::config::TokenConfig;
use throng::server;

use crate::http::request;
use crate::serve::{config, fast};

const ROLES: [&str; 5] = ["feed", "viewer", "organiser", "analyst", "admin"];

fn token(role: &str) -> String {
    format!("{role}-secret-token")
}

#[tokio::test]
async fn every_route_checks_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast(config());
    cfg.auth.tokens = ROLES
        .iter()
        .map(|r| TokenConfig {
            name: format!("{r}-holder"),
            role: r.parse().unwrap(),
            token: token(r),
        })
        .collect();
    let server = server::start(cfg, "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let a = server.addr;
    let now = throng::model::now_ms();
    let ping =
        format!("{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"x\",\"lat\":31.2405,\"lng\":121.4832}}\n");
    let view: &[&str] = &["viewer", "organiser", "admin"];
    // (method, path, body, roles allowed; empty = open to all)
    let routes: Vec<(&str, &str, String, &[&str])> = vec![
        ("POST", "/api/ingest", ping.clone(), &["feed", "admin"]),
        ("GET", "/api/segments", String::new(), view),
        ("GET", "/api/segments/chenyi-square", String::new(), view),
        ("GET", "/api/alerts", String::new(), view),
        ("GET", "/api/scenario", String::new(), view),
        (
            "POST",
            "/api/cells/boundaries",
            "[\"8b309958ac36fff\"]".into(),
            view,
        ),
        (
            "PUT",
            "/api/segments/chenyi-square/thresholds",
            "{\"capacity\":5000}".into(),
            &["organiser", "admin"],
        ),
        (
            "GET",
            "/api/thresholds/audit",
            String::new(),
            &["organiser", "admin"],
        ),
        ("POST", "/api/segments/reload", String::new(), &["admin"]),
        (
            "POST",
            "/api/sql",
            "{\"sql\":\"SELECT count(*) FROM hex_windows\"}".into(),
            &["analyst", "admin"],
        ),
        ("GET", "/api/health", String::new(), &[]),
        ("GET", "/metrics", String::new(), &[]),
        ("GET", "/", String::new(), &[]),
    ];
    for (method, path, body, allowed) in &routes {
        let open = allowed.is_empty();
        let (s, v) = request(a, method, path, None, body).await;
        if open {
            assert_eq!(s, 200, "{method} {path} is open");
            continue;
        }
        assert_eq!(s, 401, "{method} {path} without a token");
        assert!(
            v["error"].as_str().unwrap().contains("token"),
            "{method} {path}: {v}"
        );
        assert_eq!(
            request(a, method, path, Some("not-a-token"), body).await.0,
            401,
            "{method} {path} wrong token"
        );
        for role in ROLES {
            let (s, v) = request(a, method, path, Some(&token(role)), body).await;
            if allowed.contains(&role) {
                assert!((200..300).contains(&s), "{method} {path} as {role}: {s} {v}");
            } else {
                assert_eq!(s, 403, "{method} {path} as {role}: {v}");
                assert!(
                    v["error"].as_str().unwrap().contains(role),
                    "the reason names the role: {v}"
                );
            }
        }
    }
    for (path, allowed) in [("/ws/live", view), ("/ws/ingest", &["feed", "admin"][..])] {
        let url = |t: Option<String>| match t {
            Some(t) => format!("ws://{a}{path}?token={t}"),
            None => format!("ws://{a}{path}"),
        };
        let status = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
            Ok(_) => 101,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            status(tokio_tungstenite::connect_async(url(None)).await.map(|_| ())),
            401,
            "{path}"
        );
        for role in ROLES {
            let got = status(
                tokio_tungstenite::connect_async(url(Some(token(role))))
                    .await
                    .map(|_| ()),
            );
            let want = if allowed.contains(&role) { 101 } else { 403 };
            assert_eq!(got, want, "{path} as {role}");
        }
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn raw_device_ids_appear_nowhere_on_disk_or_in_logs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let cfg = dir.path().join("t.toml");
    std::fs::write(&cfg, "scenario = \"fixtures/bund\"\n[window]\nsize = \"2s\"\nslide = \"1s\"\nidle_timeout = \"500ms\"\nallowed_lateness = \"100ms\"\n[durability]\ncheckpoint_every = \"200ms\"\n").unwrap();
    let mut cmd = crate::support::serve_command(&data, &["--config", cfg.to_str().unwrap()]);
    cmd.env("RUST_LOG", "debug");
    // `serving` sends the child's standard error to a file of its own; that file is the log.
    let (mut child, addr) = crate::support::serving(cmd);
    let now = throng::model::now_ms();
    let mut body = String::new();
    for i in 0..100 {
        body.push_str(&format!("{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"PRIVATE-ID-{i}\",\"lat\":31.2405,\"lng\":121.4832}}\n"));
    }
    // Bad records carrying an id: their rejection reasons must not echo it.
    body.push_str(
        "{\"kind\":\"lbs\",\"ts\":1767196800000,\"device\":\"PRIVATE-ID-bad\",\"lat\":95,\"lng\":121}\n",
    );
    body.push_str(&format!(
        "{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"PRIVATE-ID-{}\",\"lat\":31,\"lng\":121}}\n",
        "x".repeat(200)
    ));
    let (s, v) = request(addr, "POST", "/api/ingest", None, &body).await;
    assert_eq!(s, 202);
    assert!(
        !v.to_string().contains("PRIVATE-ID"),
        "rejections do not echo device ids: {v}"
    );
    crate::http::wait_lbs_records(addr, 100).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await; // windows close, checkpoints run
    let (_, metrics) = crate::http::request_text(addr, "GET", "/metrics", None, "").await;
    assert!(!metrics.contains("PRIVATE-ID"));
    let _ = child.0.kill();
    let _ = child.0.wait();
    std::fs::copy(child.1.as_ref().expect("stderr kept").path(), &log).unwrap();
    drop(child);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.lines().count() > 5 && logged.contains("DEBUG"),
        "the server's debug log was captured: {logged}"
    );
    let mut files = vec![log.clone()];
    let mut stack = vec![data.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p)
            } else {
                files.push(p)
            }
        }
    }
    assert!(
        files.len() >= 3,
        "log, WAL and checkpoint were written: {files:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|x| x == "parquet")),
        "history was written before the checkpoints: {files:?}"
    );
    for f in files {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).to_string();
        assert!(!text.contains("PRIVATE-ID"), "raw device id in {}", f.display());
    }
}

#[tokio::test]
async fn limits_answer_429_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast(config());
    cfg.limits.ws_per_address = 2;
    cfg.limits.ingest_records_per_s = 100.0;
    let server = server::start(cfg, "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let a = server.addr;
    let url = format!("ws://{a}/ws/live");
    let first = tokio_tungstenite::connect_async(&url).await.unwrap();
    let _second = tokio_tungstenite::connect_async(&url).await.unwrap();
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 429),
        other => panic!("third socket from one address: {:?}", other.map(|_| ())),
    }
    drop(first);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio_tungstenite::connect_async(&url).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed socket gives its slot back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let now = throng::model::now_ms();
    let lines = |k: usize, n: usize| -> String {
        (0..n).map(|i| format!("{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"r{k}-{i}\",\"lat\":31.2405,\"lng\":121.4832}}\n")).collect()
    };
    let body = |k: usize| lines(k, 150);
    // More than two seconds' worth in one request could never be taken: 413 says to split it,
    // and the bucket is left as it was.
    let (s, v) = request(a, "POST", "/api/ingest", None, &lines(0, 201)).await;
    assert_eq!(s, 413, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("201 records") && e.contains("at most 200") && e.contains("split it"),
        "{v}"
    );
    assert_eq!(
        request(a, "POST", "/api/ingest", None, &body(1)).await.0,
        202,
        "within the two-second burst"
    );
    let (s, v) = request(a, "POST", "/api/ingest", None, &body(2)).await;
    assert_eq!(s, 429, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("limits.ingest_records_per_s"),
        "{v}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_and_the_postgresql_wire_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl makes a test certificate");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let mut cfg = crate::serve::fast(crate::serve::config());
    cfg.tls.cert = Some(cert.clone());
    cfg.tls.key = Some(key);
    cfg.auth.tokens = vec![throng::config::TokenConfig {
        name: "ana".into(),
        role: throng::model::Role::Analyst,
        token: "analyst-secret".into(),
    }];
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let data = dir.path().join("data");
    let server = server::start_with(cfg, any, Some(any), &data).await.unwrap();
    assert!(server.tls);
    let (addr, pg) = (server.addr, server.pg_addr.unwrap().port());
    let (https, plain, wire) = tokio::task::spawn_blocking(move || {
        let curl = |url: String, extra: &[&str]| {
            std::process::Command::new("curl")
                .args(["-sS", "--max-time", "5"])
                .args(extra)
                .arg(url)
                .output()
                .expect("curl")
        };
        let https = curl(
            format!("https://{addr}/api/health"),
            &["--cacert", cert.to_str().unwrap()],
        );
        let plain = curl(format!("http://{addr}/api/health"), &[]);
        let wire = crate::history::psql_with(
            pg,
            "analyst",
            "analyst-secret",
            &[("PGSSLMODE", "require")],
            &["-c", "SELECT 41 + 1", "-c", "\\conninfo"],
        );
        (https, plain, wire)
    })
    .await
    .unwrap();
    assert!(
        https.status.success(),
        "{}",
        String::from_utf8_lossy(&https.stderr)
    );
    let health: serde_json::Value = serde_json::from_slice(&https.stdout).unwrap();
    assert!(health["engine"].is_object(), "{health}");
    assert!(
        !plain.status.success(),
        "plain HTTP must not be served on the TLS port"
    );
    let out = String::from_utf8_lossy(&wire.stdout);
    assert!(wire.status.success(), "{}", String::from_utf8_lossy(&wire.stderr));
    assert!(out.starts_with("42\n"), "{out}");
    assert!(out.contains("SSL connection"), "{out}");
    server.shutdown().await.unwrap();
}

/// Opens a WebSocket with this `Origin` (None: none sent); the HTTP status of the answer.
async fn upgrade_status(addr: std::net::SocketAddr, path: &str, origin: Option<&str>) -> (u16, String) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error;
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    let connected = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("upgrade answered within 5 s");
    match connected {
        Ok((_ws, resp)) => (resp.status().as_u16(), String::new()),
        Err(Error::Http(resp)) => (
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("{path}: {e}"),
    }
}

#[tokio::test]
async fn websockets_refuse_other_sites_origins_and_take_own_listed_and_originless_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast(config());
    cfg.auth.allowed_origins = vec!["http://grafana.example:3000".to_owned()];
    let s = server::start(cfg, "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let addr = s.addr;
    let own = format!("http://{addr}");
    for path in ["/ws/live", "/ws/ingest"] {
        let (status, body) = upgrade_status(addr, path, Some("http://evil.example")).await;
        assert_eq!(status, 403, "{path}: a page on another site must not open it");
        assert!(
            body.contains("allowed_origins"),
            "{path}: the refusal names the fix: {body}"
        );
        assert_eq!(upgrade_status(addr, path, Some("null")).await.0, 403, "{path}");
        assert_eq!(
            upgrade_status(addr, path, Some(&own)).await.0,
            101,
            "{path}: the dashboard's own origin"
        );
        assert_eq!(
            upgrade_status(addr, path, None).await.0,
            101,
            "{path}: feeds and tools send no Origin"
        );
        assert_eq!(
            upgrade_status(addr, path, Some("http://grafana.example:3000"))
                .await
                .0,
            101,
            "{path}: a listed origin"
        );
    }
    s.shutdown().await.unwrap();
}
