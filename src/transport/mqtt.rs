//! MQTT subscription: each publish carries NDJSON records. A message is acknowledged to the broker
//! (QoS 1, manual acks) only once its records are in the write-ahead log, so a crash means
//! redelivery, and redelivered records are recognised as duplicates. While the ingest queue is
//! full the event loop is not polled: the broker holds the messages (backpressure).

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::config::MqttConfig;
use crate::durability::{FeedSink, WhenFull};
use crate::model::now_ms;

/// Keep-alive of the broker session.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Largest MQTT packet either way: a publish may carry a batch of NDJSON records.
const MAX_PACKET_BYTES: usize = 4 << 20;
/// Requests queued towards the broker client.
const CLIENT_QUEUE: usize = 64;
/// Pause before reconnecting after the connection is lost.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// How long a clean disconnect may take at shutdown.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs one subscription until `stop`.
pub async fn run(cfg: MqttConfig, sink: FeedSink, stop: CancellationToken) {
    let (host, port) = match cfg.host_port() {
        Ok(x) => x,
        Err(e) => return tracing::error!(error = %e, "MQTT source not started."),
    };
    let mut opts = MqttOptions::new(cfg.client_id.clone(), host, port);
    opts.set_keep_alive(KEEP_ALIVE);
    opts.set_manual_acks(true);
    opts.set_clean_session(false);
    opts.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    let (client, mut events) = AsyncClient::new(opts, CLIENT_QUEUE);
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => break,
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(url = %cfg.url, topics = ?cfg.topics, "MQTT connected.");
                for t in &cfg.topics {
                    if let Err(e) = client.subscribe(t.clone(), QoS::AtLeastOnce).await {
                        tracing::error!(error = %e, topic = %t, "MQTT subscribe failed.");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let decoded = sink.decode(&p.payload, now_ms());
                for r in &decoded.rejected {
                    tracing::warn!(topic = %p.topic, line = r.line, "Rejected MQTT record: {}", r.error);
                }
                if let Err(e) = sink.commit(decoded.records, WhenFull::Wait).await {
                    // Not acknowledged: the broker redelivers after we reconnect.
                    tracing::error!(error = %e, "MQTT batch not logged; leaving it unacknowledged.");
                    continue;
                }
                metrics::counter!("throng_mqtt_messages_total").increment(1);
                if let Err(e) = client.ack(&p).await {
                    tracing::warn!(error = %e, "MQTT ack failed.");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(url = %cfg.url, error = %e, "MQTT connection lost; retrying in 1 s.");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(RECONNECT_AFTER) => {}
                }
            }
        }
    }
    let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, client.disconnect()).await;
}
