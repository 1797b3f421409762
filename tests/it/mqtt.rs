//! MQTT ingest against a real mosquitto broker started by the test on an ephemeral port.

use std::process::{Command, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use throng::config::MqttConfig;
use throng::server;

use crate::serve::{config, fast};
use crate::support::Child;

/// Starts mosquitto on a free loopback port (sessions kept in memory while it runs).
async fn broker(dir: &std::path::Path) -> (Child, u16) {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .unwrap();
    let broker = Child::new(
        Command::new("mosquitto")
            .args(["-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Debian's mosquitto is installed by the test command (.ci/run)"),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "mosquitto did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (broker, port)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn records_published_to_mosquitto_reach_the_windows() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, port) = broker(dir.path()).await;
    let mut cfg = fast(config());
    cfg.mqtt = vec![MqttConfig {
        url: format!("mqtt://127.0.0.1:{port}"),
        topics: vec!["throng/feeds/#".into()],
        client_id: "throng-test".into(),
    }];
    let server = server::start(cfg, "127.0.0.1:0".parse().unwrap(), &dir.path().join("data"))
        .await
        .unwrap();

    let (client, mut events) = AsyncClient::new(MqttOptions::new("carrier-gw", "127.0.0.1", port), 16);
    let pump = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    // Give the server time to subscribe before publishing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = throng::model::now_ms();
    for m in 0..3 {
        let payload: String = (0..10)
            .map(|i| format!("{{\"kind\":\"lbs\",\"ts\":{now},\"device\":\"m{m}-{i}\",\"lat\":31.2405,\"lng\":121.4832}}\n"))
            .chain(std::iter::once("{\"kind\":\"nonsense\"}\n".to_string()))
            .collect();
        client
            .publish(
                format!("throng/feeds/carrier-a/{m}"),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
    }
    crate::http::wait_lbs_records(server.addr, 30).await;
    let (_, metrics) = crate::http::request_text(server.addr, "GET", "/metrics", None, "").await;
    assert!(metrics.contains("throng_mqtt_messages_total 3"), "{metrics}");
    pump.abort();
    server.shutdown().await.unwrap();
}

/// The engine's record count for one source (`/api/health`), None while it has none.
async fn source_records(addr: std::net::SocketAddr, source: &str) -> Option<u64> {
    let (_, h) = crate::http::request(addr, "GET", "/api/health", None, "").await;
    h["engine"]["sources"]
        .as_array()?
        .iter()
        .find(|s| s["source"] == source)?["records"]
        .as_u64()
}

/// Camera counts published over MQTT while HTTP feeds keep a one-batch ingest queue full, and the
/// server killed with SIGKILL in the middle and started again: the broker redelivers what was
/// not acknowledged, and every count is in the windows exactly once (counts add up, so a count
/// taken twice or lost shows in the sum).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_counts_survive_a_full_queue_and_a_kill_counted_exactly_once() {
    use crate::recovery::stop;
    use crate::support::{metric, query_with, serve_command, serving, Rng};
    const MESSAGES: usize = 60;
    const PER_MESSAGE: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let (_broker, port) = broker(dir.path()).await;
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        format!(
            "scenario = \"fixtures/bund\"\n[window]\nsize = \"1h\"\nslide = \"1h\"\nallowed_lateness = \"6h\"\nidle_timeout = \"60s\"\n\
             [privacy]\nk = 0\n[ingest]\nqueue_batches = 1\n[durability]\ncheckpoint_every = \"300ms\"\n\
             [[mqtt]]\nurl = \"mqtt://127.0.0.1:{port}\"\ntopics = [\"throng/feeds/#\"]\nclient_id = \"throng-it\"\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let start = || serving(serve_command(&data, &["--config", cfg.to_str().unwrap()]));
    let (first, addr) = start();
    // The server has subscribed once it has taken a first message: publish until then.
    let (client, mut events) = AsyncClient::new(MqttOptions::new("camera-gw", "127.0.0.1", port), 256);
    let pump = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let base = (throng::model::now_ms() - 7_200_000).div_euclid(3_600_000) * 3_600_000;
    let mut rng = Rng(0x5eed_0777);
    let mut total_in = 0u64;
    let messages: Vec<String> = (0..MESSAGES)
        .map(|m| {
            (0..PER_MESSAGE)
                .map(|i| {
                    let inn = 1 + rng.below(9);
                    total_in += inn;
                    let ts = base + 1_000 + ((m * PER_MESSAGE + i) as i64) * 500;
                    format!("{{\"kind\":\"counter\",\"ts\":{ts},\"sensor\":\"enr-xizang-cam\",\"in\":{inn},\"out\":0,\"period_s\":10}}\n")
                })
                .collect()
        })
        .collect();
    // HTTP feeds flooding the one-batch queue (some are told 503: that is their business).
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flood = |addr: std::net::SocketAddr| {
        let on = flooding.clone();
        tokio::spawn(async move {
            let mut r = 0;
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                let body: String = (0..3000)
                    .map(|i| format!("{{\"kind\":\"lbs\",\"ts\":{},\"device\":\"f{r}-{i}\",\"lat\":31.2405,\"lng\":121.4832}}\n", base + 2_000))
                    .collect();
                let _ = crate::recovery::try_post(addr, &body).await;
                r += 1;
            }
        })
    };
    let floods = [flood(addr), flood(addr)];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    client
        .publish("throng/feeds/cam/0", QoS::AtLeastOnce, false, messages[0].clone())
        .await
        .unwrap();
    while source_records(addr, "counter").await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never took an MQTT message"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (m, body) in messages.iter().enumerate().take(MESSAGES / 2).skip(1) {
        client
            .publish(
                format!("throng/feeds/cam/{m}"),
                QoS::AtLeastOnce,
                false,
                body.clone(),
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let taken_before = source_records(addr, "counter").await.unwrap_or(0);
    drop(first); // SIGKILL (Child's drop), mid-stream
    for f in floods {
        f.abort();
    }
    // While it is down the broker keeps the session's messages.
    for (m, body) in messages.iter().enumerate().skip(MESSAGES / 2) {
        client
            .publish(
                format!("throng/feeds/cam/{m}"),
                QoS::AtLeastOnce,
                false,
                body.clone(),
            )
            .await
            .unwrap();
    }
    let (second, addr) = start();
    let floods = [flood(addr), flood(addr)];
    let want = (MESSAGES * PER_MESSAGE) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = source_records(addr, "counter").await.unwrap_or(0);
        assert!(
            n <= want,
            "{n} counter records taken of {want} published: some twice"
        );
        if n == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} of {want} counter records arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    for f in floods {
        let _ = f.await;
    }
    let (_, page) = crate::http::request_text(addr, "GET", "/metrics", None, "").await;
    eprintln!(
        "{taken_before} counter records taken before the kill; after it {:?} MQTT messages, {:?} duplicates",
        metric(&page, "throng_mqtt_messages_total"),
        metric(&page, "throng_ingest_duplicates_total")
    );
    pump.abort();
    stop(second);
    let sum = query_with(&data, Some(&cfg), "SELECT sum(counter_in) AS n FROM hex_windows");
    assert_eq!(sum, format!("n\n{total_in}\n"), "every published count once");
}
