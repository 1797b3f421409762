//! The `throng.windows` topic: every partition's closed windows, and the merge that makes the
//! city's windows of them.
//!
//! A partition publishes each window it closes (cells, feed points, the segment people its own
//! pings place) as one message keyed by the partition. The city stage reads the topic and merges,
//! per window end, the parts of every partition of the feed topics: a window is the city's once
//! every partition has published that end or a later one (the slowest partition's progress is the
//! city's watermark, as with per-partition watermarks in any stream processor), or is known to be
//! empty (at its end with no record at all). Parts are merged in partition order, so the city's
//! window does not depend on which partition's message arrived first; a part published twice
//! (its partition read again by a new owner after a crash) is recognised by its end and kept once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use serde::{Deserialize, Serialize};

use crate::config::KafkaConfig;
use crate::model::EventTime;
use crate::window::engine::PointWindow;
use crate::window::{HexRow, HexWindow, SegmentPeople};

/// What a message on the windows topic says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Part {
    /// A closed window of the partition (`silent`: no record fell in it).
    Window {
        /// `topic-partition`.
        source: String,
        /// The partition's window.
        window: Box<HexWindow>,
        /// True when no record fell in it.
        silent: bool,
        /// Source names, indexed as `window.segments.devices_by_source` is.
        sources: Vec<String>,
    },
    /// The partition is at its end and has never held a record: nobody waits for it.
    Empty {
        /// `topic-partition`.
        source: String,
    },
}

/// A `Part::Window` encoded from a borrowed window, so publishing a partition's window does not
/// copy it.
fn encode_window(
    source: &str,
    window: &HexWindow,
    silent: bool,
    sources: &[String],
) -> serde_json::Result<Vec<u8>> {
    #[derive(Serialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum Borrowed<'a> {
        Window {
            source: &'a str,
            window: &'a HexWindow,
            silent: bool,
            sources: &'a [String],
        },
    }
    serde_json::to_vec(&Borrowed::Window {
        source,
        window,
        silent,
        sources,
    })
}

/// The name a partition goes by on the windows topic.
pub fn source_name(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

/// A producer to the windows topic.
pub struct WindowsOut {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
}

impl WindowsOut {
    /// Connects with the feed subscription's brokers and security settings.
    pub fn new(kafka: &KafkaConfig, topic: &str) -> Result<WindowsOut, KafkaError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &kafka.bootstrap)
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.max.bytes", "67108864");
        for (k, v) in kafka.security_properties() {
            c.set(k, v);
        }
        Ok(WindowsOut {
            producer: c.create()?,
            topic: topic.to_owned(),
        })
    }

    /// Queues one closed window (sent in the background; `flush` waits for it).
    pub fn publish_window(&self, source: &str, window: &HexWindow, silent: bool, sources: &[String]) {
        self.send(source, encode_window(source, window, silent, sources));
    }

    /// Queues word that partition `source` is empty (at its end, never a record).
    pub fn publish_empty(&self, source: &str) {
        let part = Part::Empty {
            source: source.to_owned(),
        };
        self.send(source, serde_json::to_vec(&part));
    }

    fn send(&self, key: &str, body: serde_json::Result<Vec<u8>>) {
        let Ok(body) = body else {
            return tracing::error!("A window could not be encoded for the windows topic.");
        };
        let mut rec = BaseRecord::<str, [u8]>::to(&self.topic).key(key).payload(&body);
        loop {
            match self.producer.send(rec) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    return tracing::error!(error = %e, topic = %self.topic, "A window could not be published.")
                }
            }
        }
    }

    /// Waits until every part queued is acknowledged: a checkpoint is written only after, so a
    /// window the state has passed is never missing from the topic.
    pub fn flush(&self) -> Result<(), KafkaError> {
        self.producer.flush(Duration::from_secs(30))
    }
}

/// Creates the windows topic (one partition, so the city reads it in one order) if it is missing.
pub async fn ensure_topic(kafka: &KafkaConfig, topic: &str) -> Result<(), String> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap);
    for (k, v) in kafka.security_properties() {
        c.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = c.create().map_err(|e| e.to_string())?;
    // One message is one partition's window: beyond a broker's default 1 MB for a big district.
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "67108864");
    // A broker that accepts the connection but never answers must not hang the start for ever.
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(20)));
    let res = tokio::time::timeout(Duration::from_secs(30), admin.create_topics(&[new], &options))
        .await
        .map_err(|_| {
            format!(
                "{}: no answer in 30 s to creating the windows topic",
                kafka.bootstrap
            )
        })?
        .map_err(|e| e.to_string())?;
    for r in res {
        match r {
            Ok(_) => tracing::info!(topic, "Windows topic created (1 partition)."),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(format!("creating the windows topic {t}: {e}")),
        }
    }
    Ok(())
}

/// One partition's window waiting for the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Held {
    window: HexWindow,
    silent: bool,
    sources: Vec<String>,
}

/// The merge of partitions' windows into the city's: what it holds is checkpointed with the
/// city stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Merger {
    /// Every partition of the feed topics (`topic-partition`).
    expected: BTreeSet<String>,
    /// The newest window end each partition published.
    progress: BTreeMap<String, i64>,
    /// Partitions at their end that never held a record.
    empty: BTreeSet<String>,
    /// Parts by window end, then partition.
    pending: BTreeMap<i64, BTreeMap<String, Held>>,
    /// The newest end merged.
    merged_to: Option<i64>,
    /// City-wide source names (the merged windows' `devices_by_source` index).
    sources: Vec<String>,
    /// Parts that came after their window was merged (a partition that was empty then).
    pub late_parts: u64,
    /// Parts seen twice (a partition read again after a crash).
    pub repeated_parts: u64,
}

/// A merged window: the city's, and whether any record fell in it.
pub struct Merged {
    /// The window.
    pub window: HexWindow,
    /// True when no partition had a record in it.
    pub silent: bool,
}

impl Merger {
    /// Waits for `sources` too (every partition of the feed topics).
    pub fn expect(&mut self, sources: impl IntoIterator<Item = String>) {
        self.expected.extend(sources);
    }

    /// The newest window end merged.
    pub fn merged_to(&self) -> Option<i64> {
        self.merged_to
    }

    /// The partitions the next window waits for (those furthest behind).
    pub fn waiting_for(&self) -> Vec<String> {
        let behind = |s: &&String| !self.empty.contains(*s);
        let min = self
            .expected
            .iter()
            .filter(behind)
            .map(|s| self.progress.get(s).copied())
            .min();
        match min {
            Some(m) => self
                .expected
                .iter()
                .filter(behind)
                .filter(|s| self.progress.get(*s).copied() == m)
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    }

    /// Takes one part in.
    pub fn add(&mut self, part: Part) {
        match part {
            Part::Empty { source } => {
                if !self.progress.contains_key(&source) {
                    self.expected.insert(source.clone());
                    self.empty.insert(source);
                }
            }
            Part::Window {
                source,
                window,
                silent,
                sources,
            } => {
                self.expected.insert(source.clone());
                self.empty.remove(&source);
                let end = window.end.0;
                if self.progress.get(&source).is_some_and(|p| end <= *p) {
                    self.repeated_parts += 1;
                    return;
                }
                self.progress.insert(source.clone(), end);
                if self.merged_to.is_some_and(|m| end <= m) {
                    self.late_parts += 1;
                    return;
                }
                self.pending.entry(end).or_default().insert(
                    source,
                    Held {
                        window: *window,
                        silent,
                        sources,
                    },
                );
            }
        }
    }

    /// The newest end every partition has reached (None while one has not published yet).
    fn frontier(&self) -> Option<i64> {
        let mut waiting = self
            .expected
            .iter()
            .filter(|s| !self.empty.contains(*s))
            .peekable();
        waiting.peek()?;
        waiting.map(|s| self.progress.get(s).copied()).min().flatten()
    }

    /// The windows every partition has now gone past, oldest first.
    pub fn ready(&mut self) -> Vec<Merged> {
        let Some(frontier) = self.frontier() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > frontier {
                break;
            }
            let (end, parts) = entry.remove_entry();
            self.merged_to = Some(end);
            out.push(self.merge(parts));
        }
        out
    }

    fn source_id(&mut self, name: &str) -> usize {
        match self.sources.iter().position(|s| s == name) {
            Some(i) => i,
            None => {
                self.sources.push(name.to_owned());
                self.sources.len() - 1
            }
        }
    }

    /// The parts of one window end, in partition order, as one window.
    fn merge(&mut self, parts: BTreeMap<String, Held>) -> Merged {
        let mut silent = true;
        let mut rows: Vec<HexRow> = Vec::new();
        let mut points: Vec<PointWindow> = Vec::new();
        let mut seg = SegmentPeople::default();
        let (mut start, mut end) = (EventTime(i64::MAX), EventTime(i64::MIN));
        let mut age_weight: Vec<f64> = Vec::new();
        for (_, h) in parts {
            silent &= h.silent;
            start = start.min(h.window.start);
            end = end.max(h.window.end);
            rows.extend(h.window.rows);
            points.extend(h.window.points);
            let s = h.window.segments;
            add_into(&mut seg.people, &s.people);
            add_into(&mut seg.carried, &s.carried);
            add_into(&mut seg.ground, &s.ground);
            seg.off_network_devices += s.off_network_devices;
            seg.off_network_people += s.off_network_people;
            // Age of the positions placing a segment's devices: weighted by the people each
            // partition places there.
            if seg.device_age_s.len() < s.device_age_s.len() {
                seg.device_age_s.resize(s.device_age_s.len(), 0.0);
                age_weight.resize(s.device_age_s.len(), 0.0);
            }
            for (i, a) in s.device_age_s.iter().enumerate() {
                let w = s.people.get(i).copied().unwrap_or(0.0);
                seg.device_age_s[i] += a * w;
                age_weight[i] += w;
            }
            for (local, devices) in s.devices_by_source.iter().enumerate() {
                let Some(name) = h.sources.get(local) else {
                    continue;
                };
                let id = self.source_id(name);
                if seg.devices_by_source.len() <= id {
                    seg.devices_by_source.resize(id + 1, Vec::new());
                }
                add_into(&mut seg.devices_by_source[id], devices);
            }
        }
        for (a, w) in seg.device_age_s.iter_mut().zip(&age_weight) {
            *a = if *w > 0.0 { *a / w } else { 0.0 };
        }
        rows.sort_by_key(|r| r.cell);
        rows.dedup_by(|b, a| {
            // A cell is one partition's when producers key by the cell's region; if two send it
            // anyway, their counts add up.
            if a.cell != b.cell {
                return false;
            }
            a.lbs_devices += b.lbs_devices;
            a.lbs_people += b.lbs_people;
            a.lbs_off_network += b.lbs_off_network;
            a.counter_in += b.counter_in;
            a.counter_out += b.counter_out;
            a.occupancy = match (a.occupancy, b.occupancy) {
                (Some(x), Some(y)) => Some(x + y),
                (x, y) => x.or(y),
            };
            a.gate_entries += b.gate_entries;
            a.gate_exits += b.gate_exits;
            true
        });
        points.sort_by_key(|p| p.point);
        points.dedup_by(|b, a| {
            if a.point != b.point {
                return false;
            }
            a.inflow += b.inflow;
            a.outflow += b.outflow;
            a.occupancy = b.occupancy.or(a.occupancy);
            a.last_ts = a.last_ts.max(b.last_ts);
            true
        });
        Merged {
            window: HexWindow {
                start,
                end,
                rows,
                points,
                segments: seg,
                is_final: true,
            },
            silent,
        }
    }
}

fn add_into(into: &mut Vec<f64>, from: &[f64]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0.0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CellId;

    fn part(source: &str, end: i64, cell: u64, devices: u64, people: Vec<f64>) -> Part {
        Part::Window {
            source: source.into(),
            window: Box::new(HexWindow {
                start: EventTime(end - 60_000),
                end: EventTime(end),
                rows: vec![HexRow {
                    cell: CellId(cell),
                    lbs_devices: devices,
                    lbs_people: devices as f64,
                    ..Default::default()
                }],
                points: Vec::new(),
                segments: SegmentPeople {
                    people,
                    ..Default::default()
                },
                is_final: true,
            }),
            silent: false,
            sources: vec!["carrier-a".into()],
        }
    }

    #[test]
    fn a_window_published_from_a_borrow_reads_back_as_the_part() {
        let Part::Window { window, .. } = part("t-0", 10_000, 2, 3, vec![1.0]) else {
            unreachable!()
        };
        let bytes = encode_window("t-0", &window, true, &["carrier-a".into()]).unwrap();
        match serde_json::from_slice::<Part>(&bytes).unwrap() {
            Part::Window {
                source,
                window: w,
                silent,
                sources,
            } => {
                assert_eq!(
                    (source.as_str(), silent, sources),
                    ("t-0", true, vec!["carrier-a".to_owned()])
                );
                assert_eq!(*w, *window);
            }
            Part::Empty { .. } => panic!("read back as empty"),
        }
    }

    #[test]
    fn a_window_is_the_citys_once_every_partition_has_passed_it_and_segments_add_up() {
        let mut m = Merger::default();
        m.expect(["t-0".to_owned(), "t-1".to_owned(), "t-2".to_owned()]);
        m.add(part("t-0", 10_000, 2, 3, vec![1.0, 2.0]));
        m.add(part("t-1", 10_000, 1, 4, vec![0.5, 0.0]));
        assert!(m.ready().is_empty(), "t-2 has not spoken");
        // t-2 is at its end without a record: nobody waits for it.
        m.add(Part::Empty { source: "t-2".into() });
        let w = m.ready();
        assert_eq!(w.len(), 1);
        let w = &w[0].window;
        assert_eq!(w.rows.iter().map(|r| r.cell.0).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(w.segments.people, vec![1.5, 2.0]);
        // The same part again (its partition read again after a crash): kept once.
        m.add(part("t-0", 10_000, 2, 3, vec![1.0, 2.0]));
        assert_eq!(m.repeated_parts, 1);
        // Arrival order does not matter: t-1 first this time.
        m.add(part("t-1", 20_000, 1, 1, vec![0.25, 0.0]));
        assert!(m.ready().is_empty(), "t-0 has not reached 20 s");
        m.add(part("t-0", 30_000, 2, 1, vec![1.0, 0.0]));
        let w = m.ready();
        assert_eq!(w.iter().map(|w| w.window.end.0).collect::<Vec<_>>(), vec![20_000]);
    }
}
