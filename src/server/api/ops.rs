//! `/api/health` and `/metrics`: what operators watch.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::server::state::AppState;

/// `GET /api/health`: the engine's watermark and sources.
#[utoipa::path(get, path = "/api/health", tag = "ops",
    description = "`status` (`ok`, or `degraded` while a write to the data dir fails, with `faults` naming what fails: wal, checkpoint, history, history_logs, thresholds), the engine's watermark, windows and sources (per-source clocks, delays, late counts), and frame latency quantiles. Open to all.",
    responses((status = 200, description = "Health", body = serde_json::Value)))]
pub async fn health(State(h): State<AppState>) -> Json<serde_json::Value> {
    let health = h.health.borrow().clone();
    let faults = h.faults.current();
    // Still 200 when degraded: the server answers and keeps what it took; a probe that should
    // alert on storage trouble reads `status` (or `throng_storage_degraded`).
    let status = if faults.is_empty() { "ok" } else { "degraded" };
    Json(
        json!({"status": status, "faults": faults, "engine": health, "live": {"frame_latency": h.hub.latency_summary()},
            "kafka": h.kafka.iter().map(|k| k.get()).collect::<Vec<_>>(),
            "cluster": h.cluster.iter().map(|k| k.get()).collect::<Vec<_>>()}),
    )
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    description = "Prometheus text exposition (every family with HELP and TYPE; latencies as histograms). Open to all.",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
pub async fn metrics(State(h): State<AppState>) -> impl IntoResponse {
    let text = h.metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// `GET /api/openapi.json`: the OpenAPI 3 document of every route (generated from the handlers).
#[utoipa::path(get, path = "/api/openapi.json", tag = "ops",
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = serde_json::Value)))]
pub async fn openapi(
    axum::Extension(doc): axum::Extension<std::sync::Arc<utoipa::openapi::OpenApi>>,
) -> impl IntoResponse {
    Json(doc.as_ref().clone())
}
