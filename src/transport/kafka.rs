//! Kafka: a consumer-group member that reads NDJSON records from topics (`[[kafka]]`), and the
//! keyed producer `throng replay/simulate --target kafka://HOST:PORT/TOPIC` use.
//!
//! Consuming: a batch of messages goes through the same parser and commit path as every other
//! transport (the write-ahead log, fsynced); only then are its offsets recorded, in
//! `<data-dir>/kafka-offsets/<group>.json` (replaced atomically). On start and on every partition
//! assignment the consumer seeks to those offsets, never to the broker's committed ones (those are
//! committed too, for monitoring only). A crash between the log and the offsets file re-reads at
//! most that batch, and the engine's idempotency key counts each re-read record once.
//!
//! Producing: each record is keyed by the H3 cell, at a coarse resolution, of where it was
//! measured (a ping's position, a counter's or station's registered position), so a partition holds
//! whole regions; partitions are chosen with murmur2 like Java clients, so a carrier's own
//! producer that keys the same way lands on the same partitions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::durability::{files, FeedSink, WhenFull};
use crate::model::now_ms;
use crate::scenario::registry::Registry;

/// Messages taken into one log commit at most.
const BATCH_MESSAGES: usize = 2_000;
/// How long a batch waits for more messages once it has one.
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// Pause after a failed commit or a broker error before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The next offset to read per (topic, partition), as the write-ahead log holds the records
/// before it. Shared by the consumer loop (which advances it) and the rebalance callback (which
/// seeks to it).
#[derive(Debug, Clone)]
pub struct OffsetStore {
    file: Option<PathBuf>,
    next: Arc<Mutex<BTreeMap<String, i64>>>,
}

fn key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

impl OffsetStore {
    /// Loads the offsets of `group` kept in `data_dir` (None: in memory only).
    pub fn open(data_dir: Option<&Path>, group: &str) -> std::io::Result<OffsetStore> {
        let file = data_dir.map(|d| {
            let safe: String = group
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            d.join("kafka-offsets").join(format!("{safe}.json"))
        });
        let next = match &file {
            Some(f) if f.exists() => {
                let text = std::fs::read_to_string(f)?;
                serde_json::from_str(&text).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", f.display()))
                })?
            }
            _ => BTreeMap::new(),
        };
        Ok(OffsetStore {
            file,
            next: Arc::new(Mutex::new(next)),
        })
    }

    /// The next offset to read of a partition, if any record of it has been logged.
    pub fn next(&self, topic: &str, partition: i32) -> Option<i64> {
        self.lock().get(&key(topic, partition)).copied()
    }

    /// Records that everything before `next` is in the log, durably.
    pub fn advance(&self, done: &BTreeMap<(String, i32), i64>) -> std::io::Result<()> {
        let mut next = self.lock();
        let mut after = next.clone();
        for ((t, p), o) in done {
            let e = after.entry(key(t, *p)).or_insert(0);
            *e = (*e).max(*o);
        }
        if let Some(f) = &self.file {
            files::replace(f, |w| {
                serde_json::to_writer_pretty(w, &after).map_err(std::io::Error::other)
            })
            .map_err(|e| e.into_io())?;
        }
        *next = after;
        Ok(())
    }

    /// Every partition's next offset (`topic/partition` → offset).
    pub fn all(&self) -> BTreeMap<String, i64> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, i64>> {
        self.next.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Seeks assigned partitions to throng's own offsets.
struct Rebalancer {
    offsets: OffsetStore,
}

impl ClientContext for Rebalancer {}

impl ConsumerContext for Rebalancer {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                for (t, p) in &parts {
                    // Records before the stored offset are in the log; none stored: from the start.
                    let at = self.offsets.next(t, *p).map_or(Offset::Beginning, Offset::Offset);
                    if let Err(e) = tpl.set_partition_offset(t, *p, at) {
                        tracing::error!(topic = %t, partition = p, error = %e, "Could not set the start offset.");
                    }
                }
                tracing::info!(partitions = ?parts, "Kafka partitions assigned; reading from throng's own offsets.");
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "Kafka assignment failed.");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = tpl.count(), "Kafka partitions revoked.");
                let _ = consumer.unassign();
            }
            other => {
                tracing::warn!(error = ?other, "Kafka rebalance error; unassigning.");
                let _ = consumer.unassign();
            }
        }
    }
}

/// The consumer's librdkafka settings for `cfg`.
fn consumer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap)
        .set("group.id", &cfg.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Only for a partition throng has never logged anything of: read it all.
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", cfg.session_timeout.as_millis().to_string())
        .set(
            "heartbeat.interval.ms",
            (cfg.session_timeout.as_millis() / 3).max(100).to_string(),
        )
        .set("partition.assignment.strategy", "range");
    for (k, v) in cfg.security_properties() {
        c.set(k, v);
    }
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// Runs one `[[kafka]]` subscription until `stop`.
pub async fn run(cfg: KafkaConfig, sink: FeedSink, offsets: OffsetStore, stop: CancellationToken) {
    let consumer: StreamConsumer<Rebalancer> = match consumer_config(&cfg).create_with_context(Rebalancer {
        offsets: offsets.clone(),
    }) {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = %e, bootstrap = %cfg.bootstrap, "Kafka source not started."),
    };
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    if let Err(e) = consumer.subscribe(&topics) {
        return tracing::error!(error = %e, topics = ?cfg.topics, "Kafka subscribe failed.");
    }
    tracing::info!(bootstrap = %cfg.bootstrap, topics = ?cfg.topics, group = %cfg.group, "Kafka source started.");
    let mut body = Vec::new();
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            m = consumer.recv() => m,
        };
        // One log commit per batch: the messages waiting now, up to BATCH_MESSAGES.
        let mut batch = Vec::new();
        match first {
            Ok(m) => batch.push(m.detach()),
            Err(e) => {
                tracing::warn!(error = %e, "Kafka receive failed; retrying in 1 s.");
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        }
        while batch.len() < BATCH_MESSAGES {
            match tokio::time::timeout(BATCH_WAIT, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                _ => break,
            }
        }
        body.clear();
        let mut done: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut first_offset: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for m in &batch {
            if let Some(p) = m.payload() {
                body.extend_from_slice(p);
                if !p.ends_with(b"\n") {
                    body.push(b'\n');
                }
            }
            let k = (m.topic().to_owned(), m.partition());
            first_offset.entry(k.clone()).or_insert(m.offset());
            let e = done.entry(k).or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        let decoded = sink.decode(&body, now_ms());
        if !decoded.rejected.is_empty() {
            metrics::counter!("throng_kafka_rejected_total").increment(decoded.rejected.len() as u64);
            let r = &decoded.rejected[0];
            tracing::warn!(
                rejected = decoded.rejected.len(),
                partitions = ?done.keys().collect::<Vec<_>>(),
                "Rejected Kafka records (first: batch line {}: {}).", r.line, r.error
            );
        }
        if let Err(e) = sink.commit(decoded.records, WhenFull::Wait).await {
            // Not logged: read the batch again from its first offsets.
            tracing::error!(error = %e, "Kafka batch not logged; reading it again in 1 s.");
            for ((t, p), o) in &first_offset {
                if let Err(e) = consumer.seek(t, *p, Offset::Offset(*o), Duration::from_secs(5)) {
                    tracing::error!(topic = %t, partition = p, error = %e, "Kafka seek back failed.");
                }
            }
            tokio::time::sleep(RETRY_AFTER).await;
            continue;
        }
        metrics::counter!("throng_kafka_messages_total").increment(batch.len() as u64);
        if let Err(e) = offsets.advance(&done) {
            // The records are logged; a restart re-reads them and the idempotency key drops them.
            tracing::error!(error = %e, "Could not record Kafka offsets; a restart will re-read this batch.");
        }
        // For monitoring (consumer lag in the broker's tools) only: throng seeks to its own.
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in &done {
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
        }
        let _ = consumer.commit(&tpl, CommitMode::Async);
    }
    consumer.unsubscribe();
}

/// `kafka://HOST:PORT[,HOST:PORT]/TOPIC` → (bootstrap, topic).
pub fn parse_target(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("kafka://")
        .ok_or_else(|| format!("{url:?}: expected kafka://HOST:PORT/TOPIC"))?;
    match rest.split_once('/') {
        Some((b, t)) if !b.is_empty() && !t.is_empty() && !t.contains('/') => {
            Ok((b.to_owned(), t.to_owned()))
        }
        _ => Err(format!("{url:?}: expected kafka://HOST:PORT/TOPIC")),
    }
}

/// Keys records by region: the H3 cell at `res` of where each was measured.
#[derive(Debug)]
pub struct RegionKey {
    res: h3o::Resolution,
    registry: Registry,
}

impl RegionKey {
    /// Keys at `res` (0–15), with `registry` placing counters and stations.
    pub fn new(res: u8, registry: Registry) -> Result<RegionKey, String> {
        let res = h3o::Resolution::try_from(res).map_err(|_| format!("--key-res {res}: expected 0 to 15"))?;
        Ok(RegionKey { res, registry })
    }

    /// The key of one NDJSON record: the cell (hex string) at the key resolution of its position,
    /// or of its counter's or station's registered position; None when it has neither (the
    /// broker then spreads such records over partitions).
    pub fn of(&self, line: &[u8]) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(line).ok()?;
        let cell = if let (Some(lat), Some(lng)) = (v["lat"].as_f64(), v["lng"].as_f64()) {
            h3o::LatLng::new(lat, lng).ok()?.to_cell(self.res)
        } else if let Some(s) = v["sensor"].as_str() {
            self.registry.sensor(s)?.2.index()?.parent(self.res)?
        } else if let Some(st) = v["station"].as_str() {
            self.registry
                .station_gate_cell(st, v["gate"].as_str())?
                .1
                .index()?
                .parent(self.res)?
        } else {
            return None;
        };
        Some(cell.to_string())
    }
}

/// A keyed producer to one topic; `send` blocks while librdkafka's queue is full.
pub struct KafkaSink {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
    keys: RegionKey,
    sent: u64,
}

impl KafkaSink {
    /// Connects to `kafka://HOST:PORT/TOPIC`.
    pub fn new(url: &str, keys: RegionKey) -> Result<KafkaSink, String> {
        let (bootstrap, topic) = parse_target(url)?;
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            // Java clients' partitioner: a carrier's own producer keying the same way agrees.
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "false")
            .set("acks", "all")
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "200000")
            .create()
            .map_err(|e| format!("Kafka producer for {bootstrap}: {e}"))?;
        Ok(KafkaSink {
            producer,
            topic,
            keys,
            sent: 0,
        })
    }

    /// Sends every line of an NDJSON body as one message, keyed by region.
    pub fn send(&mut self, body: &[u8]) -> Result<(), String> {
        for line in body
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        {
            let key = self.keys.of(line);
            let mut rec = BaseRecord::<String, [u8]>::to(&self.topic).payload(line);
            if let Some(k) = &key {
                rec = rec.key(k);
            }
            let mut rec = rec;
            loop {
                match self.producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err((e, _)) => return Err(format!("Kafka send to {}: {e}", self.topic)),
                }
            }
            self.sent += 1;
        }
        Ok(())
    }

    /// Waits until every message is acknowledged by the broker; how many were sent.
    pub fn finish(self) -> Result<u64, String> {
        self.producer
            .flush(Duration::from_secs(60))
            .map_err(|e| format!("Kafka flush to {}: {e}", self.topic))?;
        Ok(self.sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_keys_are_read_as_documented() {
        assert_eq!(
            parse_target("kafka://127.0.0.1:9092/throng-feed").unwrap(),
            ("127.0.0.1:9092".into(), "throng-feed".into())
        );
        assert!(parse_target("kafka://127.0.0.1:9092").is_err());
        assert!(parse_target("http://x/y").is_err());
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bund");
        let reg = Registry::load_dir(&dir, h3o::Resolution::Eleven).unwrap();
        let k = RegionKey::new(6, reg).unwrap();
        let ping = k
            .of(br#"{"kind":"lbs","ts":1,"device":"a","lat":31.2405,"lng":121.4832}"#)
            .unwrap();
        let expect = h3o::LatLng::new(31.2405, 121.4832)
            .unwrap()
            .to_cell(h3o::Resolution::Six)
            .to_string();
        assert_eq!(ping, expect);
        // A counter on the Bund keys to the same region as a ping beside it.
        let cam = k
            .of(br#"{"kind":"counter","ts":1,"sensor":"chenyi-steps-cam","in":1,"out":0}"#)
            .unwrap();
        assert_eq!(cam, expect);
        assert!(k
            .of(br#"{"kind":"counter","ts":1,"sensor":"nowhere","in":1}"#)
            .is_none());
        assert!(RegionKey::new(16, Registry::default()).is_err());
    }

    #[test]
    fn offsets_survive_a_restart_and_only_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        let s = OffsetStore::open(Some(dir.path()), "throng bund").unwrap();
        let mut done = BTreeMap::new();
        done.insert(("feed".to_string(), 0), 120);
        done.insert(("feed".to_string(), 3), 7);
        s.advance(&done).unwrap();
        done.insert(("feed".to_string(), 0), 50);
        s.advance(&done).unwrap();
        let again = OffsetStore::open(Some(dir.path()), "throng bund").unwrap();
        assert_eq!(
            (
                again.next("feed", 0),
                again.next("feed", 3),
                again.next("feed", 1)
            ),
            (Some(120), Some(7), None)
        );
        assert!(dir.path().join("kafka-offsets/throng_bund.json").exists());
    }
}
