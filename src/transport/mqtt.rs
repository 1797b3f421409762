//! MQTT subscription: each publish carries NDJSON records. A message is acknowledged to the broker
//! (QoS 1, manual acks) only once its records are in the write-ahead log, so a crash means
//! redelivery, and redelivered records are recognised as duplicates. While the ingest queue is
//! full the event loop is not polled: the broker holds the messages (backpressure).

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::app::{commit, now_ms, Handles};
use crate::config::MqttConfig;

/// Parses `mqtt://host:port` (port 1883 by default).
pub fn parse_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| format!("{url:?}: expected mqtt://HOST:PORT"))?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.trim_end_matches('/')
                .parse::<u16>()
                .map_err(|_| format!("{url:?}: bad port"))?,
        ),
        None => (rest.trim_end_matches('/'), 1883),
    };
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok((host.to_string(), port))
}

/// Runs one subscription until `stop`.
pub async fn run(cfg: MqttConfig, h: Handles, stop: CancellationToken) {
    let (host, port) = match parse_url(&cfg.url) {
        Ok(x) => x,
        Err(e) => return tracing::error!(error = %e, "MQTT source not started."),
    };
    let mut opts = MqttOptions::new(cfg.client_id.clone(), host, port);
    opts.set_keep_alive(Duration::from_secs(15));
    opts.set_manual_acks(true);
    opts.set_clean_session(false);
    opts.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut events) = AsyncClient::new(opts, 64);
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
                let now = now_ms();
                let mut ok = Vec::new();
                for line in p
                    .payload
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                {
                    match h.parser.parse_line(line, Some(now)) {
                        Ok(r) => ok.push(r),
                        Err(e) => {
                            metrics::counter!("throng_ingest_rejected_total", "reason" => e.code.as_str())
                                .increment(1);
                            tracing::warn!(topic = %p.topic, "Rejected MQTT record: {e}");
                        }
                    }
                }
                let n = ok.len() as u64;
                if n > 0 {
                    if let Err(e) = commit(&h, ok, true).await {
                        // Not acknowledged: the broker redelivers after we reconnect.
                        tracing::error!(error = %e, "MQTT batch not logged; leaving it unacknowledged.");
                        continue;
                    }
                    metrics::counter!("throng_ingest_records_total").increment(n);
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
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), client.disconnect()).await;
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884)
        );
        assert_eq!(parse_url("mqtt://broker").unwrap(), ("broker".into(), 1883));
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("mqtt://x:port").is_err());
    }
}
