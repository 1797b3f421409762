//! The HTTP surface: ingest, health, metrics.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc::error::TrySendError;

use crate::app::{now_ms, Handles};

/// Largest ingest body accepted.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A JSON error with its status.
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u32>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({"error": self.message}))).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        r
    }
}

/// Builds the routes.
pub fn router(h: Handles) -> Router {
    Router::new()
        .route("/api/ingest", post(ingest))
        .route("/api/health", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(h)
}

#[derive(Serialize)]
struct Rejected {
    line: usize,
    error: String,
}

async fn ingest(State(h): State<Handles>, body: Bytes) -> Result<Response, ApiError> {
    let now = now_ms();
    let max_line = h.config.ingest.max_line_bytes;
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        if line.len() > max_line {
            rejected.push(Rejected {
                line: i + 1,
                error: format!("line is {} bytes, over the {max_line}-byte limit", line.len()),
            });
            continue;
        }
        match h.parser.parse_line(line, Some(now)) {
            Ok(r) => accepted.push(r),
            Err(e) => {
                metrics::counter!("throng_ingest_rejected_total", "reason" => e.code.as_str()).increment(1);
                rejected.push(Rejected {
                    line: i + 1,
                    error: e.to_string(),
                });
            }
        }
    }
    let n = accepted.len();
    if n > 0 {
        // All or nothing: one batch into a bounded queue; when it is full, nothing is taken.
        match h.ingest.try_send(accepted) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "ingest queue full: nothing from this request was taken; retry after the delay"
                        .into(),
                    retry_after: Some(1),
                })
            }
            Err(TrySendError::Closed(_)) => {
                return Err(ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "server is shutting down".into(),
                    retry_after: Some(5),
                })
            }
        }
        metrics::counter!("throng_ingest_records_total").increment(n as u64);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"accepted": n, "rejected": rejected})),
    )
        .into_response())
}

async fn health(State(h): State<Handles>) -> Json<serde_json::Value> {
    let health = h.health.borrow().clone();
    Json(json!({"status": "ok", "engine": health}))
}

async fn metrics(State(h): State<Handles>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        h.metrics.render(),
    )
}
