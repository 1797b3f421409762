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
//! Partitions and event time: each partition is in event-time order (its producer wrote it so),
//! but the broker hands partitions over in any interleaving — one may be read minutes ahead of
//! another. The consumer therefore aligns them, as a stream processor aligns per-partition
//! watermarks: a record is passed on only once every partition that still has data to give has
//! been read up to its time (`Aligner`); a partition that is caught up (end of partition) does not
//! hold the others back. Offsets advance only past records passed on.
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
use crate::model::{now_ms, Record};
use crate::scenario::registry::Registry;

/// Records held back waiting for a slower partition, at most; past it the oldest go on anyway (and
/// may be late), so one stalled partition cannot make the others use unbounded memory.
const MAX_HELD: usize = 500_000;
/// A partition that has given nothing (no message, no end) for this long holds nobody back.
const LANE_IDLE: Duration = Duration::from_secs(2);
/// Messages taken into one log commit at most.
const BATCH_MESSAGES: usize = 10_000;
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

/// What one `[[kafka]]` source is doing, for `/api/health`. A cheap handle; its lock is private.
#[derive(Debug, Clone, Default)]
pub struct KafkaStatus(Arc<Mutex<serde_json::Value>>);

impl KafkaStatus {
    /// The status now, as JSON.
    pub fn get(&self) -> serde_json::Value {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, v: serde_json::Value) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

/// Per-partition alignment of event time (see the module doc).
#[derive(Debug, Default)]
pub struct Aligner {
    lanes: BTreeMap<(String, i32), Lane>,
    held: usize,
}

#[derive(Debug, Default)]
struct Lane {
    /// Records not yet passed on, with the offset of the message each came from.
    queue: std::collections::VecDeque<(i64, Record)>,
    /// The newest event time read from this partition.
    high: i64,
    /// The offset after the newest message read.
    read_to: i64,
    /// At the end of the partition: nothing more to read now, so it holds nobody back.
    caught_up: bool,
    /// When it last gave a message or its end (a partition silent for `LANE_IDLE` holds nobody
    /// back either: a broker that never says "end of partition" cannot stall the others).
    heard: Option<std::time::Instant>,
}

impl Aligner {
    /// A partition assigned to this consumer, to be read from `from`: until it gives a message or
    /// its end, it holds the others back (it may hold older records than theirs).
    pub fn assign(&mut self, topic: &str, partition: i32, from: i64) {
        let lane = self.lane(topic, partition);
        lane.read_to = lane.read_to.max(from);
        lane.heard = Some(std::time::Instant::now());
    }

    fn lane(&mut self, topic: &str, partition: i32) -> &mut Lane {
        self.lanes
            .entry((topic.to_owned(), partition))
            .or_insert_with(|| Lane {
                high: i64::MIN,
                ..Lane::default()
            })
    }

    /// Takes one message's records.
    pub fn push(&mut self, topic: &str, partition: i32, offset: i64, records: Vec<Record>) {
        let n = records.len();
        let lane = self.lane(topic, partition);
        lane.caught_up = false;
        lane.heard = Some(std::time::Instant::now());
        lane.read_to = lane.read_to.max(offset + 1);
        for r in records {
            lane.high = lane.high.max(r.ts.millis());
            lane.queue.push_back((offset, r));
        }
        self.held += n;
    }

    /// Partition `partition` (of any topic: librdkafka's end event names no topic) has been read
    /// to its end, for now.
    pub fn caught_up(&mut self, partition: i32) {
        for ((_, p), l) in self.lanes.iter_mut() {
            if *p == partition {
                l.caught_up = true;
                l.heard = Some(std::time::Instant::now());
            }
        }
    }

    /// Forgets a partition taken away in a rebalance (its held records were never passed on, so
    /// its new owner reads them again from the recorded offset).
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        if let Some(l) = self.lanes.remove(&(topic.to_owned(), partition)) {
            self.held -= l.queue.len();
        }
    }

    /// Records every partition that still has data has been read past, in event-time order, and
    /// per partition the offset after which nothing is held any more.
    pub fn release(&mut self) -> (Vec<Record>, BTreeMap<(String, i32), i64>) {
        let bound = self
            .lanes
            .values()
            .filter(|l| !l.caught_up && l.heard.is_none_or(|h| h.elapsed() < LANE_IDLE))
            .map(|l| l.high)
            .min()
            .unwrap_or(i64::MAX);
        let mut out = Vec::new();
        self.merge(bound, &mut out);
        // Too much held behind a stalled partition: let the oldest go.
        while self.held - out.len() > MAX_HELD {
            let Some(oldest) = self
                .lanes
                .values()
                .filter_map(|l| l.queue.front().map(|(_, r)| r.ts.millis()))
                .min()
            else {
                break;
            };
            self.merge(oldest, &mut out);
        }
        self.held -= out.len();
        let done = self
            .lanes
            .iter()
            .map(|(k, l)| (k.clone(), l.queue.front().map_or(l.read_to, |(o, _)| *o)))
            .collect();
        (out, done)
    }

    /// Passes on, oldest head first (a k-way merge: each partition keeps its own order, late
    /// records in it stay late), every record at the head of a partition up to `bound`.
    fn merge(&mut self, bound: i64, out: &mut Vec<Record>) {
        loop {
            let next = self
                .lanes
                .values_mut()
                .filter(|l| l.queue.front().is_some_and(|(_, r)| r.ts.millis() <= bound))
                .min_by_key(|l| l.queue.front().map_or(i64::MAX, |(_, r)| r.ts.millis()));
            match next.and_then(|l| l.queue.pop_front()) {
                Some((_, r)) => out.push(r),
                None => break,
            }
        }
    }

    /// Records held back now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// The partitions being read (`topic/partition`), and which of them are at their end.
    pub fn partitions(&self) -> Vec<(String, bool)> {
        self.lanes
            .iter()
            .map(|((t, p), l)| (key(t, *p), l.caught_up))
            .collect()
    }
}

/// A change of assignment, for the consumer loop's aligner.
#[derive(Debug)]
enum Assignment {
    /// Read from this offset.
    Assigned(String, i32, i64),
    /// Taken away.
    Revoked(String, i32),
}

/// Seeks assigned partitions to throng's own offsets and tells the loop what changed.
struct Rebalancer {
    offsets: OffsetStore,
    changes: Arc<Mutex<Vec<Assignment>>>,
}

impl Rebalancer {
    fn tell(&self, a: Assignment) {
        self.changes.lock().unwrap_or_else(|p| p.into_inner()).push(a);
    }
}

impl ClientContext for Rebalancer {
    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is news for the aligner (it arrives through `recv` too), not an
        // error for the log.
        if !is_partition_end(&error) {
            tracing::warn!(error = %error, "Kafka client: {reason}");
        }
    }
}

/// True for librdkafka's "end of partition" event, which clients report as an error.
pub fn is_partition_end(error: &KafkaError) -> bool {
    matches!(error, KafkaError::PartitionEOF(_))
        || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
}

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
                    let next = self.offsets.next(t, *p);
                    self.tell(Assignment::Assigned(t.clone(), *p, next.unwrap_or(0)));
                    let at = next.map_or(Offset::Beginning, Offset::Offset);
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
                for e in tpl.elements() {
                    self.tell(Assignment::Revoked(e.topic().to_owned(), e.partition()));
                }
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
pub fn consumer_config(cfg: &KafkaConfig) -> ClientConfig {
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
        .set("partition.assignment.strategy", "range")
        // End-of-partition events tell the aligner a partition is caught up.
        .set("enable.partition.eof", "true")
        // librdkafka prefetches up to `queued.min.messages` (100,000) and then waits this long
        // (1 s by default) before fetching again: with one-record messages that paced a replay
        // at 130 k records/s in 100 k steps; at 10 ms it reads 370 k/s (docs/PERFORMANCE.md).
        .set("fetch.queue.backoff.ms", "10")
        // A topic subscribed to before it exists is looked for again every 10 s, not every 5 min.
        .set("topic.metadata.refresh.interval.ms", "10000");
    for (k, v) in cfg.security_properties() {
        c.set(k, v);
    }
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// Joins messages' payloads into one NDJSON body (a newline after each that lacks one); the line
/// number (1-based, as the decoder counts) each message starts at.
pub fn batch_body<'a>(payloads: impl Iterator<Item = Option<&'a [u8]>>, body: &mut Vec<u8>) -> Vec<usize> {
    body.clear();
    let mut first_line = Vec::new();
    let mut line = 1usize;
    for p in payloads {
        first_line.push(line);
        if let Some(p) = p.filter(|p| !p.is_empty()) {
            body.extend_from_slice(p);
            line += p.iter().filter(|b| **b == b'\n').count();
            if !p.ends_with(b"\n") {
                body.push(b'\n');
                line += 1;
            }
        }
    }
    first_line
}

/// Takes one receive's outcome into the batch (a message) or the aligner (a partition's end);
/// false on an error, which is kept for `/api/health`.
fn took<'a>(
    m: Result<rdkafka::message::BorrowedMessage<'a>, KafkaError>,
    aligner: &mut Aligner,
    batch: &mut Vec<rdkafka::message::BorrowedMessage<'a>>,
    last_err: &mut Option<String>,
) -> bool {
    match m {
        Ok(m) => {
            batch.push(m);
            true
        }
        Err(KafkaError::PartitionEOF(p)) => {
            aligner.caught_up(p);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "Kafka receive failed.");
            *last_err = Some(e.to_string());
            false
        }
    }
}

/// Runs one `[[kafka]]` subscription until `stop`.
pub async fn run(
    cfg: KafkaConfig,
    sink: FeedSink,
    offsets: OffsetStore,
    status: KafkaStatus,
    stop: CancellationToken,
) {
    // The gauges sum over every `[[kafka]]` source: each adds its own change.
    let shown = Mutex::new((0usize, 0usize));
    let report = |aligner: &Aligner, logged: u64, error: Option<String>| {
        let parts = aligner.partitions();
        let (held, assigned) = std::mem::replace(
            &mut *shown.lock().unwrap_or_else(|p| p.into_inner()),
            (aligner.held(), parts.len()),
        );
        metrics::gauge!("throng_kafka_held_records").increment(aligner.held() as f64 - held as f64);
        metrics::gauge!("throng_kafka_assigned_partitions").increment(parts.len() as f64 - assigned as f64);
        status.set(serde_json::json!({
            "bootstrap": cfg.bootstrap, "topics": cfg.topics, "group": cfg.group,
            "partitions": parts.iter().map(|(p, end)| serde_json::json!({"partition": p, "caught_up": end})).collect::<Vec<_>>(),
            "next_offsets": offsets.all(),
            "held_records": aligner.held(),
            "messages_logged": logged,
            "error": error,
        }));
    };
    let changes = Arc::new(Mutex::new(Vec::new()));
    let ctx = Rebalancer {
        offsets: offsets.clone(),
        changes: changes.clone(),
    };
    let consumer: StreamConsumer<Rebalancer> = match consumer_config(&cfg).create_with_context(ctx) {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = %e, bootstrap = %cfg.bootstrap, "Kafka source not started."),
    };
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    let mut aligner = Aligner::default();
    if let Err(e) = consumer.subscribe(&topics) {
        report(&aligner, 0, Some(format!("subscribe failed: {e}")));
        return tracing::error!(error = %e, topics = ?cfg.topics, "Kafka subscribe failed.");
    }
    tracing::info!(bootstrap = %cfg.bootstrap, topics = ?cfg.topics, group = %cfg.group, "Kafka source started.");
    let mut logged = 0u64;
    let mut last_error: Option<String> = None;
    report(&aligner, logged, None);
    let mut body = Vec::new();
    loop {
        // Wait for a message (or a partition's end); with records held back, not for long, so a
        // partition going quiet releases them.
        let wait = if aligner.held() > 0 {
            LANE_IDLE / 4
        } else {
            Duration::from_secs(3600)
        };
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            m = tokio::time::timeout(wait, consumer.recv()) => m,
        };
        let mut batch: Vec<rdkafka::message::BorrowedMessage<'_>> = Vec::new();
        let mut last_err: Option<String> = None;
        let healthy = match first {
            Ok(m) => took(m, &mut aligner, &mut batch, &mut last_err),
            Err(_) => true,
        };
        if !healthy {
            tokio::time::sleep(RETRY_AFTER).await;
        }
        // One log commit per batch: the messages already waiting in the client, up to
        // BATCH_MESSAGES (no timer per message: what is there now is the batch).
        while batch.len() < BATCH_MESSAGES {
            use futures_util::FutureExt;
            match consumer.recv().now_or_never() {
                Some(m) => {
                    if !took(m, &mut aligner, &mut batch, &mut last_err) {
                        break;
                    }
                }
                None => break,
            }
        }
        for c in changes.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            match c {
                Assignment::Assigned(t, p, from) => aligner.assign(&t, p, from),
                Assignment::Revoked(t, p) => aligner.revoke(&t, p),
            }
        }
        // The whole batch parsed as one body; each message's first line number says which
        // message (so which offset) every record came from.
        let first_line = batch_body(batch.iter().map(|m| m.payload()), &mut body);
        let mut per_message: Vec<Vec<Record>> = vec![Vec::new(); batch.len()];
        let (mut rejected, mut j) = (0usize, 0usize);
        sink.each_line(&body, now_ms(), |n, r| {
            while j + 1 < first_line.len() && first_line[j + 1] <= n {
                j += 1;
            }
            match r {
                Ok(rec) => per_message[j].push(rec),
                Err(e) => {
                    if rejected == 0 {
                        let m = &batch[j];
                        tracing::warn!(topic = %m.topic(), partition = m.partition(), offset = m.offset(), "Rejected Kafka record (line {} of the message): {e}", n + 1 - first_line[j]);
                    }
                    rejected += 1;
                }
            }
        });
        let messages = batch.len();
        for (m, recs) in batch.drain(..).zip(per_message) {
            aligner.push(m.topic(), m.partition(), m.offset(), recs);
        }
        if rejected > 0 {
            metrics::counter!("throng_kafka_rejected_total").increment(rejected as u64);
        }
        if let Some(e) = last_err {
            last_error = Some(e);
        }
        let (records, done) = aligner.release();
        if records.is_empty() && messages == 0 {
            report(&aligner, logged, last_error.clone());
            continue;
        }
        if let Err(e) = sink.commit(records, WhenFull::Wait).await {
            // Not logged: read everything not yet logged again from the recorded offsets.
            tracing::error!(error = %e, "Kafka batch not logged; reading it again in 1 s.");
            last_error = Some(format!("batch not logged: {e}"));
            report(&aligner, logged, last_error.clone());
            for (t, p) in done.keys() {
                let at = offsets.next(t, *p).map_or(Offset::Beginning, Offset::Offset);
                if let Err(e) = consumer.seek(t, *p, at, Duration::from_secs(5)) {
                    tracing::error!(topic = %t, partition = p, error = %e, "Kafka seek back failed.");
                }
            }
            aligner = Aligner::default();
            for ((t, p), _) in done {
                aligner.assign(&t, p, offsets.next(&t, p).unwrap_or(0));
            }
            tokio::time::sleep(RETRY_AFTER).await;
            continue;
        }
        metrics::counter!("throng_kafka_messages_total").increment(messages as u64);
        logged += messages as u64;
        last_error = None;
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
        report(&aligner, logged, last_error.clone());
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
    /// The engine's resolution (`h3.resolution`): a record's key is the parent of the cell the
    /// engine files it under, so every record of one cell lands on one partition. (The cell of a
    /// point at a coarse resolution is not always the parent of its fine cell: H3's children do
    /// not tile their parent exactly.)
    engine: h3o::Resolution,
    registry: Registry,
}

impl RegionKey {
    /// Keys at `res` (0–15) over cells at the engine's resolution `engine`, with `registry`
    /// placing counters and stations.
    pub fn new(res: u8, engine: h3o::Resolution, registry: Registry) -> Result<RegionKey, String> {
        let res = h3o::Resolution::try_from(res).map_err(|_| format!("--key-res {res}: expected 0 to 15"))?;
        if res > engine {
            return Err(format!(
                "--key-res {res}: finer than the engine's cells (h3.resolution {engine}); a region must hold whole cells"
            ));
        }
        Ok(RegionKey {
            res,
            engine,
            registry,
        })
    }

    /// The key of one NDJSON record: the cell (hex string) at the key resolution holding the
    /// engine's cell of its position (converted to WGS-84 as the parser does), or of its
    /// counter's or station's registered position; None when it has neither (the broker then
    /// spreads such records over partitions).
    pub fn of(&self, line: &[u8]) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(line).ok()?;
        let cell = if let (Some(lat), Some(lng)) = (v["lat"].as_f64(), v["lng"].as_f64()) {
            let crs = match v["crs"].as_str() {
                Some(c) => crate::ingest::crs::Crs::parse(c)?,
                None => crate::ingest::crs::Crs::Wgs84,
            };
            let (lat, lng) = crs.to_wgs84(lat, lng);
            h3o::LatLng::new(lat, lng).ok()?.to_cell(self.engine)
        } else if let Some(s) = v["sensor"].as_str() {
            self.registry.sensor(s)?.2.index()?
        } else if let Some(st) = v["station"].as_str() {
            self.registry
                .station_gate_cell(st, v["gate"].as_str())?
                .1
                .index()?
        } else {
            return None;
        };
        Some(cell.parent(self.res)?.to_string())
    }

    /// The key of a record the engine files under `cell`.
    pub fn of_cell(&self, cell: h3o::CellIndex) -> Option<String> {
        Some(cell.parent(self.res)?.to_string())
    }
}

/// Kafka's murmur2 hash as the Java client computes it (`Utils.murmur2`); librdkafka's
/// `murmur2_random` partitioner uses the same.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate().rev() {
            h ^= (*b as u32) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// The partition a keyed record lands on among `partitions`: `toPositive(murmur2(key)) % n`, as
/// the Java clients and `throng`'s producer choose.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
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
            self.send_keyed(line, key)?;
        }
        Ok(())
    }

    /// Sends one record the parser has already filed under `cell`, keyed by that cell's region.
    pub fn send_parsed(&mut self, line: &[u8], cell: crate::model::CellId) -> Result<(), String> {
        let key = cell.index().and_then(|c| self.keys.of_cell(c));
        self.send_keyed(line, key)
    }

    fn send_keyed(&mut self, line: &[u8], key: Option<String>) -> Result<(), String> {
        let mut rec = BaseRecord::<String, [u8]>::to(&self.topic).payload(line);
        if let Some(k) = &key {
            rec = rec.key(k);
        }
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
    fn murmur2_matches_the_java_clients_test_vectors() {
        // Kafka's UtilsTest: the values the Java client computes (as signed 32-bit integers).
        for (key, want) in [
            (&b"21"[..], -973_932_308i32),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key) as i32, want, "{}", String::from_utf8_lossy(key));
        }
        assert!((0..4).contains(&partition_of(b"86309a6b7ffffff", 4)));
    }

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
        let k = RegionKey::new(6, h3o::Resolution::Eleven, reg).unwrap();
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
        assert!(RegionKey::new(16, h3o::Resolution::Eleven, Registry::default()).is_err());
        assert!(RegionKey::new(12, h3o::Resolution::Eleven, Registry::default()).is_err());
    }

    fn ping(ts: i64) -> Record {
        use crate::model::{Body, CellId, DeviceId, EventTime, SourceId};
        Record {
            ts: EventTime(ts),
            source: SourceId(2),
            cell: CellId(0x08b3_0995_8ac3_6fff),
            point: None,
            body: Body::Ping {
                device: DeviceId(ts as u64),
                pos: None,
            },
        }
    }

    fn times(r: &[Record]) -> Vec<i64> {
        r.iter().map(|r| r.ts.millis()).collect()
    }

    #[test]
    fn a_partition_read_ahead_waits_for_the_others_and_offsets_stop_at_what_is_held() {
        let mut a = Aligner::default();
        a.assign("feed", 0, 0);
        a.assign("feed", 1, 40);
        // Partition 0 is read far ahead; partition 1 has said nothing yet: nothing goes.
        a.push("feed", 0, 0, vec![ping(1_000), ping(2_000)]);
        a.push("feed", 0, 1, vec![ping(60_000)]);
        let (out, done) = a.release();
        assert!(out.is_empty());
        assert_eq!(
            done[&("feed".to_string(), 0)],
            0,
            "nothing of partition 0 is logged yet"
        );
        assert_eq!(done[&("feed".to_string(), 1)], 40);
        // Partition 1 reaches 30 s: everything up to 30 s goes, merged in time order.
        a.push("feed", 1, 40, vec![ping(1_500), ping(30_000)]);
        let (out, done) = a.release();
        assert_eq!(times(&out), vec![1_000, 1_500, 2_000, 30_000]);
        assert_eq!(
            done[&("feed".to_string(), 0)],
            1,
            "the 60 s record's message is still held"
        );
        assert_eq!(done[&("feed".to_string(), 1)], 41);
        assert_eq!(a.held(), 1);
        // Partition 1 is caught up: it holds nobody back.
        a.caught_up(1);
        let (out, done) = a.release();
        assert_eq!(times(&out), vec![60_000]);
        assert_eq!(done[&("feed".to_string(), 0)], 2);
        // A revoked partition's held records are dropped (its new owner reads them again).
        a.push("feed", 0, 2, vec![ping(70_000)]);
        a.push("feed", 1, 41, vec![ping(65_000)]);
        a.revoke("feed", 1);
        assert_eq!(a.held(), 1);
        let (out, _) = a.release();
        assert_eq!(times(&out), vec![70_000]);
    }

    #[test]
    fn a_batch_of_messages_is_one_body_and_every_line_knows_its_message() {
        let payloads: Vec<Option<&[u8]>> = vec![
            Some(b"{\"a\":1}\n{\"a\":2}"),
            None,
            Some(b"{\"b\":1}\n"),
            Some(b""),
            Some(b"{\"c\":1}\n\n{\"c\":2}\n"),
        ];
        let mut body = Vec::new();
        let first = batch_body(payloads.into_iter(), &mut body);
        assert_eq!(first, vec![1, 3, 3, 4, 4]);
        // Line n belongs to the last message starting at or before it (empty ones start nothing).
        let lines: Vec<(usize, String)> = body
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .map(|(i, l)| (i + 1, String::from_utf8_lossy(l).into_owned()))
            .collect();
        let owner = |n: usize| first.iter().rposition(|f| *f <= n).unwrap();
        let got: Vec<(String, usize)> = lines.iter().map(|(n, l)| (l.clone(), owner(*n))).collect();
        assert_eq!(
            got,
            vec![
                ("{\"a\":1}".to_string(), 0),
                ("{\"a\":2}".to_string(), 0),
                ("{\"b\":1}".to_string(), 2),
                ("{\"c\":1}".to_string(), 4),
                ("{\"c\":2}".to_string(), 4),
            ]
        );
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
