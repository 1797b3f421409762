//! MQTT ingest against a real mosquitto broker started by the test on an ephemeral port.

use std::process::{Command, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use throng::config::MqttConfig;
use throng::server;

use crate::serve::{config, fast};
use crate::support::Child;

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
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .unwrap();
    let _broker = Child(
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
