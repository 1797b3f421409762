//! `POST /api/sql`: `{"sql": "..."}` → JSON rows, or CSV / Arrow IPC by `Accept` (analysts).

use std::collections::HashMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::auth::{check, roles};
use super::error::ErrorBody;
use super::ApiError;
use crate::query::{format, SqlError};
use crate::server::state::AppState;

/// The request body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SqlRequest {
    /// One read-only statement (or several; the last one's rows are returned).
    pub sql: String,
}

/// The answer's media type, chosen by `Accept`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Json,
    Csv,
    Arrow,
}

fn wanted(headers: &HeaderMap) -> Answer {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("text/csv") {
        Answer::Csv
    } else if accept.contains("application/vnd.apache.arrow") {
        Answer::Arrow
    } else {
        Answer::Json
    }
}

/// HTTP status for each way a query can fail.
pub fn status(e: &SqlError) -> StatusCode {
    match e {
        SqlError::Refused(_) | SqlError::Syntax(_) | SqlError::Query(_) => StatusCode::BAD_REQUEST,
        SqlError::TooManyRows(_) => StatusCode::PAYLOAD_TOO_LARGE,
        SqlError::Timeout(_) | SqlError::Memory(..) => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// Runs the query with the server's limits.
#[utoipa::path(post, path = "/api/sql", tag = "analysis",
    description = "One read-only SQL statement over the live and history tables (CONTRACT.md). Rows as JSON objects, or CSV (`Accept: text/csv`) or Arrow IPC (`Accept: application/vnd.apache.arrow.stream`).",
    params(("token" = Option<String>, Query, description = "Bearer token, for clients that cannot send `Authorization` (browsers opening a WebSocket)")),
    request_body = SqlRequest,
    responses((status = 200, description = "The rows", body = Vec<serde_json::Value>),
        (status = 400, description = "Not read-only, bad syntax, or a failed query", body = ErrorBody), (status = 401, description = "No or unknown token", body = ErrorBody), (status = 403, description = "The token's role may not do this", body = ErrorBody),
        (status = 413, description = "More rows than sql.max_rows", body = ErrorBody),
        (status = 422, description = "Over the time or memory limit", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn sql(
    State(h): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Result<Json<SqlRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = check(&h.config.auth, &headers, &q, roles::ANALYSE)?;
    let Json(req) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("send a JSON body {{\"sql\": \"SELECT ...\"}} with Content-Type: application/json ({e})"),
        )
    })?;
    let started = std::time::Instant::now();
    let answer = h.sql.query(&req.sql).await.map_err(|e| {
        tracing::info!(who = %who.name, error = %e, "SQL query failed.");
        ApiError::new(status(&e), e.to_string())
    })?;
    tracing::info!(who = %who.name, rows = answer.rows(), ms = started.elapsed().as_millis() as u64, "SQL query.");
    metrics::counter!("throng_sql_queries_total").increment(1);
    let encoded = match wanted(&headers) {
        Answer::Json => format::json(&answer).map(|s| ("application/json", s.into_bytes())),
        Answer::Csv => format::csv(&answer).map(|b| ("text/csv; charset=utf-8", b)),
        Answer::Arrow => format::arrow_ipc(&answer).map(|b| ("application/vnd.apache.arrow.stream", b)),
    };
    metrics::histogram!("throng_sql_query_duration_seconds", "interface" => "http")
        .record(started.elapsed().as_secs_f64());
    let (media, bytes) = encoded.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not encode the answer: {e}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, media)], bytes).into_response())
}
