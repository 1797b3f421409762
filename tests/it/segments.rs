//! Segments, organiser thresholds, alerts and reload through the HTTP API.

use std::time::Duration;

use throng::config::TokenConfig;
use throng::server;

use crate::http::request;
use crate::serve::{config, fast};

const VIEWER: &str = "viewer-token-1";
const ORGANISER: &str = "organiser-token-1";
const FEED: &str = "feed-token-1";
const ADMIN: &str = "admin-token-1";

fn with_tokens() -> throng::config::Config {
    let mut cfg = fast(config());
    let t = |name: &str, role: &str, token: &str| TokenConfig {
        name: name.into(),
        role: role.parse().unwrap(),
        token: token.into(),
    };
    cfg.auth.tokens = vec![
        t("huangpu-command", "viewer", VIEWER),
        t("bund-organiser", "organiser", ORGANISER),
        t("carrier-a", "feed", FEED),
        t("ops", "admin", ADMIN),
    ];
    cfg
}

#[tokio::test]
async fn thresholds_are_validated_persisted_audited_and_drive_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let server = server::start(with_tokens(), "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let a = server.addr;

    let (s, list) = request(a, "GET", "/api/segments", Some(VIEWER), "").await;
    assert_eq!(s, 200);
    let list = list.as_array().unwrap();
    assert!(list.len() >= 12, "the Bund has 12 or more segments");
    let enr = list.iter().find(|v| v["id"] == "enr-xizang-henan").unwrap();
    assert_eq!(enr["thresholds"]["density"]["high"], 2.0);
    assert!(enr["area_m2"].as_f64().unwrap() > 15_000.0);

    let path = "/api/segments/enr-xizang-henan/thresholds";
    assert_eq!(request(a, "PUT", path, None, r#"{"capacity":5}"#).await.0, 401);
    assert_eq!(
        request(a, "PUT", path, Some("wrong-token"), r#"{"capacity":5}"#)
            .await
            .0,
        401
    );
    let (s, e) = request(a, "PUT", path, Some(VIEWER), r#"{"capacity":5}"#).await;
    assert_eq!(s, 403, "{e}");
    assert!(e["error"].as_str().unwrap().contains("viewer"));
    let (s, e) = request(a, "PUT", path, Some(ORGANISER), r#"{"capacty":5}"#).await;
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("capacty"), "{e}");
    let (s, e) = request(a, "PUT", path, Some(ORGANISER), r#"{"density":{"medium":3}}"#).await;
    assert_eq!(s, 400);
    assert!(
        e["error"].as_str().unwrap().contains("medium < high < critical"),
        "{e}"
    );
    let (s, e) = request(a, "PUT", path, Some(ORGANISER), r#"{"flow":{"high":-1}}"#).await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(
        request(
            a,
            "PUT",
            "/api/segments/nowhere/thresholds",
            Some(ORGANISER),
            "{}"
        )
        .await
        .0,
        404
    );
    let (s, ok) = request(a, "PUT", path, Some(ORGANISER), r#"{"capacity":5}"#).await;
    assert_eq!(s, 200, "{ok}");
    assert_eq!(ok["thresholds"]["capacity"], 5.0);
    assert_eq!(
        ok["thresholds"]["density"]["high"], 2.0,
        "omitted keys keep their value"
    );

    // 20 phones on East Nanjing Road: 400 % of a capacity of 5 → critical at once.
    let now = throng::model::now_ms();
    let body: String = (0..20)
        .map(|i| {
            format!(
                "{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"p{i}\",\"lat\":31.23975,\"lng\":121.4800}}\n"
            )
        })
        .collect();
    assert_eq!(
        request(a, "POST", "/api/ingest", Some(VIEWER), &body).await.0,
        403,
        "viewers cannot feed"
    );
    let (mut viewer, _) = tokio_tungstenite::connect_async(format!("ws://{a}/ws/live?token={VIEWER}"))
        .await
        .expect("viewer connects");
    let refused = tokio_tungstenite::connect_async(format!("ws://{a}/ws/live?token=wrong")).await;
    assert!(refused.is_err(), "a bad token cannot watch");
    let (s, v) = request(a, "POST", "/api/ingest", Some(FEED), &body).await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(20)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let alert = loop {
        let (_, alerts) = request(a, "GET", "/api/alerts?since=0", Some(VIEWER), "").await;
        if let Some(x) = alerts
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["segment_id"] == "enr-xizang-henan")
        {
            break x.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no alert");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (alert["from_tier"].as_str(), alert["to_tier"].as_str()),
        (Some("low"), Some("critical"))
    );
    assert!(
        alert["reason"].as_str().unwrap().contains("of capacity"),
        "{alert}"
    );
    // The same change reached the live viewer as an alert frame.
    use futures_util::StreamExt;
    let frame = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), viewer.next())
            .await
            .expect("alert frame in time");
        if let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = m {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "alert" && v["segment_id"] == "enr-xizang-henan" {
                break v;
            }
        }
    };
    assert_eq!(frame["to_tier"], "critical");
    let (_, one) = request(a, "GET", "/api/segments/enr-xizang-henan", Some(VIEWER), "").await;
    assert!(one["people"].as_f64().unwrap() > 0.0);
    assert!(!one["history"].as_array().unwrap().is_empty());

    // Reload keeps serving; only admins may.
    assert_eq!(
        request(a, "POST", "/api/segments/reload", Some(ORGANISER), "")
            .await
            .0,
        403
    );
    let (s, r) = request(a, "POST", "/api/segments/reload", Some(ADMIN), "").await;
    assert_eq!((s, r["segments"].as_u64() >= Some(12)), (200, true), "{r}");
    server.shutdown().await.unwrap();

    // A restart on the same data dir keeps the organiser's thresholds and the audit trail.
    let server = server::start(with_tokens(), "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let (_, one) = request(
        server.addr,
        "GET",
        "/api/segments/enr-xizang-henan",
        Some(VIEWER),
        "",
    )
    .await;
    assert_eq!(one["thresholds"]["capacity"], 5.0);
    let (_, audit) = request(server.addr, "GET", "/api/thresholds/audit", Some(ORGANISER), "").await;
    let audit = audit.as_array().unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["by"], "bund-organiser");
    assert_eq!(audit[0]["role"], "organiser");
    assert_eq!(audit[0]["old"]["capacity"], 30000.0);
    assert_eq!(audit[0]["new"]["capacity"], 5.0);
    let alerts_file = std::fs::read_to_string(dir.path().join("alerts.ndjson")).unwrap();
    assert!(alerts_file.contains("enr-xizang-henan"));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn sighup_reloads_the_segments_file_and_a_bad_file_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("bund");
    std::fs::create_dir_all(&scenario).unwrap();
    for f in ["segments.geojson", "sensors.json", "stations.json"] {
        std::fs::copy(
            crate::support::root().join("fixtures/bund").join(f),
            scenario.join(f),
        )
        .unwrap();
    }
    let data = dir.path().join("data");
    let (child, addr) = crate::support::serving(crate::support::serve_command(
        &data,
        &["--scenario", scenario.to_str().unwrap()],
    ));
    let count = || async {
        let (s, v) = request(addr, "GET", "/api/segments", None, "").await;
        assert_eq!(s, 200);
        v.as_array().unwrap().len()
    };
    let before = count().await;
    let hup = || {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    // Drop one segment from the file, then SIGHUP.
    let path = scenario.join("segments.geojson");
    let mut gj: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    gj["features"].as_array_mut().unwrap().pop();
    std::fs::write(&path, gj.to_string()).unwrap();
    hup();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count().await != before - 1 {
        assert!(tokio::time::Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken file is refused; the segments in force stay.
    std::fs::write(&path, "{not geojson").unwrap();
    hup();
    // Wait for the refusal itself (the log says so), not for time to pass.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !child.stderr_tail().contains("Segments reload failed") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload attempt logged after SIGHUP: {}",
            child.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        child.stderr_tail().contains("segments.geojson"),
        "the refusal names the file: {}",
        child.stderr_tail()
    );
    assert_eq!(count().await, before - 1);
    assert_eq!(
        request(addr, "GET", "/api/health", None, "").await.0,
        200,
        "still serving"
    );
}

/// Waits for a text frame of `kind` on `ws` for which `pick` holds.
async fn frame_where<S>(
    ws: &mut S,
    kind: &str,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value
where
    S: futures_util::Stream<
            Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>,
        > + Unpin,
{
    use futures_util::StreamExt;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} frame in 10 s"));
        if let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = m {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["type"] == kind && pick(&v) {
                return v;
            }
        }
    }
}

#[tokio::test]
async fn an_alert_is_acknowledged_once_with_who_and_when_on_every_screen() {
    let dir = tempfile::tempdir().unwrap();
    let server = server::start(with_tokens(), "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let a = server.addr;
    let path = "/api/segments/chenyi-steps/thresholds";
    assert_eq!(
        request(a, "PUT", path, Some(ORGANISER), r#"{"capacity":5}"#)
            .await
            .0,
        200
    );
    let (mut screen_a, _) = tokio_tungstenite::connect_async(format!("ws://{a}/ws/live?token={VIEWER}"))
        .await
        .unwrap();
    let (mut screen_b, _) = tokio_tungstenite::connect_async(format!("ws://{a}/ws/live?token={ORGANISER}"))
        .await
        .unwrap();
    let now = throng::model::now_ms();
    let body: String = (0..20)
        .map(|i| format!("{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"s{i}\",\"lat\":31.2413,\"lng\":121.49155,\"accuracy_m\":3}}\n"))
        .collect();
    assert_eq!(request(a, "POST", "/api/ingest", Some(FEED), &body).await.0, 202);
    let alert = frame_where(&mut screen_a, "alert", |v| v["segment_id"] == "chenyi-steps").await;
    let ts = alert["ts"].as_i64().unwrap();
    let (_, listed) = request(a, "GET", "/api/alerts?segment=chenyi-steps", Some(VIEWER), "").await;
    let listed = listed.as_array().unwrap();
    assert!(!listed.is_empty() && listed.iter().all(|x| x["segment_id"] == "chenyi-steps"));
    assert!(listed[0]["ack"].is_null(), "not acknowledged yet: {}", listed[0]);

    // Wrong requests say what was wrong and change nothing.
    let ack =
        |seg: &str, ts: i64| format!("{{\"segment_id\":\"{seg}\",\"ts\":{ts},\"note\":\"stewards sent\"}}");
    assert_eq!(
        request(a, "POST", "/api/alerts/ack", Some(FEED), &ack("chenyi-steps", ts))
            .await
            .0,
        403
    );
    let (s, e) = request(
        a,
        "POST",
        "/api/alerts/ack",
        Some(VIEWER),
        &ack("chenyi-steps", ts + 1),
    )
    .await;
    assert_eq!(s, 404, "{e}");
    assert!(e["error"].as_str().unwrap().contains("/api/alerts"), "{e}");
    let (s, e) = request(
        a,
        "POST",
        "/api/alerts/ack",
        Some(VIEWER),
        r#"{"segment":"chenyi-steps"}"#,
    )
    .await;
    assert_eq!(s, 400, "{e}");

    let (s, v) = request(
        a,
        "POST",
        "/api/alerts/ack",
        Some(VIEWER),
        &ack("chenyi-steps", ts),
    )
    .await;
    assert_eq!((s, v["new"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(v["ack"]["by"], "huangpu-command");
    assert_eq!(v["ack"]["role"], "viewer");
    // Both screens are told, the other one included.
    for ws in [&mut screen_a, &mut screen_b] {
        let f = frame_where(ws, "ack", |v| v["segment_id"] == "chenyi-steps").await;
        assert_eq!(
            (f["alert_ts"].as_i64(), f["by"].as_str()),
            (Some(ts), Some("huangpu-command"))
        );
    }
    // The first acknowledgement stands.
    let (s, v) = request(
        a,
        "POST",
        "/api/alerts/ack",
        Some(ORGANISER),
        &ack("chenyi-steps", ts),
    )
    .await;
    assert_eq!(
        (s, v["new"].as_bool(), v["ack"]["by"].as_str()),
        (200, Some(false), Some("huangpu-command"))
    );
    let (_, listed) = request(a, "GET", &format!("/api/alerts?since={ts}"), Some(VIEWER), "").await;
    let it = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["segment_id"] == "chenyi-steps" && x["ts"] == ts)
        .unwrap();
    assert_eq!(it["ack"]["by"], "huangpu-command");
    assert_eq!(it["ack"]["note"], "stewards sent");
    assert!(it["ack"]["ts"].as_i64().unwrap() >= now);
    server.shutdown().await.unwrap();

    // Audited in the data dir, and analysts see it as a table.
    let log = std::fs::read_to_string(dir.path().join("alert-acks.ndjson")).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
    let rows = crate::support::query(dir.path(), "SELECT segment_id, by, role, note FROM alert_acks");
    assert!(
        rows.contains("chenyi-steps") && rows.contains("huangpu-command") && rows.contains("stewards sent"),
        "{rows}"
    );
}

#[tokio::test]
async fn rewind_serves_history_by_time_range_to_viewers() {
    let dir = tempfile::tempdir().unwrap();
    let server = server::start(with_tokens(), "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let a = server.addr;
    // Five one-second windows of 30 phones on the steps, the crowd growing.
    let now = throng::model::now_ms();
    let mut body = String::new();
    for s in 0..5 {
        let ts = now - 5_000 + s * 1_000;
        for i in 0..(30 + 5 * s) {
            body.push_str(&format!(
                "{{\"kind\":\"lbs\",\"ts\":{ts},\"device\":\"r{i}\",\"lat\":31.2413,\"lng\":121.49155,\"accuracy_m\":3}}\n"
            ));
        }
    }
    assert_eq!(request(a, "POST", "/api/ingest", Some(FEED), &body).await.0, 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let range = loop {
        let (s, r) = request(a, "GET", "/api/history/range", Some(VIEWER), "").await;
        assert_eq!(s, 200, "{r}");
        if r["last"].as_i64().is_some_and(|l| l >= now) {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history never reached the posts: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(range["slide_ms"], 1000);
    let (first, last) = (range["first"].as_i64().unwrap(), range["last"].as_i64().unwrap());
    let (s, h) = request(
        a,
        "GET",
        &format!("/api/history/segments?from={first}&to={last}"),
        Some(VIEWER),
        "",
    )
    .await;
    assert_eq!(s, 200, "{h}");
    let windows = h["windows"].as_array().unwrap();
    assert!(windows.len() >= 4, "{h}");
    let ends: Vec<i64> = windows
        .iter()
        .map(|w| w["window_end"].as_i64().unwrap())
        .collect();
    assert!(ends.windows(2).all(|p| p[0] < p[1]), "oldest first: {ends:?}");
    assert!(windows
        .iter()
        .all(|w| w["segments"].as_array().unwrap().len() >= 12));
    // The same numbers the live picture had for those windows.
    let (_, live) = request(a, "GET", "/api/segments/chenyi-steps", Some(VIEWER), "").await;
    let mut compared = 0;
    for st in live["history"].as_array().unwrap() {
        let Some(w) = windows.iter().find(|w| w["window_end"] == st["window_end"]) else {
            continue;
        };
        let row = w["segments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == "chenyi-steps")
            .unwrap();
        assert!(
            (row["people"].as_f64().unwrap() - st["people"].as_f64().unwrap()).abs() < 1e-6,
            "{row} vs {st}"
        );
        assert_eq!(row["tier"], st["tier"]);
        compared += 1;
    }
    assert!(compared >= 4, "{compared} windows compared");
    // One segment only; one window's heatmap, without cells under k.
    let (_, only) = request(
        a,
        "GET",
        &format!("/api/history/segments?segment=chenyi-steps&from={first}&to={last}"),
        Some(VIEWER),
        "",
    )
    .await;
    assert!(only["windows"].as_array().unwrap().iter().all(|w| {
        let s = w["segments"].as_array().unwrap();
        s.len() == 1 && s[0]["id"] == "chenyi-steps"
    }));
    let busiest = windows
        .iter()
        .max_by_key(|w| {
            w["segments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["people"].as_f64().unwrap() as i64)
                .sum::<i64>()
        })
        .unwrap();
    let at = busiest["window_end"].as_i64().unwrap();
    let (s, heat) = request(
        a,
        "GET",
        &format!("/api/history/heatmap?at={at}"),
        Some(VIEWER),
        "",
    )
    .await;
    assert_eq!(s, 200, "{heat}");
    let cells = heat["cells"].as_array().unwrap();
    assert!(!cells.is_empty(), "{heat}");
    assert!(
        cells.iter().all(|c| c[1].as_f64().unwrap() >= 10.0),
        "privacy.k holds in rewind: {heat}"
    );
    assert_eq!(heat["window_end"], at);
    // Mistakes are named; roles hold.
    let (s, e) = request(
        a,
        "GET",
        &format!("/api/history/segments?from={first}"),
        Some(VIEWER),
        "",
    )
    .await;
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("`to`"), "{e}");
    let (s, _) = request(
        a,
        "GET",
        &format!("/api/history/segments?from=0&to={last}"),
        Some(VIEWER),
        "",
    )
    .await;
    assert_eq!(s, 400, "more than six hours at once");
    let (s, _) = request(
        a,
        "GET",
        &format!("/api/history/segments?segment=nowhere&from={first}&to={last}"),
        Some(VIEWER),
        "",
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(
        request(a, "GET", "/api/history/range", Some(FEED), "").await.0,
        403
    );
    assert_eq!(request(a, "GET", "/api/history/range", None, "").await.0, 401);
    server.shutdown().await.unwrap();
}
