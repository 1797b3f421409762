//! Rewind: the recent past for the dashboard's time slider, as range queries over history
//! (`segment_windows`, `hex_windows`) — a viewer never downloads whole tables, and needs no
//! analyst's SQL rights to look back.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::auth::{check, roles};
use super::error::ErrorBody;
use super::{ApiError, Params};
use crate::server::state::AppState;

/// The longest span one segments request may cover: six hours of 10 s windows is ~30,000 rows
/// for the Bund's 14 segments; the slider asks for half an hour at a time.
const MAX_SPAN_MS: i64 = 6 * 3600 * 1000;

/// An epoch-ms query parameter (or RFC 3339), required.
fn millis(q: &Params, name: &str) -> Result<i64, ApiError> {
    super::time_param(q, name)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("missing `{name}`: give it as epoch milliseconds or RFC 3339"),
        )
    })
}

/// Runs one of this module's own queries; rows as JSON objects (timestamps in epoch ms).
async fn rows(h: &AppState, sql: &str) -> Result<Vec<Value>, ApiError> {
    let answer = h
        .sql
        .query(sql)
        .await
        .map_err(|e| ApiError::new(super::sql::status(&e), format!("history: {e}")))?;
    let text = crate::query::format::json(&answer).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not encode history: {e}"),
        )
    })?;
    Ok(serde_json::from_str(&text).unwrap_or_default())
}

/// `GET /api/history/range`.
#[utoipa::path(get, path = "/api/history/range", tag = "live",
    description = "The first and last evaluated window ends in history (epoch ms; null before the first window), for a rewind slider.",
    params(("token" = Option<String>, Query, description = "Bearer token, for clients that cannot send `Authorization` (browsers opening a WebSocket)")),
    responses((status = 200, description = "`{first, last, slide_ms}`", body = serde_json::Value), (status = 401, description = "No or unknown token", body = ErrorBody), (status = 403, description = "The token's role may not do this", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn range(State(h): State<AppState>, headers: HeaderMap, q: Params) -> Result<Response, ApiError> {
    check(&h.config.auth, &headers, &q, roles::VIEW)?;
    let r = rows(
        &h,
        "SELECT min(window_end) AS first, max(window_end) AS last FROM segment_windows",
    )
    .await?;
    let first = r.first().map_or(Value::Null, |v| v["first"].clone());
    let last = r.first().map_or(Value::Null, |v| v["last"].clone());
    Ok(Json(json!({"first": first, "last": last, "slide_ms": h.config.slide_ms()})).into_response())
}

/// `GET /api/history/segments?from=&to=`.
#[utoipa::path(get, path = "/api/history/segments", tag = "live",
    description = "Every segment evaluation with its window end in [from, to] (at most 6 hours), grouped by window, oldest first: `{windows: [{window_end, segments: [{id, people, density, flow, inflow, outflow, tier}]}]}`.",
    params(("from" = String, Query, description = "Epoch ms or RFC 3339"), ("to" = String, Query, description = "Epoch ms or RFC 3339"),
        ("segment" = Option<String>, Query, description = "Only this segment"),
        ("token" = Option<String>, Query, description = "Bearer token, for clients that cannot send `Authorization` (browsers opening a WebSocket)")),
    responses((status = 200, description = "The windows", body = serde_json::Value),
        (status = 400, description = "`from`/`to` missing, unreadable, reversed or more than 6 hours apart", body = ErrorBody), (status = 404, description = "No such segment", body = ErrorBody), (status = 401, description = "No or unknown token", body = ErrorBody), (status = 403, description = "The token's role may not do this", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn segments(
    State(h): State<AppState>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, ApiError> {
    check(&h.config.auth, &headers, &q, roles::VIEW)?;
    let (from, to) = (millis(&q, "from")?, millis(&q, "to")?);
    if to < from || to - from > MAX_SPAN_MS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "from={from}, to={to}: `to` must be after `from` and at most 6 hours later (ask in pieces)"
            ),
        ));
    }
    // The bounds are integers parsed above and a segment must be one of the map's: nothing a
    // client sends reaches the SQL text unchecked.
    let only = match q.get("segment") {
        None => String::new(),
        Some(id) => {
            if h.picture.segments().index(id).is_none() {
                return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no segment {id:?}")));
            }
            format!(" AND segment_id = '{}'", id.replace('\'', "''"))
        }
    };
    let sql = format!(
        "SELECT window_end, segment_id, people, density, flow, inflow, outflow, tier FROM segment_windows \
         WHERE window_end >= to_timestamp_millis({from}) AND window_end <= to_timestamp_millis({to}){only} \
         ORDER BY window_end, segment_id"
    );
    let mut windows: Vec<Value> = Vec::new();
    for r in rows(&h, &sql).await? {
        let end = r["window_end"].clone();
        if windows.last().is_none_or(|w| w["window_end"] != end) {
            windows.push(json!({"window_end": end, "segments": []}));
        }
        if let Some(Value::Array(segs)) = windows.last_mut().map(|w| &mut w["segments"]) {
            segs.push(json!({
                "id": r["segment_id"], "people": r["people"], "density": r["density"], "flow": r["flow"],
                "inflow": r["inflow"], "outflow": r["outflow"], "tier": r["tier"],
            }));
        }
    }
    Ok(Json(json!({"from": from, "to": to, "windows": windows})).into_response())
}

/// `GET /api/history/heatmap?at=`.
#[utoipa::path(get, path = "/api/history/heatmap", tag = "live",
    description = "The heatmap of the window that ended at `at` (epoch ms), shaped like a live heatmap frame: `{window_start, window_end, res, cells: [[h3, people, density]]}`; cells under privacy.k are left out.",
    params(("at" = String, Query, description = "The window's end: epoch ms or RFC 3339"),
        ("token" = Option<String>, Query, description = "Bearer token, for clients that cannot send `Authorization` (browsers opening a WebSocket)")),
    responses((status = 200, description = "The heatmap", body = serde_json::Value),
        (status = 400, description = "`at` missing or unreadable", body = ErrorBody), (status = 401, description = "No or unknown token", body = ErrorBody), (status = 403, description = "The token's role may not do this", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn heatmap(State(h): State<AppState>, headers: HeaderMap, q: Params) -> Result<Response, ApiError> {
    check(&h.config.auth, &headers, &q, roles::VIEW)?;
    let at = millis(&q, "at")?;
    let res = h.config.h3.resolution;
    let sql = format!(
        "SELECT h3, people, density, window_start FROM hex_windows \
         WHERE window_end = to_timestamp_millis({at}) AND res = {res} ORDER BY h3"
    );
    let r = rows(&h, &sql).await?;
    let start = r.first().map_or(Value::Null, |v| v["window_start"].clone());
    let cells: Vec<Value> = r
        .iter()
        .map(|c| json!([c["h3"], c["people"], c["density"]]))
        .collect();
    Ok(Json(json!({"type": "heatmap", "window_start": start, "window_end": at, "final": true, "res": res, "cells": cells}))
        .into_response())
}
