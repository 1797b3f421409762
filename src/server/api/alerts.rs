//! Alerts and their acknowledgement: the tier changes newest first, each with who acknowledged
//! it; an acknowledgement is persisted, then pushed to every screen.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::auth::{check, roles};
use super::error::ErrorBody;
use super::{ApiError, Params};
use crate::live::acks::MAX_NOTE_CHARS;
use crate::live::{Ack, LiveEvent};
use crate::model::now_ms;
use crate::risk::Alert;
use crate::server::state::AppState;

/// An alert as the API shows it: the contract's fields plus `ack` (null until acknowledged).
fn shown(h: &AppState, a: &Alert) -> serde_json::Value {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    v["ack"] = serde_json::to_value(h.acks.get(a.ts, a.segment_id.as_str())).unwrap_or_default();
    v
}

/// `GET /api/alerts?since=&segment=`: newest first.
#[utoipa::path(get, path = "/api/alerts", tag = "live",
    description = "Tier changes, newest first, each with `ack`: who acknowledged it and when (null until someone does).",
    params(("since" = Option<String>, Query, description = "Only alerts at or after this time: epoch ms or RFC 3339"),
        ("segment" = Option<String>, Query, description = "Only this segment's alerts"),
        ("token" = Option<String>, Query, description = "Bearer token, for clients that cannot send `Authorization` (browsers opening a WebSocket)")),
    responses((status = 200, description = "Alerts", body = Vec<Alert>),
        (status = 400, description = "`since` unreadable", body = ErrorBody), (status = 401, description = "No or unknown token", body = ErrorBody), (status = 403, description = "The token's role may not do this", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn alerts(State(h): State<AppState>, headers: HeaderMap, q: Params) -> Result<Response, ApiError> {
    check(&h.config.auth, &headers, &q, roles::VIEW)?;
    let since = super::time_param(&q, "since")?.unwrap_or(i64::MIN);
    let segment = q.get("segment");
    let out: Vec<serde_json::Value> = h
        .picture
        .alerts_since(since)
        .iter()
        .filter(|a| segment.is_none_or(|s| a.segment_id.as_str() == s))
        .map(|a| shown(&h, a))
        .collect();
    Ok(Json(out).into_response())
}

/// What `POST /api/alerts/ack` takes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// The alert's segment.
    pub segment_id: String,
    /// The alert's `ts` (epoch ms), as `/api/alerts` and the live frames show it.
    pub ts: i64,
    /// What was done about it (optional, at most 500 characters).
    #[serde(default)]
    pub note: Option<String>,
}

/// `POST /api/alerts/ack`: a viewer or organiser acknowledges an alert.
#[utoipa::path(post, path = "/api/alerts/ack", tag = "live",
    description = "Acknowledges an alert (viewer, organiser or admin): persisted with who and when, then pushed to every screen as an `ack` frame. The first acknowledgement stands; acknowledging again answers 200 with it and `new: false`.",
    params(("token" = Option<String>, Query, description = "Bearer token, for clients that cannot send `Authorization` (browsers opening a WebSocket)")),
    request_body = AckRequest,
    responses((status = 200, description = "The acknowledgement in force", body = serde_json::Value),
        (status = 400, description = "Not a valid request (says what)", body = ErrorBody), (status = 401, description = "No or unknown token", body = ErrorBody), (status = 403, description = "The token's role may not do this", body = ErrorBody),
        (status = 404, description = "No such alert", body = ErrorBody),
        (status = 503, description = "The data dir could not be written: not acknowledged (Retry-After)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn ack(
    State(h): State<AppState>,
    headers: HeaderMap,
    q: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = check(&h.config.auth, &headers, &q, roles::VIEW)?;
    let req: AckRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid acknowledgement: {e} (expected {{\"segment_id\": \"…\", \"ts\": EPOCH_MS, \"note\": \"…\"}} with the alert's segment_id and ts)"),
        )
    })?;
    let note = req.note.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    if note.as_ref().is_some_and(|n| n.chars().count() > MAX_NOTE_CHARS) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("note: at most {MAX_NOTE_CHARS} characters"),
        ));
    }
    let known = h
        .picture
        .alerts_since(req.ts)
        .iter()
        .any(|a| a.ts == req.ts && a.segment_id.as_str() == req.segment_id);
    if !known {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no alert on segment {:?} at ts {} (GET /api/alerts lists them with their ts)",
                req.segment_id, req.ts
            ),
        ));
    }
    let (ack, new) = h
        .acks
        .acknowledge(Ack {
            ts: now_ms(),
            alert_ts: req.ts,
            segment_id: req.segment_id,
            by: who.name.clone(),
            role: who.role,
            note,
        })
        .map_err(|e| {
            tracing::error!(error = %e, "Could not persist an alert acknowledgement.");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("could not write the acknowledgement to the data dir ({e}); it is not recorded: free space in the data dir and acknowledge again"),
            )
            .retry_after(5)
        })?;
    if new {
        tracing::info!(segment = %ack.segment_id, alert_ts = ack.alert_ts, by = %ack.by, role = %ack.role, "Alert acknowledged.");
        h.hub.publish(LiveEvent::Ack {
            ack: Arc::new(ack.clone()),
            at: Instant::now(),
        });
    }
    Ok(Json(json!({"ack": ack, "new": new})).into_response())
}
