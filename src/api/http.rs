//! The HTTP surface: ingest, health, metrics.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use super::auth::{check, roles};
use crate::app::{now_ms, CommitError, Control, Handles};
use crate::risk::{thresholds_for, ThresholdPatch};
use std::collections::HashMap;

/// A JSON error with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u32>,
}

impl ApiError {
    /// An error with a status and a message the caller can act on.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
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
        .route("/api/segments", get(segments))
        .route("/api/segments/reload", post(reload_segments))
        .route("/api/segments/{id}", get(segment))
        .route("/api/segments/{id}/thresholds", put(put_thresholds))
        .route("/api/thresholds/audit", get(audit))
        .route("/api/alerts", get(alerts))
        .route("/api/scenario", get(scenario))
        .route("/api/cells/boundaries", post(boundaries))
        .route("/api/sql", post(super::sql::sql))
        .route("/ws/live", get(super::dashboard::ws_live))
        .route("/ws/ingest", get(super::ingest_ws::ws_ingest))
        .route("/", get(super::dashboard::index))
        .route("/dashboard/app.js", get(super::dashboard::app_js))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(h.config.ingest.max_body_bytes))
        .with_state(h)
}

#[derive(Serialize)]
struct Rejected {
    line: usize,
    error: String,
}

/// Reads an ingest body: at most `ingest.max_body_bytes` on the wire and, when gzip-encoded, at
/// most that once decompressed (a gzip bomb is refused, not expanded).
fn ingest_body(
    max: usize,
    headers: &axum::http::HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Bytes, ApiError> {
    let body = body.map_err(|e| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body refused ({e}); send at most {max} bytes per request (ingest.max_body_bytes)"
            ),
        )
    })?;
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(body);
    }
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("body is not valid gzip: {e}")))?;
    if out.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("gzip body expands past {max} bytes (ingest.max_body_bytes); send smaller requests"),
        ));
    }
    Ok(Bytes::from(out))
}

async fn ingest(
    State(h): State<Handles>,
    headers: axum::http::HeaderMap,
    q: Params,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let who = check(&h, &headers, &q, roles::FEED)?;
    let body = ingest_body(h.config.ingest.max_body_bytes, &headers, body)?;
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
    if let Err(wait) = h
        .limits
        .records(&who.name, n, h.config.limits.ingest_records_per_s)
    {
        return Err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "feed `{}` is over its rate of {} records/s (limits.ingest_records_per_s): nothing from this request was taken",
                who.name, h.config.limits.ingest_records_per_s
            ),
            retry_after: Some(wait as u32),
        });
    }
    if n > 0 {
        // All or nothing: logged, then queued; when the queue is full nothing is taken.
        if let Err(e) = crate::app::commit(&h, accepted, false).await {
            let (status, retry_after) = match e {
                CommitError::Full => (StatusCode::SERVICE_UNAVAILABLE, Some(1)),
                CommitError::Closed => (StatusCode::SERVICE_UNAVAILABLE, Some(5)),
                CommitError::Log(ref io) => {
                    tracing::error!(error = %io, "Write-ahead log failed.");
                    (StatusCode::SERVICE_UNAVAILABLE, Some(5))
                }
            };
            return Err(ApiError {
                status,
                message: e.to_string(),
                retry_after,
            });
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
    let mut text = h.metrics.render();
    text.push_str(&h.hub.render_latency());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// The scenario for drawing: segment polygons (GeoJSON), the basemap, and the bounding box.
async fn scenario(
    State(h): State<Handles>,
    headers: axum::http::HeaderMap,
    q: Params,
) -> Result<Response, ApiError> {
    check(&h, &headers, &q, roles::VIEW)?;
    let read = |name: &str| -> serde_json::Value {
        std::fs::read_to_string(h.config.scenario.join(name))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| json!({"type": "FeatureCollection", "features": []}))
    };
    let bbox = lock(&h.segments).bbox();
    Ok(Json(json!({
        "segments": read("segments.geojson"),
        "basemap": read("basemap.geojson"),
        "bbox": bbox,
        "res": h.config.h3.resolution,
        "k": h.config.privacy.k,
    }))
    .into_response())
}

/// Outlines of H3 cells (lng, lat rings) for drawing, by hex string; at most 5,000 a request.
async fn boundaries(
    State(h): State<Handles>,
    headers: axum::http::HeaderMap,
    q: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    check(&h, &headers, &q, roles::VIEW)?;
    let ids: Vec<String> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected a JSON array of H3 strings: {e}"),
        )
    })?;
    if ids.len() > 5000 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "at most 5000 cells a request",
        ));
    }
    let mut out = serde_json::Map::new();
    for id in ids {
        let cell: h3o::CellIndex = id
            .parse()
            .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("{id:?} is not an H3 cell")))?;
        let ring: Vec<[f64; 2]> = cell.boundary().iter().map(|ll| [ll.lng(), ll.lat()]).collect();
        out.insert(id, json!(ring));
    }
    Ok(Json(serde_json::Value::Object(out)).into_response())
}

type Params = Query<HashMap<String, String>>;

fn lock<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Every segment with its thresholds in force and its latest status (null before any window).
fn segment_list(h: &Handles) -> Vec<serde_json::Value> {
    let map = lock(&h.segments).clone();
    let board = lock(&h.board);
    map.segments()
        .iter()
        .enumerate()
        .map(|(i, seg)| {
            let th = thresholds_for(&map, &h.config.risk, &h.store, i);
            match board.latest().iter().find(|s| s.id == seg.id.0) {
                Some(st) => {
                    let mut v = serde_json::to_value(st).unwrap_or_default();
                    v["thresholds"] = serde_json::to_value(th).unwrap_or_default();
                    v
                }
                None => json!({
                    "id": seg.id.0, "name": seg.name, "kind": seg.kind, "area_m2": seg.area_m2,
                    "people": null, "density": null, "flow": null, "tier": null, "trend": null,
                    "degraded": null, "thresholds": th,
                }),
            }
        })
        .collect()
}

async fn segments(
    State(h): State<Handles>,
    headers: axum::http::HeaderMap,
    q: Params,
) -> Result<Response, ApiError> {
    check(&h, &headers, &q, roles::VIEW)?;
    Ok(Json(segment_list(&h)).into_response())
}

async fn segment(
    State(h): State<Handles>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    q: Params,
) -> Result<Response, ApiError> {
    check(&h, &headers, &q, roles::VIEW)?;
    let mut v = segment_list(&h)
        .into_iter()
        .find(|v| v["id"] == id.as_str())
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no segment {id:?}")))?;
    v["history"] = serde_json::to_value(lock(&h.board).history(&id)).unwrap_or_default();
    Ok(Json(v).into_response())
}

async fn put_thresholds(
    State(h): State<Handles>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    q: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = check(&h, &headers, &q, roles::ORGANISE)?;
    let patch: ThresholdPatch = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid thresholds: {e} (keys: capacity, density, flow, capacity_share, time_to_high_min; levels: medium, high, critical)"),
        )
    })?;
    let map = lock(&h.segments).clone();
    let i = map
        .index(&id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no segment {id:?}")))?;
    let current = thresholds_for(&map, &h.config.risk, &h.store, i);
    let mut store = h.store.write().unwrap_or_else(|p| p.into_inner());
    let new = store
        .update(&id, current, &patch, &who.name, &who.role, now_ms())
        .map_err(|e| match e {
            crate::risk::thresholds::StoreError::Invalid(m) => {
                ApiError::new(StatusCode::BAD_REQUEST, format!("invalid thresholds: {m}"))
            }
            crate::risk::thresholds::StoreError::Io { .. } => {
                tracing::error!(error = %e, "Could not persist thresholds.");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "could not persist the thresholds",
                )
            }
        })?;
    tracing::info!(segment = %id, by = %who.name, role = %who.role, "Thresholds changed.");
    Ok(Json(json!({"segment_id": id, "thresholds": new, "old": current})).into_response())
}

async fn audit(
    State(h): State<Handles>,
    headers: axum::http::HeaderMap,
    q: Params,
) -> Result<Response, ApiError> {
    check(&h, &headers, &q, roles::ORGANISE)?;
    let entries = lock(&h.store).audit();
    Ok(Json(entries).into_response())
}

async fn reload_segments(
    State(h): State<Handles>,
    headers: axum::http::HeaderMap,
    q: Params,
) -> Result<Response, ApiError> {
    check(&h, &headers, &q, roles::ADMIN)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let unavailable = || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "pipeline is shutting down");
    h.control
        .send(Control::ReloadSegments(tx))
        .await
        .map_err(|_| unavailable())?;
    match rx.await.map_err(|_| unavailable())? {
        Ok(n) => Ok(Json(json!({"reloaded": true, "segments": n})).into_response()),
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("segments file rejected, old segments kept: {e}"),
        )),
    }
}

async fn alerts(
    State(h): State<Handles>,
    headers: axum::http::HeaderMap,
    q: Params,
) -> Result<Response, ApiError> {
    check(&h, &headers, &q, roles::VIEW)?;
    let since = match q.get("since") {
        None => i64::MIN,
        Some(s) => s
            .parse::<i64>()
            .or_else(|_| chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis()))
            .map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("since={s:?}: expected epoch milliseconds or RFC 3339"),
                )
            })?,
    };
    Ok(Json(lock(&h.board).alerts_since(since)).into_response())
}
