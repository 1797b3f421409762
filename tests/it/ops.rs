//! What operators plug throng into: `/metrics` under a real `promtool check metrics`, the OpenAPI
//! document against the routes the server really answers, JSON logs, `--version`.

use std::collections::BTreeSet;
use std::time::Duration;

use throng::server;
use throng::server::metrics::{Kind, CATALOGUE};

use crate::http::{request, request_text};
use crate::support::{metric, root, serve_command, serving, serving_pg};

fn pings(n: usize, prefix: &str) -> String {
    let now = throng::model::now_ms();
    (0..n)
        .map(|i| {
            format!("{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"{prefix}{i}\",\"lat\":31.2405,\"lng\":121.4832}}\n")
        })
        .collect()
}

/// Runs Debian's `promtool check metrics` on a page (bounded); its exit status and what it said.
fn promtool(page: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian's prometheus package, by the test command)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("write to promtool");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("promtool did not finish in 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// Every family on a page, by its `# TYPE` line.
fn families(page: &str) -> Vec<(String, String)> {
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_with_help_on_every_family_and_latencies_as_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::support::fast_bund_config(dir.path());
    let (_child, addr, pg) = serving_pg(serve_command(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    ));
    // Every kind of traffic, so every family the server can export is on the page: a viewer,
    // records with a refused line and a resend, SQL over HTTP and over the PostgreSQL wire.
    let mut viewer = crate::live::connect(addr).await;
    let body = pings(12, "p") + "{\"kind\":\"lbs\",\"ts\":1,\"device\":\"x\"}\n";
    assert_eq!(request(addr, "POST", "/api/ingest", None, &body).await.0, 202);
    assert_eq!(request(addr, "POST", "/api/ingest", None, &body).await.0, 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let f = crate::live::next_json(&mut viewer).await;
        if f["type"] == "heatmap" && f["final"] == true {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no final heatmap frame");
    }
    let (status, _) = request(addr, "POST", "/api/sql", None, "{\"sql\":\"SELECT 1 AS one\"}").await;
    assert_eq!(status, 200);
    let out = crate::history::psql(pg, "analyst", "", &["-c", "SELECT 2 AS two"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (_, page) = request_text(addr, "GET", "/metrics", None, "").await;
    let (clean, said) = promtool(&page);
    assert!(
        clean && said.trim().is_empty(),
        "promtool check metrics:\n{said}\n--- page ---\n{page}"
    );

    // promtool accepts a page with no HELP at all only as a lint; the catalogue is the contract.
    let exported = families(&page);
    let catalogue: BTreeSet<&str> = CATALOGUE.iter().map(|m| m.name).collect();
    for (name, kind) in &exported {
        assert!(
            catalogue.contains(name.as_str()),
            "{name} is exported but not in the catalogue"
        );
        assert!(page.contains(&format!("# HELP {name} ")), "{name} has no HELP");
        let m = CATALOGUE.iter().find(|m| m.name == name).unwrap();
        let want = match m.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        assert_eq!(kind, want, "{name}");
    }
    // The three latencies, with their buckets and the traffic above counted in them.
    for series in [
        "throng_ingest_ack_seconds_count",
        "throng_frame_latency_seconds_count{type=\"heatmap\"}",
        "throng_sql_query_duration_seconds_count{interface=\"http\"}",
        "throng_sql_query_duration_seconds_count{interface=\"pgwire\"}",
    ] {
        assert!(
            metric(&page, series).is_some_and(|n| n >= 1.0),
            "{series} missing or zero:\n{page}"
        );
    }
    assert_eq!(
        metric(&page, "throng_ingest_ack_seconds_bucket{le=\"+Inf\"}"),
        metric(&page, "throng_ingest_ack_seconds_count"),
        "{page}"
    );
    assert!(
        metric(&page, "throng_ingest_duplicates_total").is_some_and(|n| n >= 12.0),
        "{page}"
    );
    assert!(page.contains("throng_ingest_rejected_total{reason="), "{page}");
    assert!(
        exported.len() >= CATALOGUE.len() - 3,
        "only {} of {} families exported:\n{page}",
        exported.len(),
        CATALOGUE.len()
    );
}

/// A request that names a route the router does not have answers 404 (or 405 for a path served
/// under another method); anything else means the route exists.
fn served(status: u16) -> bool {
    status != 404 && status != 405
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_every_route_the_server_answers_and_the_contract_names() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::serve::fast(crate::serve::config());
    let s = server::start(cfg, "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let addr = s.addr;
    let (status, doc) = request(addr, "GET", "/api/openapi.json", None, "").await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
    assert_eq!(doc, serde_json::to_value(server::api::openapi()).unwrap());
    let paths = doc["paths"].as_object().expect("paths");

    // Every documented operation is answered (not 404/405), with a real segment id in `{id}`.
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for method in ["get", "post", "put", "delete", "patch"] {
            let Some(op) = item.get(method) else { continue };
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
            documented.insert(format!("{} {path}", method.to_uppercase()));
            let concrete = path.replace("{id}", "chenyi-steps");
            let (status, _) = request_text(addr, &method.to_uppercase(), &concrete, None, "").await;
            assert!(
                served(status),
                "{method} {concrete} is documented but answered {status}"
            );
        }
    }
    // The probe can tell: a route that does not exist is 404, a wrong method 405.
    assert_eq!(
        request_text(addr, "GET", "/api/no-such-route", None, "").await.0,
        404
    );
    assert_eq!(
        request_text(addr, "DELETE", "/api/segments", None, "").await.0,
        405
    );

    // Every route CONTRACT.md names is documented.
    let contract = std::fs::read_to_string(root().join("../shared/spec/CONTRACT.md"));
    match contract {
        Ok(text) => {
            let mut named = 0;
            for line in text.lines().filter(|l| l.starts_with("| `")) {
                let cell = line.trim_start_matches("| `");
                let Some((route, _)) = cell.split_once('`') else {
                    continue;
                };
                let Some((method, path)) = route.split_once(' ') else {
                    continue;
                };
                if !["GET", "POST", "PUT", "DELETE"].contains(&method) {
                    continue;
                }
                let path = path.split('?').next().unwrap_or(path);
                named += 1;
                assert!(
                    documented.contains(&format!("{method} {path}")),
                    "CONTRACT.md names {method} {path}; the document has {documented:?}"
                );
            }
            assert!(named >= 10, "read {named} routes from CONTRACT.md");
        }
        Err(e) => assert!(std::env::var_os("CI").is_none(), "CONTRACT.md: {e}"),
    }

    // The router is built only from the documented handlers: nothing registers a route by hand.
    let mut hand_made = Vec::new();
    let mut stack = vec![root().join("src")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for needle in [".route(\"", ".route_service(", ".nest(\"", ".nest_service("] {
                    if text.contains(needle) {
                        hand_made.push(format!("{} uses {needle}", p.display()));
                    }
                }
            }
        }
    }
    assert!(
        hand_made.is_empty(),
        "routes outside utoipa_axum::routes! are missing from the document: {hand_made:?}"
    );
    s.shutdown().await.unwrap();
}

#[test]
fn json_logs_are_one_object_per_line_with_stable_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = serve_command(&dir.path().join("data"), &["--log-format", "json"]);
    cmd.env("RUST_LOG", "info");
    let (child, _addr) = serving(cmd);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let t = child.stderr_tail();
        if t.lines().count() >= 2 {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "no log lines: {t:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object: {line:?} ({e})"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(v[field].is_string(), "{field} missing in {line}");
        }
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap()),
            "{line}"
        );
    }
}

#[test]
fn version_names_the_package_version_and_the_commit_it_was_built_from() {
    let out = crate::support::throng(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let want = format!("throng {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&want), "{text}");
    let commit = text[want.len()..].trim_end_matches(')');
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match head {
        Some(head) => assert_eq!(commit, head, "built from HEAD"),
        None => assert!(
            commit == "unknown" || commit.chars().all(|c| c.is_ascii_hexdigit()),
            "{text}"
        ),
    }
}
