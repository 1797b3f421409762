//! The process-wide Prometheus recorder and the catalogue of every metric throng exports.
//!
//! Every family is described here once (HELP text, unit) so `/metrics` passes
//! `promtool check metrics`; a metric recorded somewhere but missing from [`CATALOGUE`] shows up
//! without HELP and fails the promtool test.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// What kind of Prometheus family a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// A latency distribution, rendered as a Prometheus histogram with [`Metric::buckets`].
    Histogram,
}

/// One metric family: its name, kind, unit and HELP text.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The family name as exported.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its unit (already in the name, Prometheus style).
    pub unit: Option<Unit>,
    /// The HELP line.
    pub help: &'static str,
    /// Histogram bucket upper bounds (seconds), empty for counters and gauges.
    pub buckets: &'static [f64],
    /// Labels it carries (documentation; low cardinality only).
    pub labels: &'static [&'static str],
}

/// An acknowledgement is a log append plus fsync: tens of microseconds on tmpfs, milliseconds on a
/// disk, seconds only when the queue is full and a feed waits.
const ACK_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Close → frame is an in-memory encode and a socket write: sub-millisecond normally; the 5 s
/// end is where a slow viewer is dropped.
const FRAME_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// SQL spans milliseconds (a live-table lookup) to the query timeout (30 s by default).
const SQL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

const fn counter(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        unit: Some(Unit::Count),
        help,
        buckets: &[],
        labels,
    }
}

const fn gauge(
    name: &'static str,
    unit: Unit,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        unit: Some(unit),
        help,
        buckets: &[],
        labels,
    }
}

const fn histogram(
    name: &'static str,
    buckets: &'static [f64],
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        help,
        buckets,
        labels,
    }
}

/// Every metric family throng exports.
pub const CATALOGUE: &[Metric] = &[
    counter("throng_connections_refused_total", &["listener", "reason"], "Connections refused at accept (max_connections, connections_per_address) or closed for a timeout (header_timeout, login_timeout, idle_timeout)."),
    counter("throng_auth_throttled_total", &[], "Times an address used up its failed-token budget (limits.auth_failures_per_minute) and was made to wait."),
    gauge("throng_storage_degraded", Unit::Count, &["component"], "1 while writes of this component to the data dir fail (wal, checkpoint, history, history_logs, thresholds), 0 once one succeeds again."),
    counter("throng_storage_failures_total", &["component"], "Writes to the data dir that failed, per component (each one retried; nothing acknowledged is dropped)."),
    gauge("throng_connections_open", Unit::Count, &["listener"], "Connections open now per listener (http, pgwire), WebSockets included."),
    counter("throng_ingest_records_total", &[], "Records acknowledged to feeds (written to the log, queued for the engine)."),
    counter("throng_ingest_duplicates_total", &[], "Records the engine dropped as resends of a record already counted (same idempotency key)."),
    counter("throng_ingest_rejected_total", &["reason"], "Records refused at the door, by reason code (the feed was told which line and why)."),
    counter("throng_engine_records_total", &[], "Records the engine has applied to its windows."),
    counter("throng_late_records_total", &["source"], "Records that arrived after their window was published and were counted into a correction, by source."),
    counter("throng_late_unwindowed_records_total", &[], "Records older than every open or correctable window: kept in the log and history, not in a live window."),
    counter("throng_windows_closed_total", &[], "Event-time windows closed and published."),
    counter("throng_register_resets_total", &[], "Register directions (entries, exits, in, out) that reset, ran backwards or jumped and were re-based alone (the other direction still counts)."),
    counter("throng_register_out_of_order_total", &[], "Counter or gate readings older than the newest reading of their register."),
    gauge("throng_lbs_ground_people", Unit::Count, &[], "People the last closed window placed on walkable ground no segment covers (the scenario's ground.geojson): in no segment's count."),
    counter("throng_lbs_off_network_devices_total", &[], "Device positions farther from every walkable segment than their accuracy allows (counted, not assigned)."),
    counter("throng_calibration_rejected_total", &["reason"], "Zone headcounts calibration ignored: implausible (density or capacity), stuck (unchanged while the phones there changed), disagrees (outside risk.calibration.max_ratio of the phones)."),
    counter("throng_alerts_total", &[], "Segment alerts raised (a tier rising to high or critical)."),
    counter("throng_checkpoints_total", &[], "Engine checkpoints written."),
    counter("throng_history_rows_written_total", &[], "Rows written to the Parquet history."),
    counter("throng_sql_queries_total", &[], "SQL queries answered (HTTP and PostgreSQL wire)."),
    counter("throng_mqtt_messages_total", &[], "MQTT messages received from the broker."),
    counter("throng_kafka_messages_total", &[], "Kafka messages taken: their records in the write-ahead log (one instance), or run through their partition's state (cluster mode)."),
    gauge("throng_kafka_held_records", Unit::Count, &[], "Records read from Kafka and held back until every partition still reading has caught up with their event time."),
    gauge("throng_kafka_assigned_partitions", Unit::Count, &[], "Kafka partitions this instance reads now (in cluster mode: holds)."),
    counter("throng_kafka_rejected_total", &[], "Records in Kafka messages refused by the parser (the log names the first of each batch)."),
    counter("throng_live_frames_total", &["type"], "Frames written to live viewers, by frame type (one per viewer)."),
    counter("throng_live_frames_skipped_total", &[], "Heatmap and segments frames a slow viewer skipped to catch up with the newest."),
    counter("throng_live_clients_dropped_total", &[], "Live viewers disconnected for being too slow or silent."),
    gauge("throng_live_clients", Unit::Count, &[], "Live viewers connected to /ws/live."),
    gauge("throng_watermark_lag_seconds", Unit::Seconds, &[], "Processing time minus the event-time watermark."),
    gauge("throng_source_delay_p99_seconds", Unit::Seconds, &["source"], "99th percentile of arrival minus event time, per source, over the recent records."),
    gauge("throng_window_devices_active", Unit::Count, &[], "Distinct devices in the open windows."),
    gauge("throng_window_device_entries", Unit::Count, &[], "Per-device entries the engine holds (positions, presence, resend keys)."),
    gauge("throng_calibration_people_per_device", Unit::Count, &["source"], "People one device of an LBS source stands for, as in force (learnt from zone headcounts, or the configured scale)."),
    gauge("throng_calibration_confidence", Unit::Count, &["source"], "0-1: how much zone-count evidence stands behind a source's people per device (0: the configured scale)."),
    gauge("throng_window_state_bytes", Unit::Bytes, &[], "Estimated bytes of window state the engine holds."),
    histogram("throng_ingest_ack_seconds", ACK_BUCKETS, &[], "Time from a decoded batch handed to the commit path to its acknowledgement (logged, fsynced, queued)."),
    histogram("throng_frame_latency_seconds", FRAME_BUCKETS, &["type"], "Window close (or provisional snapshot) to the frame written to a viewer's socket, by frame type."),
    histogram("throng_sql_query_duration_seconds", SQL_BUCKETS, &["interface"], "SQL query time: to the encoded answer over HTTP, to the first row ready over the PostgreSQL wire."),
];

/// The process-wide Prometheus recorder (installed once, shared by every server in the process).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(install).clone()
}

fn install() -> PrometheusHandle {
    let mut builder = PrometheusBuilder::new();
    for m in CATALOGUE.iter().filter(|m| m.kind == Kind::Histogram) {
        builder = match builder.set_buckets_for_metric(Matcher::Full(m.name.to_owned()), m.buckets) {
            Ok(b) => b,
            // Only empty bucket lists fail, and the catalogue has none (a unit test checks).
            Err(e) => unreachable!("buckets for {}: {e}", m.name),
        };
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    // Fails only if another recorder is installed; the handle still renders ours.
    let _ = metrics::set_global_recorder(recorder);
    for m in CATALOGUE {
        let help = m.help;
        match (m.kind, m.unit) {
            (Kind::Counter, Some(u)) => metrics::describe_counter!(m.name, u, help),
            (Kind::Gauge, Some(u)) => metrics::describe_gauge!(m.name, u, help),
            (Kind::Histogram, Some(u)) => metrics::describe_histogram!(m.name, u, help),
            (Kind::Counter, None) => metrics::describe_counter!(m.name, help),
            (Kind::Gauge, None) => metrics::describe_gauge!(m.name, help),
            (Kind::Histogram, None) => metrics::describe_histogram!(m.name, help),
        }
        // Every unlabelled counter and gauge exists from the start, so dashboards and rate() see
        // zeros rather than gaps before the first event.
        if m.labels.is_empty() {
            match m.kind {
                Kind::Counter => metrics::counter!(m.name).increment(0),
                Kind::Gauge => metrics::gauge!(m.name).increment(0.0),
                Kind::Histogram => {}
            }
        }
    }
    // Histogram samples wait in the recorder until drained; drain them on a clock so a server
    // nobody scrapes does not grow.
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            upkeep.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "Could not start the metrics upkeep thread; histograms drain on scrape only.");
    }
    handle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_names_follow_prometheus_conventions() {
        let mut seen = std::collections::BTreeSet::new();
        for m in CATALOGUE {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("throng_"), "{}", m.name);
            assert!(!m.help.is_empty(), "{}", m.name);
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
                Kind::Histogram => {
                    assert!(m.name.ends_with("_seconds"), "{}", m.name);
                    assert!(!m.buckets.is_empty(), "{}", m.name);
                    assert!(
                        m.buckets.windows(2).all(|w| w[0] < w[1]),
                        "{} buckets ascend",
                        m.name
                    );
                }
            }
        }
    }
}
