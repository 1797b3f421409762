//! A consumer-group member in cluster mode: takes partitions on and hands them over as the group
//! rebalances, and runs each message through the partition it came from.
//!
//! Runs on a thread of its own (`BaseConsumer`): librdkafka calls the rebalance callback from
//! `poll` on this same thread, so a revoked partition is checkpointed before the group hands it
//! on, and no message is ever processed by a partition state the instance no longer holds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::partition::{Partition, Shared};
use crate::config::KafkaConfig;

/// Messages run through the partitions between two looks at the clock (checkpoints, idle).
const BATCH_MESSAGES: usize = 10_000;
/// How long one poll waits when nothing is there.
const POLL: Duration = Duration::from_millis(100);

/// What `/api/health` shows of a member (`cluster`): its partitions, and its city stage roles
/// (`city.recorder`, `city.viewer`).
#[derive(Debug, Clone, Default)]
pub struct ClusterStatus {
    member: Arc<Mutex<serde_json::Value>>,
    city: Arc<Mutex<serde_json::Map<String, serde_json::Value>>>,
}

impl ClusterStatus {
    /// The member's state now.
    pub fn get(&self) -> serde_json::Value {
        let mut v = self.member.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(o) = v.as_object_mut() {
            let city = self.city.lock().unwrap_or_else(|p| p.into_inner()).clone();
            o.insert("city".into(), serde_json::Value::Object(city));
        }
        v
    }

    fn set(&self, v: serde_json::Value) {
        *self.member.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }

    /// Sets what one city stage role (`recorder`, `viewer`) is doing.
    pub fn set_city(&self, role: &str, v: serde_json::Value) {
        self.city
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(role.to_owned(), v);
    }
}

type Held = BTreeMap<(String, i32), Partition>;

/// One batch's messages by partition: (offset, payload) in partition order.
type ByPartition<'a> = BTreeMap<(&'a str, i32), Vec<(i64, &'a [u8])>>;

/// The member's client context: the partitions it holds, which the rebalance callback opens and
/// hands over.
struct Member {
    shared: Shared,
    held: Mutex<Held>,
    last_error: Mutex<Option<String>>,
    rebalances: std::sync::atomic::AtomicU64,
}

impl Member {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    fn hand_over(&self, key: &(String, i32)) {
        let Some(p) = self.held().remove(key) else {
            return;
        };
        let next = p.next_offset();
        match p.hand_over(&self.shared.instance) {
            Ok(()) => {
                tracing::info!(topic = %key.0, partition = key.1, next_offset = next, "Partition handed over: checkpointed for its next owner.")
            }
            Err(e) => {
                tracing::error!(topic = %key.0, partition = key.1, error = %e, "Partition handed over without a checkpoint; its next owner reads it again from the last one.");
                self.error(e.to_string());
            }
        }
    }
}

impl ClientContext for Member {
    fn error(&self, error: KafkaError, reason: &str) {
        if !crate::transport::kafka::is_partition_end(&error) {
            tracing::warn!(error = %error, "Kafka client: {reason}");
        }
    }
}

impl ConsumerContext for Member {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        self.rebalances.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                let mut refused = Vec::new();
                for (t, p) in &parts {
                    let started = Instant::now();
                    match Partition::open(&self.shared, t, *p) {
                        Ok(state) => {
                            let next = state.next_offset();
                            let at = if next > 0 {
                                Offset::Offset(next)
                            } else {
                                Offset::Beginning
                            };
                            if let Err(e) = tpl.set_partition_offset(t, *p, at) {
                                tracing::error!(topic = %t, partition = p, error = %e, "Could not set the start offset.");
                            }
                            tracing::info!(topic = %t, partition = p, next_offset = next, ms = started.elapsed().as_millis() as u64, folder = %state.dir().display(), "Partition taken on from its checkpoint.");
                            self.held().insert((t.clone(), *p), state);
                        }
                        Err(e) => {
                            tracing::error!(topic = %t, partition = p, error = %e, "Partition not taken on; nothing of it is read until this is fixed.");
                            self.error(format!("partition {t}-{p}: {e}"));
                            refused.push((t.clone(), *p));
                        }
                    }
                }
                // A partition that could not be opened is not read (it would be counted from the
                // wrong state); the group still has it assigned here, so it waits, visibly.
                let mut take = TopicPartitionList::new();
                for e in tpl.elements() {
                    if !refused.contains(&(e.topic().to_owned(), e.partition())) {
                        let _ = take.add_partition_offset(e.topic(), e.partition(), e.offset());
                    }
                }
                if let Err(e) = consumer.assign(&take) {
                    tracing::error!(error = %e, "Kafka assignment failed.");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                for e in tpl.elements() {
                    self.hand_over(&(e.topic().to_owned(), e.partition()));
                }
                let _ = consumer.unassign();
            }
            other => {
                tracing::warn!(error = ?other, "Kafka rebalance error; handing every partition over.");
                let keys: Vec<_> = self.held().keys().cloned().collect();
                for k in keys {
                    self.hand_over(&k);
                }
                let _ = consumer.unassign();
            }
        }
    }
}

/// Runs one `[[kafka]]` subscription as a cluster member until `stop`; every partition held at
/// the end is checkpointed and handed over.
pub fn run(shared: Shared, kafka: KafkaConfig, status: ClusterStatus, stop: CancellationToken) {
    let cfg = shared.cfg.clone();
    let member = Member {
        shared,
        held: Mutex::default(),
        last_error: Mutex::default(),
        rebalances: Default::default(),
    };
    let consumer: BaseConsumer<Member> = match crate::transport::kafka::consumer_config(&kafka)
        .create_with_context(member)
    {
        Ok(c) => c,
        Err(e) => {
            status.set(serde_json::json!({"group": kafka.group, "error": e.to_string()}));
            return tracing::error!(error = %e, bootstrap = %kafka.bootstrap, "Cluster member not started.");
        }
    };
    let topics: Vec<&str> = kafka.topics.iter().map(String::as_str).collect();
    if let Err(e) = consumer.subscribe(&topics) {
        status.set(serde_json::json!({"group": kafka.group, "error": format!("subscribe failed: {e}")}));
        return tracing::error!(error = %e, topics = ?kafka.topics, "Kafka subscribe failed.");
    }
    let instance = consumer.context().shared.instance.clone();
    tracing::info!(instance = %instance, group = %kafka.group, topics = ?kafka.topics, root = %consumer.context().shared.root.display(), "Cluster member started.");
    let mut batch: Vec<BorrowedMessage<'_>> = Vec::with_capacity(BATCH_MESSAGES);
    let mut last_status = Instant::now() - Duration::from_secs(1);
    let mut messages = 0u64;
    let mut last_empty_check = Instant::now() - Duration::from_secs(60);
    while !stop.is_cancelled() {
        let mut wait = POLL;
        while batch.len() < BATCH_MESSAGES {
            match consumer.poll(wait) {
                None => break,
                Some(Ok(m)) => batch.push(m),
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka receive failed.");
                    consumer.context().error(e.to_string());
                    break;
                }
            }
            wait = Duration::ZERO;
        }
        messages += batch.len() as u64;
        let ctx = consumer.context();
        let mut held = ctx.held();
        // Messages in partition order, one run per partition (a batch interleaves partitions).
        let mut by_part: ByPartition<'_> = BTreeMap::new();
        for m in &batch {
            by_part
                .entry((m.topic(), m.partition()))
                .or_default()
                .push((m.offset(), m.payload().unwrap_or(&[])));
        }
        let mut commits = TopicPartitionList::new();
        for ((t, p), msgs) in &by_part {
            // A partition revoked while the batch was gathered is another instance's now.
            let Some(state) = held.get_mut(&((*t).to_owned(), *p)) else {
                continue;
            };
            let mut first = true;
            state.take(msgs, |offset, line, e| {
                metrics::counter!("throng_kafka_rejected_total").increment(1);
                if std::mem::take(&mut first) {
                    tracing::warn!(topic = %t, partition = p, offset, "Rejected Kafka record (line {line} of the message): {e}");
                }
            });
            let _ = commits.add_partition_offset(t, *p, Offset::Offset(state.next_offset()));
        }
        for ((t, p), state) in held.iter_mut() {
            if state.idle(cfg.window.idle_timeout) {
                tracing::info!(topic = %t, partition = p, "Partition idle: its open windows closed on the wall clock.");
                if let Err(e) = state.checkpoint(&instance) {
                    ctx.error(e.to_string());
                }
            }
            match state.checkpoint_if_due(cfg.durability.checkpoint_every, &instance) {
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(topic = %t, partition = p, error = %e, "Partition checkpoint failed; it is read again from the last one if this instance stops.");
                    ctx.error(e.to_string());
                }
            }
        }
        // A partition at its end that never held a record says so, or the city would wait for it.
        if last_empty_check.elapsed() >= Duration::from_secs(1) {
            last_empty_check = Instant::now();
            let empty_after = cfg
                .cluster
                .as_ref()
                .map_or(Duration::from_secs(10), |c| c.empty_after);
            for ((t, p), state) in held.iter_mut().filter(|(_, s)| s.clock().is_none()) {
                match consumer.fetch_watermarks(t, *p, Duration::from_secs(1)) {
                    Ok((_, high)) => state.check_empty(high, empty_after),
                    Err(e) => {
                        tracing::debug!(topic = %t, partition = p, error = %e, "Could not ask where the partition ends.")
                    }
                }
            }
        }
        drop(held);
        drop(by_part);
        metrics::counter!("throng_kafka_messages_total").increment(batch.len() as u64);
        batch.clear();
        if commits.count() > 0 {
            // For the broker's lag tools only: a new owner seeks to the checkpoint's offset.
            let _ = consumer.commit(&commits, CommitMode::Async);
        }
        if last_status.elapsed() >= Duration::from_millis(500) {
            last_status = Instant::now();
            report(&consumer, &kafka, &instance, messages, &status);
        }
    }
    // Stopping: every partition checkpointed where it stands, its windows left open for whoever
    // takes it next (a restart of this instance, or another member after the rebalance).
    let keys: Vec<_> = consumer.context().held().keys().cloned().collect();
    for k in keys {
        consumer.context().hand_over(&k);
    }
    consumer.unsubscribe();
    report(&consumer, &kafka, &instance, messages, &status);
    tracing::info!(instance = %instance, "Cluster member stopped; its partitions are checkpointed.");
}

fn report(
    consumer: &BaseConsumer<Member>,
    kafka: &KafkaConfig,
    instance: &str,
    messages: u64,
    status: &ClusterStatus,
) {
    let ctx = consumer.context();
    let held = ctx.held();
    let parts: Vec<serde_json::Value> = held
        .iter()
        .map(|((t, p), s)| {
            serde_json::json!({
                "topic": t, "partition": p, "next_offset": s.next_offset(),
                "event_time": s.clock().map(|c| crate::model::EventTime(c).to_string()),
                "closed_to": s.closed_to().map(|c| crate::model::EventTime(c).to_string()),
                "records": s.taken, "rejected": s.rejected,
            })
        })
        .collect();
    metrics::gauge!("throng_kafka_assigned_partitions").set(held.len() as f64);
    status.set(serde_json::json!({
        "instance": instance,
        "group": kafka.group,
        "topics": kafka.topics,
        "root": ctx.shared.root,
        "partitions": parts,
        "messages": messages,
        "rebalances": ctx.rebalances.load(std::sync::atomic::Ordering::Relaxed),
        "error": ctx.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    }));
}
