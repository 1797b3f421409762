//! The city stage: the partitions' windows (from the windows topic) merged into the city's, and
//! the segments evaluated once over the merge, so a segment whose ground spans regions held by
//! different partitions is counted from all of them and has one tier machine.
//!
//! Two roles run the same stage over the same topic, which makes the same decisions in both:
//! - **the recorder**, one in the whole cluster (the member of the consumer group
//!   `<group>.city` holding the windows topic's one partition): writes `segment_windows` and
//!   `alerts` under `<cluster.dir>/city/`, checkpointed there with the topic offset, so another
//!   instance carries it on after a failover exactly as the partitions are carried on;
//! - **the viewer**, one per instance: starts from the recorder's latest checkpoint and shows the
//!   city on this instance's dashboard, `/ws/live` and `/api/segments`; it writes nothing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::partition::{PartitionError, Shared};
use super::windows::{Merger, Part};
use crate::config::KafkaConfig;
use crate::flow::{Closed, Outputs, WindowKind};
use crate::history::{History, Recorder, RecorderMark};
use crate::live::Publisher;
use crate::risk::{Risk, RiskState, ThresholdStore};

/// The city stage's folder under the shared one.
pub fn folder(root: &Path) -> PathBuf {
    root.join("city")
}

/// Where the city's results go.
pub enum CityOut {
    /// `segment_windows` and `alerts` in the city folder (the recorder).
    Record(Box<Recorder>),
    /// This instance's viewers and board (a viewer).
    Show(Publisher),
}

impl Outputs for CityOut {
    fn closed(&mut self, c: &Closed<'_>) {
        match self {
            CityOut::Record(r) => r.closed(c),
            CityOut::Show(p) => p.closed(c),
        }
    }

    fn persist(&mut self) -> bool {
        match self {
            CityOut::Record(r) => r.persist(),
            CityOut::Show(_) => true,
        }
    }

    fn finish(&mut self) {
        if let CityOut::Record(r) = self {
            r.finish();
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Saved {
    next_offset: i64,
    merger: Merger,
    risk: RiskState,
    recorder: RecorderMark,
    by: String,
    written_at: String,
}

/// The city stage's state.
pub struct City {
    /// The recorder's lease on the city folder (None for a viewer).
    lease: Option<u64>,
    merger: Merger,
    risk: Risk,
    outputs: CityOut,
    next_offset: i64,
    dir: PathBuf,
    last_checkpoint: Instant,
    checkpointed_at: Option<i64>,
    /// City windows evaluated since this stage started.
    pub windows: u64,
}

impl City {
    /// The stage from the recorder's latest checkpoint (if any), waiting for `expected`
    /// partitions; `recording` for the recorder (which takes the folder's lease), with the
    /// outputs `out` makes.
    pub fn open(
        shared: &Shared,
        recording: bool,
        thresholds: ThresholdStore,
        expected: Vec<String>,
        out: impl FnOnce(&Path, RecorderMark) -> Result<CityOut, PartitionError>,
    ) -> Result<City, PartitionError> {
        let dir = folder(&shared.root);
        // Only the recorder writes the folder, so only the recorder takes its lease, before it
        // reads the checkpoint.
        let lease = match recording {
            true => Some(super::partition::take_lease(&dir, &shared.instance)?),
            false => None,
        };
        let saved: Option<Saved> = super::partition::read_checkpoint(&dir)?;
        let cfg = &shared.cfg;
        let mut risk = Risk::new(
            shared.map.clone(),
            shared.registry.points().to_vec(),
            cfg.risk.clone(),
            thresholds,
            cfg.window.size.as_millis() as i64,
        );
        let (mut merger, mut next_offset, mut mark) = (Merger::default(), 0, RecorderMark::default());
        if let Some(s) = saved {
            risk.restore(s.risk);
            (merger, next_offset, mark) = (s.merger, s.next_offset, s.recorder);
        }
        merger.expect(expected);
        let outputs = out(&dir, mark)?;
        Ok(City {
            lease,
            merger,
            risk,
            outputs,
            next_offset,
            dir,
            last_checkpoint: Instant::now(),
            checkpointed_at: None,
            windows: 0,
        })
    }

    /// The first offset of the windows topic this state has not seen.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// What `/api/health` shows of this stage.
    pub fn status(&self, topic_end: Option<i64>) -> serde_json::Value {
        serde_json::json!({
            "next_offset": self.next_offset,
            "topic_end": topic_end,
            "windows": self.windows,
            "merged_to": self.merger.merged_to().map(|e| crate::model::EventTime(e).to_string()),
            "waiting_for": self.merger.waiting_for(),
            "late_parts": self.merger.late_parts,
            "repeated_parts": self.merger.repeated_parts,
        })
    }

    /// One message of the windows topic (skipped when already seen).
    pub fn take(&mut self, offset: i64, payload: &[u8]) {
        if offset < self.next_offset {
            return;
        }
        self.next_offset = offset + 1;
        match serde_json::from_slice::<Part>(payload) {
            Ok(p) => self.merger.add(p),
            Err(e) => {
                return tracing::warn!(offset, error = %e, "A message on the windows topic is not a window; skipped.")
            }
        }
        for m in self.merger.ready() {
            let window = Arc::new(m.window);
            let (statuses, alerts) = self.risk.evaluate(&window);
            // Logged and counted once in the cluster: by the recorder, not by every viewer.
            let recording = matches!(self.outputs, CityOut::Record(_));
            if recording && !alerts.is_empty() {
                metrics::counter!("throng_alerts_total").increment(alerts.len() as u64);
            }
            for a in alerts.iter().filter(|_| recording) {
                tracing::warn!(segment = %a.segment_id, from = a.from_tier.as_str(), to = a.to_tier.as_str(), reason = %a.reason, "Tier change.");
            }
            self.windows += 1;
            self.outputs.closed(&Closed {
                window: &window,
                statuses: &Arc::new(statuses),
                alerts: &alerts,
                calibration: &[],
                kind: if m.silent {
                    WindowKind::Silent
                } else {
                    WindowKind::Data
                },
            });
        }
        if let CityOut::Record(r) = &mut self.outputs {
            r.flush_if_due();
        }
    }

    /// Checkpoints the recorder when `every` has passed and there is something new.
    pub fn checkpoint_if_due(&mut self, every: Duration, by: &str) -> Result<(), PartitionError> {
        if self.last_checkpoint.elapsed() < every || self.checkpointed_at == Some(self.next_offset) {
            return Ok(());
        }
        self.checkpoint(by)
    }

    /// Makes the recorded windows durable, then writes the state with its offset. (A viewer
    /// never checkpoints: the recorder's checkpoint is the one every viewer starts from.)
    pub fn checkpoint(&mut self, by: &str) -> Result<(), PartitionError> {
        self.last_checkpoint = Instant::now();
        let CityOut::Record(r) = &mut self.outputs else {
            return Ok(());
        };
        if let Some(lease) = self.lease {
            super::partition::check_lease(&self.dir, lease)?;
        }
        if !r.persist() {
            return Err(PartitionError::History(format!(
                "{}: the city history could not be written; the checkpoint waits for it",
                self.dir.display()
            )));
        }
        let saved = Saved {
            next_offset: self.next_offset,
            merger: self.merger.clone(),
            risk: self.risk.state(),
            recorder: r.mark(),
            by: by.to_owned(),
            written_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        super::partition::write_checkpoint(&self.dir, &saved)?;
        self.checkpointed_at = Some(self.next_offset);
        Ok(())
    }

    /// Hands the recorder's role over: checkpointed, history closed.
    pub fn hand_over(mut self, by: &str) -> Result<(), PartitionError> {
        let r = self.checkpoint(by);
        self.outputs.finish();
        r
    }
}

/// Every partition of the feed topics, as the windows topic names them (asked of the brokers,
/// retried until they answer or `stop`).
pub fn feed_partitions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topics: &[String],
    stop: &CancellationToken,
) -> Vec<String> {
    let mut out = Vec::new();
    for t in topics {
        loop {
            let n = consumer
                .fetch_metadata(Some(t), Duration::from_secs(5))
                .ok()
                .and_then(|m| m.topics().first().map(|x| x.partitions().len()))
                .unwrap_or(0);
            if n > 0 {
                out.extend((0..n as i32).map(|p| super::windows::source_name(t, p)));
                break;
            }
            if stop.is_cancelled() {
                return out;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    out
}

/// The recorder's consumer context: opens the stage when the group hands it the windows topic,
/// checkpoints it when the group takes it away.
struct Role {
    shared: Shared,
    thresholds: ThresholdStore,
    expected: Mutex<Vec<String>>,
    held: Mutex<Option<City>>,
}

impl Role {
    fn held(&self) -> std::sync::MutexGuard<'_, Option<City>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hand_over(&self) {
        if let Some(c) = self.held().take() {
            match c.hand_over(&self.shared.instance) {
                Ok(()) => tracing::info!("City stage handed over: checkpointed for its next recorder."),
                Err(e) => {
                    tracing::error!(error = %e, "City stage handed over without a checkpoint; its next recorder reads again from the last one.")
                }
            }
        }
    }
}

impl ClientContext for Role {
    fn error(&self, error: KafkaError, reason: &str) {
        if !crate::transport::kafka::is_partition_end(&error) {
            tracing::warn!(error = %error, "Kafka client (city): {reason}");
        }
    }
}

impl ConsumerContext for Role {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        tracing::info!(event = ?err, partitions = tpl.count(), "City stage recorder: the group rebalanced.");
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS if tpl.count() > 0 => {
                let cfg = self.shared.cfg.clone();
                let expected = self.expected.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let opened = City::open(
                    &self.shared,
                    true,
                    self.thresholds.clone(),
                    expected,
                    |dir, mark| {
                        let history = History::open(dir, cfg.history.retention_days, Duration::ZERO)
                            .map_err(|e| PartitionError::History(e.to_string()))?;
                        let mut r =
                            Recorder::new(Arc::new(history), dir, cfg.history.flush_every).without_cells();
                        r.resume(mark).map_err(|source| PartitionError::Io {
                            path: dir.to_owned(),
                            source,
                        })?;
                        Ok(CityOut::Record(Box::new(r)))
                    },
                );
                match opened {
                    Ok(city) => {
                        let next = city.next_offset();
                        let parts: Vec<(String, i32)> = tpl
                            .elements()
                            .iter()
                            .map(|e| (e.topic().to_owned(), e.partition()))
                            .collect();
                        for (t, p) in parts {
                            let at = if next > 0 {
                                Offset::Offset(next)
                            } else {
                                Offset::Beginning
                            };
                            let _ = tpl.set_partition_offset(&t, p, at);
                        }
                        tracing::info!(
                            next_offset = next,
                            "City stage recorder taken on from its checkpoint."
                        );
                        *self.held() = Some(city);
                        if let Err(e) = consumer.assign(tpl) {
                            tracing::error!(error = %e, "Kafka assignment failed (city).");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "City stage not taken on; segments are not recorded until this is fixed.")
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let _ = consumer.assign(tpl);
            }
            _ => {
                self.hand_over();
                let _ = consumer.unassign();
            }
        }
    }
}

/// The windows topic's end (the next offset the brokers will give), for `/api/health`.
fn topic_end<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str) -> Option<i64> {
    consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(1))
        .ok()
        .map(|w| w.1)
}

fn consumer_config(kafka: &KafkaConfig, group: &str) -> rdkafka::config::ClientConfig {
    let mut k = kafka.clone();
    k.group = group.to_owned();
    let mut c = crate::transport::kafka::consumer_config(&k);
    // A city window of a megacity's cells is one large message; the end of the topic is no news.
    c.set("fetch.message.max.bytes", "67108864")
        .set("enable.partition.eof", "false");
    c
}

/// Runs the recorder role's group membership until `stop`.
pub fn run_recorder(
    shared: Shared,
    kafka: KafkaConfig,
    topic: String,
    thresholds: ThresholdStore,
    status: super::member::ClusterStatus,
    stop: CancellationToken,
) {
    let cfg = shared.cfg.clone();
    let group = format!("{}.city", kafka.group);
    let role = Role {
        shared,
        thresholds,
        expected: Mutex::default(),
        held: Mutex::default(),
    };
    let consumer: BaseConsumer<Role> = match consumer_config(&kafka, &group).create_with_context(role) {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = %e, "City stage recorder not started."),
    };
    let expected = feed_partitions(&consumer, &kafka.topics, &stop);
    *consumer
        .context()
        .expected
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = expected;
    if let Err(e) = consumer.subscribe(&[topic.as_str()]) {
        return tracing::error!(error = %e, topic = %topic, "City stage recorder could not subscribe.");
    }
    let instance = consumer.context().shared.instance.clone();
    tracing::info!(group = %group, topic = %topic, "City stage recorder: joined its group (one instance records the city).");
    let mut last_status = Instant::now();
    while !stop.is_cancelled() {
        let mut wait = Duration::from_millis(100);
        let mut n = 0;
        while n < 1000 {
            match consumer.poll(wait) {
                None => break,
                Some(Ok(m)) => {
                    if let Some(c) = consumer.context().held().as_mut() {
                        c.take(m.offset(), m.payload().unwrap_or(&[]));
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka receive failed (city).");
                    break;
                }
            }
            wait = Duration::ZERO;
            n += 1;
        }
        if let Some(c) = consumer.context().held().as_mut() {
            if let Err(e) = c.checkpoint_if_due(cfg.durability.checkpoint_every, &instance) {
                tracing::error!(error = %e, "City stage checkpoint failed.");
            }
        }
        if last_status.elapsed() >= Duration::from_millis(500) {
            last_status = Instant::now();
            let end = topic_end(&consumer, &topic);
            let v = match consumer.context().held().as_ref() {
                Some(c) => c.status(end),
                None => serde_json::Value::Null,
            };
            status.set_city("recorder", v);
        }
    }
    status.set_city("recorder", serde_json::Value::Null);
    consumer.context().hand_over();
    consumer.unsubscribe();
}

/// Runs this instance's viewer of the city until `stop`: from the recorder's latest checkpoint,
/// every city window to `publisher`.
pub fn run_viewer(
    shared: Shared,
    kafka: KafkaConfig,
    topic: String,
    thresholds: ThresholdStore,
    publisher: Publisher,
    status: super::member::ClusterStatus,
    stop: CancellationToken,
) {
    let group = format!("{}.view.{}", kafka.group, shared.instance);
    let consumer: BaseConsumer = match consumer_config(&kafka, &group).create() {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = %e, "City viewer not started."),
    };
    let expected = feed_partitions(&consumer, &kafka.topics, &stop);
    let mut city = match City::open(&shared, false, thresholds, expected, |_, _| {
        Ok(CityOut::Show(publisher))
    }) {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = %e, "City viewer not started."),
    };
    let mut tpl = TopicPartitionList::new();
    let next = city.next_offset();
    let at = if next > 0 {
        Offset::Offset(next)
    } else {
        Offset::Beginning
    };
    let _ = tpl.add_partition_offset(&topic, 0, at);
    if let Err(e) = consumer.assign(&tpl) {
        return tracing::error!(error = %e, topic = %topic, "City viewer could not read the windows topic.");
    }
    tracing::info!(topic = %topic, from = next, "City viewer started: this instance shows the whole city.");
    let mut last_status = Instant::now();
    while !stop.is_cancelled() {
        if last_status.elapsed() >= Duration::from_millis(500) {
            last_status = Instant::now();
            status.set_city("viewer", city.status(topic_end(&consumer, &topic)));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => city.take(m.offset(), m.payload().unwrap_or(&[])),
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "Kafka receive failed (city viewer).");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}
