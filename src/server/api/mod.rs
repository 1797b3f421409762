//! HTTP routes (axum): handlers extract, make one call on a typed handle, map the result.
//! `ingest` and `ingest_ws` take feeds; `segments` serves the live picture and organisers'
//! thresholds; `sql` serves analysts; `dashboard` the page and viewers' WebSocket; `ops` health
//! and metrics. `auth` and `limits` guard them; `error` is their one error type.

pub mod auth;
pub mod dashboard;
pub mod error;
pub mod ingest;
pub mod ingest_ws;
pub mod limits;
pub mod ops;
pub mod segments;
pub mod sql;

use std::collections::HashMap;

use axum::extract::{DefaultBodyLimit, Query};
use axum::routing::{get, post, put};
use axum::Router;

pub use error::ApiError;

use super::state::AppState;

/// Query parameters (`?token=`, `?since=`).
pub type Params = Query<HashMap<String, String>>;

/// Builds the routes.
pub fn router(h: AppState) -> Router {
    Router::new()
        .route("/api/ingest", post(ingest::ingest))
        .route("/api/health", get(ops::health))
        .route("/api/segments", get(segments::list))
        .route("/api/segments/reload", post(segments::reload))
        .route("/api/segments/{id}", get(segments::one))
        .route("/api/segments/{id}/thresholds", put(segments::put_thresholds))
        .route("/api/thresholds/audit", get(segments::audit))
        .route("/api/alerts", get(segments::alerts))
        .route("/api/scenario", get(segments::scenario))
        .route("/api/cells/boundaries", post(segments::boundaries))
        .route("/api/sql", post(sql::sql))
        .route("/ws/live", get(dashboard::ws_live))
        .route("/ws/ingest", get(ingest_ws::ws_ingest))
        .route("/", get(dashboard::index))
        .route("/dashboard/app.js", get(dashboard::app_js))
        .route("/metrics", get(ops::metrics))
        .layer(DefaultBodyLimit::max(h.config.ingest.max_body_bytes))
        .with_state(h)
}
