//! `dashboards/grafana/`: the provisionable dashboards are well formed, every metric a panel names
//! exists in a running server's `/metrics`, and every SQL panel runs against `/api/sql`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use throng::server;

use crate::http::{request, request_text};
use crate::support::root;

fn dashboard(name: &str) -> Value {
    let p = root().join("dashboards/grafana").join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()))
}

/// Checks the shape Grafana needs and returns the panels' targets.
fn check_shape(d: &Value, uid: &str) -> Vec<Value> {
    assert_eq!(d["uid"], uid);
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["schemaVersion"].as_u64().is_some());
    let vars: BTreeSet<String> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "datasource")
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(!vars.is_empty(), "{uid}: no data source variable");
    let mut ids = BTreeSet::new();
    let mut targets = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "{uid}: duplicate panel id");
        for k in ["x", "y", "w", "h"] {
            assert!(
                p["gridPos"][k].as_u64().is_some(),
                "{uid}: panel without gridPos.{k}"
            );
        }
        let ds = p["datasource"]["uid"].as_str().unwrap();
        let var = ds.trim_start_matches("${").trim_end_matches('}');
        assert!(
            vars.contains(var),
            "{uid}: panel {} uses undeclared {ds}",
            p["title"]
        );
        let t = p["targets"].as_array().unwrap();
        assert!(!t.is_empty(), "{uid}: panel {} has no query", p["title"]);
        targets.extend(t.iter().cloned());
    }
    targets
}

/// Each series name on a Prometheus page with the label names it carries.
fn series_labels(page: &str) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let mut out: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for l in page.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name = l.split(['{', ' ']).next().unwrap_or("");
        let labels = out.entry(name.to_owned()).or_default();
        if let Some(inside) = l
            .split_once('{')
            .and_then(|(_, r)| r.split_once('}'))
            .map(|(i, _)| i)
        {
            for pair in inside.split(',') {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.to_owned());
                }
            }
        }
    }
    out
}

/// Label names a PromQL expression groups by (`by (...)`), selects on (`{k="v"}`) or its legend
/// prints (`{{k}}`).
fn labels_in(expr: &str, legend: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("by (") {
        let after = &rest[i + 4..];
        let close = after.find(')').expect("closing parenthesis");
        out.extend(after[..close].split(',').map(|s| s.trim().to_owned()));
        rest = &after[close..];
    }
    let mut rest = expr;
    while let Some(i) = rest.find('{') {
        let after = &rest[i + 1..];
        let close = after.find('}').expect("closing brace");
        for pair in after[..close].split(',') {
            if let Some((k, _)) = pair.split_once(['=', '!']) {
                out.insert(k.trim().to_owned());
            }
        }
        rest = &after[close..];
    }
    let mut rest = legend;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        let close = after.find("}}").expect("closing braces");
        out.insert(after[..close].trim().to_owned());
        rest = &after[close..];
    }
    out.retain(|l| !l.is_empty());
    out
}

/// Expands Grafana's PostgreSQL macros and variables as Grafana would for a time range.
fn expand(sql: &str, segments: &[String]) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(i) = rest.find("$__timeFilter(") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "$__timeFilter(".len()..];
        let close = after.find(')').expect("closing parenthesis");
        let col = &after[..close];
        out.push_str(&format!(
            "{col} BETWEEN '2020-01-01T00:00:00Z' AND '2100-01-01T00:00:00Z'"
        ));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    let quoted: Vec<String> = segments.iter().map(|s| format!("'{s}'")).collect();
    out.replace("$segment", &quoted.join(","))
}

#[test]
fn panel_labels_are_read_from_groupings_selectors_and_legends() {
    let got = labels_in(
        "histogram_quantile(0.99, sum by (le, type) (rate(x_bucket{job=\"a\"}[5m])))",
        "{{type}} on {{ instance }}",
    );
    let want: BTreeSet<String> = ["le", "type", "job", "instance"].map(String::from).into();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboards_name_real_metrics_and_labels_and_runnable_sql() {
    let ops = check_shape(&dashboard("throng-operations.json"), "throng-operations");
    let analysis_doc = dashboard("throng-analysis.json");
    let analysis = check_shape(&analysis_doc, "throng-analysis");
    for p in [
        "provisioning/datasources/throng.yaml",
        "provisioning/dashboards/throng.yaml",
    ] {
        let text = std::fs::read_to_string(root().join("dashboards/grafana").join(p)).unwrap();
        assert!(text.contains("apiVersion: 1"), "{p}");
    }

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::serve::fast(crate::serve::config());
    cfg.privacy.k = 0;
    let server = server::start(cfg, "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let addr = server.addr;
    let mut viewer = crate::live::connect(addr).await;
    let now = throng::model::now_ms();
    let mut body = String::new();
    for i in 0..15 {
        body += &format!(
            "{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"g{i}\",\"lat\":31.2405,\"lng\":121.4832}}\n"
        );
    }
    body += "{\"kind\":\"lbs\",\"ts\":1,\"device\":\"x\"}\n";
    let (status, _) = request(addr, "POST", "/api/ingest", None, &body).await;
    assert_eq!(status, 202);
    crate::http::wait_lbs_records(addr, 15).await;
    // A heatmap frame reaches the viewer, so frame metrics exist.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let f = crate::live::next_json(&mut viewer).await;
        if f["type"] == "heatmap" && f["final"] == true {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no final heatmap frame");
    }

    // One SQL query first, so the SQL latency histogram has a series.
    let (status, _) = request(addr, "POST", "/api/sql", None, "{\"sql\":\"SELECT 1\"}").await;
    assert_eq!(status, 200);
    let (_, metrics) = request_text(addr, "GET", "/metrics", None, "").await;
    let present = series_labels(&metrics);
    let mut named = 0;
    for t in &ops {
        let expr = t["expr"].as_str().expect("a PromQL expression");
        let used: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("throng_"))
            .collect();
        for word in &used {
            named += 1;
            assert!(
                present.contains_key(*word),
                "panel metric {word} is not in /metrics:\n{metrics}"
            );
        }
        // Every label the panel groups by, selects on or prints is carried by a metric it reads.
        let legend = t["legendFormat"].as_str().unwrap_or("");
        for label in labels_in(expr, legend) {
            assert!(
                used.iter()
                    .any(|m| present.get(*m).is_some_and(|l| l.contains(&label))),
                "panel {expr:?} uses label {label:?}, which none of {used:?} carries in /metrics:\n{metrics}"
            );
        }
    }
    assert!(named >= 10, "the operations dashboard names {named} metrics");

    let (_, segs) = request(addr, "GET", "/api/segments", None, "").await;
    let segments: Vec<String> = segs
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    let mut queries: Vec<String> = analysis
        .iter()
        .map(|t| t["rawSql"].as_str().expect("rawSql").to_owned())
        .collect();
    for v in analysis_doc["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"].as_str().filter(|_| v["type"] == "query") {
            queries.push(q.to_owned());
        }
    }
    for q in queries {
        let sql = expand(&q, &segments);
        let (status, v) = request(
            addr,
            "POST",
            "/api/sql",
            None,
            &serde_json::json!({ "sql": sql }).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{sql}\n→ {v}");
        assert!(v.is_array(), "{v}");
    }
    server.shutdown().await.unwrap();
}
