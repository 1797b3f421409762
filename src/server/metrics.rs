//! The process-wide Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide Prometheus recorder (installed once, shared by every server in the process).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; the handle still renders ours.
            let _ = metrics::set_global_recorder(recorder);
            // Every unlabelled series exists from the start, so dashboards and rate() see zeros
            // rather than gaps before the first event.
            for name in [
                "throng_ingest_records_total",
                "throng_ingest_duplicates_total",
                "throng_alerts_total",
                "throng_checkpoints_total",
                "throng_history_rows_written_total",
                "throng_sql_queries_total",
                "throng_live_frames_skipped_total",
                "throng_live_clients_dropped_total",
                "throng_windows_closed_total",
                "throng_register_resets_total",
                "throng_register_out_of_order_total",
            ] {
                metrics::counter!(name).increment(0);
            }
            metrics::gauge!("throng_live_clients").increment(0.0);
            metrics::gauge!("throng_window_devices_active").set(0.0);
            metrics::gauge!("throng_window_state_bytes").set(0.0);
            handle
        })
        .clone()
}
