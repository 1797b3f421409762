//! `/ws/live` with a real WebSocket client (tokio-tungstenite): subscriptions, frame order,
//! provisional then final, k-suppression, roll-up, and a stalled viewer that harms no one.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use throng::server;
use tokio_tungstenite::tungstenite::Message;

use crate::http::request;
use crate::serve::{config, fast};

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(addr: std::net::SocketAddr) -> Ws {
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws/live")),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    ws
}

pub async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Pings from 12 phones in one res-11 cell and 3 in another, now.
fn pings(n_big: usize, n_small: usize) -> String {
    let now = throng::model::now_ms();
    let mut s = String::new();
    for i in 0..n_big {
        s.push_str(&format!(
            "{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"big{i}\",\"lat\":31.23975,\"lng\":121.4800}}\n"
        ));
    }
    for i in 0..n_small {
        s.push_str(&format!(
            "{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"small{i}\",\"lat\":31.2391,\"lng\":121.4765}}\n"
        ));
    }
    s
}

#[tokio::test]
async fn viewers_get_provisional_then_final_frames_with_k_suppression_and_roll_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast(config());
    cfg.window.size = Duration::from_secs(4);
    cfg.window.slide = Duration::from_secs(4);
    cfg.privacy.k = 10;
    let server = server::start(cfg, "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let mut ws = connect(server.addr).await;
    let mut coarse = connect(server.addr).await;
    coarse
        .send(Message::Text(r#"{"subscribe":{"res":7}}"#.into()))
        .await
        .unwrap();
    let ack = next_json(&mut coarse).await;
    assert_eq!(
        (ack["type"].as_str(), ack["res"].as_u64()),
        (Some("subscribed"), Some(7))
    );
    ws.send(Message::Text(r#"{"subscribe":{"res":99}}"#.into()))
        .await
        .unwrap();
    let err = next_json(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert!(err["error"].as_str().unwrap().contains("res 99"));

    // Start at the top of a 4 s window, so it stays open long enough for provisional frames.
    while throng::model::now_ms() % 4_000 > 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        request(server.addr, "POST", "/api/ingest", None, &pings(12, 3))
            .await
            .0,
        202
    );
    let (mut provisional, mut last_end, mut segments) = (false, 0, None);
    let final_frame = loop {
        let f = next_json(&mut ws).await;
        if f["type"] == "segments" {
            segments = Some(f);
            continue;
        }
        if f["type"] != "heatmap" {
            continue;
        }
        let end = f["window_end"].as_i64().unwrap();
        assert!(end >= last_end, "frames in window order");
        last_end = end;
        if f["final"] == false && !f["cells"].as_array().unwrap().is_empty() {
            provisional = true;
        }
        if f["final"] == true {
            break f;
        }
    };
    assert!(provisional, "a provisional frame came before the final one");
    // The segments frame of the same window follows (or came just before) the heatmap.
    let segments = match segments {
        Some(s) => s,
        None => loop {
            let f = next_json(&mut ws).await;
            if f["type"] == "segments" {
                break f;
            }
        },
    };
    let list = segments["segments"].as_array().unwrap();
    assert!(list.len() >= 12);
    let enr = list.iter().find(|s| s["id"] == "enr-xizang-henan").unwrap();
    assert!(
        enr["people"].as_f64().unwrap() > 0.0 && enr["tier"].is_string(),
        "{enr}"
    );
    let cells = final_frame["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 1, "the 3-person cell is under k = 10: {final_frame}");
    assert_eq!(cells[0][1], 12.0);
    assert_eq!(final_frame["res"], 11);

    // Rolled up to resolution 7 both cells are one parent of 15 people.
    let f = loop {
        let f = next_json(&mut coarse).await;
        if f["type"] == "heatmap" && f["final"] == true {
            break f;
        }
    };
    let cells = f["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 1);
    assert_eq!(cells[0][1], 15.0);
    assert_eq!(cells[0][0].as_str().unwrap().len(), 15);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stalled_viewer_does_not_delay_another() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast(config());
    cfg.privacy.k = 0;
    let server = server::start(cfg, "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    // This one never reads: its socket buffers fill and its task must not hold anyone up.
    let _stalled = connect(server.addr).await;
    let mut live = connect(server.addr).await;
    for round in 0..3 {
        let sent = std::time::Instant::now();
        assert_eq!(
            request(server.addr, "POST", "/api/ingest", None, &pings(5, 0))
                .await
                .0,
            202
        );
        loop {
            let f = next_json(&mut live).await;
            if f["type"] == "heatmap" && f["final"] == true && !f["cells"].as_array().unwrap().is_empty() {
                break;
            }
        }
        // A final frame needs the window to close (1 s window + idle): well under the 5 s a send
        // may block before a stalled viewer is dropped.
        assert!(
            sent.elapsed() < Duration::from_secs(4),
            "round {round}: {:?}",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    server.shutdown().await.unwrap();
}

/// The metrics of a server in a process of its own (in-process servers share one recorder, so
/// their metrics could be another test's): viewers counted as they come and go, frames counted
/// as sent, and a latency recorded for each final frame.
#[tokio::test]
async fn metrics_count_this_servers_viewers_frames_and_frame_latencies() {
    use crate::support::metric;
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::support::fast_bund_config(dir.path());
    let (_child, addr) = crate::support::serving(crate::support::serve_command(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    ));
    let page = || async move {
        crate::http::request_text(addr, "GET", "/metrics", None, "")
            .await
            .1
    };
    let wait_clients = |n: f64| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let p = page().await;
            if metric(&p, "throng_live_clients") == Some(n) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "live clients never {n}: {p}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let first = page().await;
    assert_eq!(metric(&first, "throng_live_clients"), Some(0.0), "{first}");
    assert_eq!(
        metric(&first, "throng_frame_latency_seconds_count{type=\"heatmap\"}").unwrap_or(0.0),
        0.0,
        "{first}"
    );
    let mut a = connect(addr).await;
    let b = connect(addr).await;
    wait_clients(2.0).await;
    assert_eq!(
        request(addr, "POST", "/api/ingest", None, &pings(5, 0)).await.0,
        202
    );
    let mut finals = 0;
    while finals == 0 {
        let f = next_json(&mut a).await;
        if f["type"] == "heatmap" && f["final"] == true && !f["cells"].as_array().unwrap().is_empty() {
            finals += 1;
        }
    }
    let after = page().await;
    // A Prometheus histogram: cumulative buckets ending in +Inf = count, and a positive sum.
    let series = |suffix: &str, extra: &str| {
        metric(
            &after,
            &format!("throng_frame_latency_seconds_{suffix}{{type=\"heatmap\"{extra}}}"),
        )
    };
    let latencies = series("count", "").unwrap_or(0.0);
    assert!(
        latencies >= 1.0,
        "a final frame was sent, its latency recorded: {after}"
    );
    assert_eq!(series("bucket", ",le=\"+Inf\""), Some(latencies), "{after}");
    assert!(series("sum", "").is_some_and(|v| v > 0.0), "{after}");
    assert!(
        after.contains("# TYPE throng_frame_latency_seconds histogram"),
        "{after}"
    );
    // People read the quantiles on /api/health.
    let (_, health) = crate::http::request(addr, "GET", "/api/health", None, "").await;
    let heat = &health["live"]["frame_latency"]["heatmap"];
    assert!(heat["frames"].as_u64().is_some_and(|n| n >= 1), "{health}");
    assert!(heat["p99_ms"].as_f64().is_some_and(|v| v > 0.0), "{health}");
    // Both viewers were sent each heatmap frame: at least two, counted per frame sent (the
    // second viewer's may be written a moment after the first one's arrived).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let p = page().await;
        let frames = metric(&p, "throng_live_frames_total{type=\"heatmap\"}").unwrap_or(0.0);
        if frames >= 2.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(b);
    wait_clients(1.0).await;
    drop(a);
    wait_clients(0.0).await;
}

/// Pings of `n` phones on the promenade at event time `ts` from provider `source`.
fn pings_from(source: &str, ts: i64, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"kind\":\"lbs\",\"ts\":{ts},\"device\":\"{source}-{i}\",\"lat\":{},\"lng\":121.4905,\"source\":\"{source}\"}}\n",
                31.2400 + i as f64 * 0.00002
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn provisional_frames_show_a_realtime_panel_at_once_and_say_when_a_delayed_carrier_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.window.size = Duration::from_secs(60);
    cfg.window.slide = Duration::from_secs(10);
    cfg.window.allowed_lateness = Duration::from_secs(5);
    cfg.window.idle_timeout = Duration::from_secs(8);
    cfg.privacy.k = 0;
    cfg.lbs.sources.insert(
        "carrier-a".into(),
        throng::config::LbsSourceConfig {
            scale: 1.0,
            max_delay: Some(Duration::from_secs(90)),
            accuracy_m: None,
            ping_interval: None,
        },
    );
    let server = server::start(cfg, "127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    // An app panel on time, and carrier A three minutes behind the clock.
    let now = throng::model::now_ms();
    let body = pings_from("app", now - 500, 20) + &pings_from("carrier-a", now - 180_000, 30);
    let (s, v) = request(server.addr, "POST", "/api/ingest", None, &body).await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(50)), "{v}");
    let mut ws = connect(server.addr).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let frame = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no provisional frame with sources"
        );
        let f = next_json(&mut ws).await;
        if f["type"] == "heatmap" && f["final"] == false && f["sources"].is_array() {
            break f;
        }
    };
    let state = |name: &str| {
        frame["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["source"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {frame}"))
            .clone()
    };
    assert_eq!(state("lbs/app")["state"], "in", "{frame}");
    let carrier = state("lbs/carrier-a");
    assert_eq!(carrier["state"], "due", "{frame}");
    let due = carrier["due_in_ms"].as_i64().unwrap();
    assert!(
        (150_000..=185_000).contains(&due),
        "carrier A due in about 3 min: {due}"
    );
    // The app's people are in the provisional picture at once.
    let people: f64 = frame["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[1].as_f64().unwrap())
        .sum();
    assert!(people >= 20.0, "{frame}");
    // Final windows wait for the carrier: the watermark trails its newest event time.
    let (_, h) = request(server.addr, "GET", "/api/health", None, "").await;
    let wm = h["engine"]["watermark"].as_i64().unwrap();
    assert!(wm <= now - 180_000, "the watermark waits for the carrier: {h}");
    assert!(
        h["engine"]["open_window_sources"]
            .as_array()
            .is_some_and(|a| a.len() == 2),
        "{h}"
    );
    server.shutdown().await.unwrap();
}

/// Resident memory of a process (kB), from `/proc`.
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for process {pid}"))
}

/// A command centre keeps dozens of screens open all night: each costs the server a task and its
/// socket's buffers, not the 128 KiB read buffer tungstenite zeroes by default (viewers only
/// send small subscriptions). 40 viewers, each sent frames, must add less than 64 KiB apiece.
#[tokio::test]
async fn a_viewer_costs_the_server_little_memory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::support::fast_bund_config(dir.path());
    let (child, addr) = crate::support::serving(crate::support::serve_command(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    ));
    let pid = child.0.id();
    // One viewer and one frame first, so what is measured is what each further viewer adds.
    let mut first = connect(addr).await;
    assert_eq!(
        request(addr, "POST", "/api/ingest", None, &pings(5, 0)).await.0,
        202
    );
    next_json(&mut first).await;
    let before = rss_kb(pid);
    let mut viewers = Vec::new();
    for _ in 0..40 {
        viewers.push(connect(addr).await);
    }
    assert_eq!(
        request(addr, "POST", "/api/ingest", None, &pings(5, 0)).await.0,
        202
    );
    for v in &mut viewers {
        next_json(v).await;
    }
    let per_viewer = (rss_kb(pid).saturating_sub(before)) as f64 / 40.0;
    assert!(
        per_viewer < 64.0,
        "each viewer added {per_viewer:.0} kB to the server's resident memory"
    );
}
