//! `/api/health` and `/metrics`: what operators watch.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::server::state::AppState;

/// `GET /api/health`: the engine's watermark and sources.
pub async fn health(State(h): State<AppState>) -> Json<serde_json::Value> {
    let health = h.health.borrow().clone();
    Json(json!({"status": "ok", "engine": health}))
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(h): State<AppState>) -> impl IntoResponse {
    let mut text = h.metrics.render();
    text.push_str(&h.hub.render_latency());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
