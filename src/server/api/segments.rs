//! The live picture and what organisers set: segments with their thresholds and statuses, one
//! segment's recent history, threshold changes and their audit, segment reload, and what
//! the dashboard draws (scenario geometry, cell outlines).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::auth::{check, roles};
use super::error::ErrorBody;
use super::{ApiError, Params};
use crate::faults::Component;
use crate::model::now_ms;
use crate::risk::thresholds::AuditEntry;
use crate::risk::thresholds::{Change, StoreError};
use crate::risk::{thresholds_for, SegmentStatus, ThresholdPatch};
use crate::server::state::{AppState, ControlError};

/// Cells one boundaries request may ask for: a Bund-scale heatmap is ~3,000 cells, and more would
/// let one request make the server build megabytes of outlines.
const MAX_BOUNDARY_CELLS: usize = 5_000;

/// Every segment with its thresholds in force and its latest status (null before any window).
fn segment_list(h: &AppState) -> Vec<serde_json::Value> {
    let map = h.picture.segments();
    let latest = h.picture.latest();
    map.segments()
        .iter()
        .enumerate()
        .map(|(i, seg)| {
            let th = thresholds_for(&map, &h.config.risk, &h.thresholds, i);
            match latest.iter().find(|s| s.id == seg.id) {
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

/// `GET /api/segments`.
#[utoipa::path(get, path = "/api/segments", tag = "live",
    description = "Every segment with its thresholds in force and its latest status (numbers null before its first window).",
    params(("token" = Option<String>, Query, description = "Bearer token, for clients that cannot send `Authorization` (browsers opening a WebSocket)")),
    responses((status = 200, description = "Segments", body = Vec<SegmentStatus>), (status = 401, description = "No or unknown token", body = ErrorBody), (status = 403, description = "The token's role may not do this", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(State(h): State<AppState>, headers: HeaderMap, q: Params) -> Result<Response, ApiError> {
    check(&h.config.auth, &headers, &q, roles::VIEW)?;
    Ok(Json(segment_list(&h)).into_response())
}

/// `GET /api/segments/{id}`: the list entry plus its recent history.
#[utoipa::path(get, path = "/api/segments/{id}", tag = "live",
    description = "One segment's list entry plus its recent history.",
    params(("id" = String, Path, description = "Segment id (the GeoJSON `id` property)"), ("token" = Option<String>, Query, description = "Bearer token, for clients that cannot send `Authorization` (browsers opening a WebSocket)")),
    responses((status = 200, description = "The segment", body = SegmentStatus), (status = 401, description = "No or unknown token", body = ErrorBody), (status = 403, description = "The token's role may not do this", body = ErrorBody),
        (status = 404, description = "No such segment", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn one(
    State(h): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, ApiError> {
    check(&h.config.auth, &headers, &q, roles::VIEW)?;
    let mut v = segment_list(&h)
        .into_iter()
        .find(|v| v["id"] == id.as_str())
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no segment {id:?}")))?;
    v["history"] = serde_json::to_value(h.picture.history(&id)).unwrap_or_default();
    Ok(Json(v).into_response())
}

/// `PUT /api/segments/{id}/thresholds` (organisers): a partial body, validated, persisted, audited.
#[utoipa::path(put, path = "/api/segments/{id}/thresholds", tag = "organisers",
    description = "Changes a segment's thresholds (organiser role): omitted keys keep their value; persisted and audited.",
    params(("id" = String, Path, description = "Segment id (the GeoJSON `id` property)"), ("token" = Option<String>, Query, description = "Bearer token, for clients that cannot send `Authorization` (browsers opening a WebSocket)")),
    request_body = ThresholdPatch,
    responses((status = 200, description = "The thresholds now in force and before", body = serde_json::Value),
        (status = 400, description = "Not a valid patch (names the key)", body = ErrorBody), (status = 401, description = "No or unknown token", body = ErrorBody), (status = 403, description = "The token's role may not do this", body = ErrorBody),
        (status = 404, description = "No such segment", body = ErrorBody),
        (status = 503, description = "The data dir could not be written: nothing changed (Retry-After)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_thresholds(
    State(h): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = check(&h.config.auth, &headers, &q, roles::ORGANISE)?;
    let patch: ThresholdPatch = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid thresholds: {e} (keys: capacity, density, flow, capacity_share, time_to_high_min; levels: medium, high, critical)"),
        )
    })?;
    let map = h.picture.segments();
    let i = map
        .index(&id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no segment {id:?}")))?;
    let current = thresholds_for(&map, &h.config.risk, &h.thresholds, i);
    let new = h
        .thresholds
        .update(Change {
            segment: &id,
            current,
            patch: &patch,
            by: &who.name,
            role: who.role,
            now_ms: now_ms(),
        })
        .map_err(|e| match e {
            StoreError::Invalid(m) => {
                ApiError::new(StatusCode::BAD_REQUEST, format!("invalid thresholds: {m}"))
            }
            StoreError::Io { .. } => {
                tracing::error!(error = %e, segment = %id, by = %who.name, "Could not persist thresholds; the old ones stay in force.");
                h.faults.failed(Component::Thresholds, &e);
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("could not write the thresholds to the data dir ({e}); the thresholds in force are unchanged: free space in the data dir and send the change again"),
                )
                .retry_after(5)
            }
        })?;
    h.faults.succeeded(Component::Thresholds);
    tracing::info!(segment = %id, by = %who.name, role = %who.role, "Thresholds changed.");
    Ok(Json(json!({"segment_id": id, "thresholds": new, "old": current})).into_response())
}

/// `GET /api/thresholds/audit` (organisers).
#[utoipa::path(get, path = "/api/thresholds/audit", tag = "organisers",
    description = "Every threshold change: who, when, before and after.",
    params(("token" = Option<String>, Query, description = "Bearer token, for clients that cannot send `Authorization` (browsers opening a WebSocket)")),
    responses((status = 200, description = "The audit log", body = Vec<AuditEntry>), (status = 401, description = "No or unknown token", body = ErrorBody), (status = 403, description = "The token's role may not do this", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn audit(State(h): State<AppState>, headers: HeaderMap, q: Params) -> Result<Response, ApiError> {
    check(&h.config.auth, &headers, &q, roles::ORGANISE)?;
    Ok(Json(h.thresholds.audit()).into_response())
}

/// `POST /api/segments/reload` (admin).
#[utoipa::path(post, path = "/api/segments/reload", tag = "organisers",
    description = "Re-reads the scenario's segments file (admin role); a bad file is refused and the old segments stay.",
    params(("token" = Option<String>, Query, description = "Bearer token, for clients that cannot send `Authorization` (browsers opening a WebSocket)")),
    responses((status = 200, description = "Reloaded", body = serde_json::Value),
        (status = 400, description = "The new file was refused (names the problem)", body = ErrorBody), (status = 401, description = "No or unknown token", body = ErrorBody), (status = 403, description = "The token's role may not do this", body = ErrorBody),
        (status = 503, description = "Shutting down", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn reload(State(h): State<AppState>, headers: HeaderMap, q: Params) -> Result<Response, ApiError> {
    check(&h.config.auth, &headers, &q, roles::ADMIN)?;
    match h.control.reload_segments().await {
        Ok(n) => Ok(Json(json!({"reloaded": true, "segments": n})).into_response()),
        Err(ControlError::Stopped) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "pipeline is shutting down",
        )),
        Err(ControlError::Refused(e)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("segments file rejected, old segments kept: {e}"),
        )),
    }
}

/// `GET /api/scenario`: segment polygons (GeoJSON), the basemap, and the bounding box.
#[utoipa::path(get, path = "/api/scenario", tag = "live",
    description = "What the dashboard draws: segment polygons and the basemap (GeoJSON), the bounding box, the H3 resolution, the privacy threshold k and the event's time zone (IANA name; the dashboard shows times in it).",
    params(("token" = Option<String>, Query, description = "Bearer token, for clients that cannot send `Authorization` (browsers opening a WebSocket)")),
    responses((status = 200, description = "The scenario", body = serde_json::Value), (status = 401, description = "No or unknown token", body = ErrorBody), (status = 403, description = "The token's role may not do this", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn scenario(
    State(h): State<AppState>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, ApiError> {
    check(&h.config.auth, &headers, &q, roles::VIEW)?;
    let read = |name: &str| -> serde_json::Value {
        std::fs::read_to_string(h.config.scenario.join(name))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| json!({"type": "FeatureCollection", "features": []}))
    };
    Ok(Json(json!({
        "segments": read("segments.geojson"),
        "ground": read(crate::scenario::segments::GROUND_FILE),
        "basemap": read("basemap.geojson"),
        "bbox": h.picture.segments().bbox(),
        "res": h.config.h3.resolution,
        "k": h.config.privacy.k,
        "time_zone": h.config.time_zone,
    }))
    .into_response())
}

/// `POST /api/cells/boundaries`: outlines (lng, lat rings) of H3 cells, by hex string.
#[utoipa::path(post, path = "/api/cells/boundaries", tag = "live",
    description = "Outlines of H3 cells (lng, lat rings) by hex string, at most 5,000 a request.",
    params(("token" = Option<String>, Query, description = "Bearer token, for clients that cannot send `Authorization` (browsers opening a WebSocket)")),
    request_body(content = Vec<String>, description = "H3 cells as hex strings"),
    responses((status = 200, description = "Cell → ring of [lng, lat]", body = serde_json::Value),
        (status = 400, description = "Not a JSON array of H3 strings", body = ErrorBody), (status = 401, description = "No or unknown token", body = ErrorBody), (status = 403, description = "The token's role may not do this", body = ErrorBody),
        (status = 413, description = "Too many cells", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn boundaries(
    State(h): State<AppState>,
    headers: HeaderMap,
    q: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    check(&h.config.auth, &headers, &q, roles::VIEW)?;
    let ids: Vec<String> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected a JSON array of H3 strings: {e}"),
        )
    })?;
    if ids.len() > MAX_BOUNDARY_CELLS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_BOUNDARY_CELLS} cells a request"),
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
