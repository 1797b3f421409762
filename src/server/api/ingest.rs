//! `POST /api/ingest`: an NDJSON body (optionally gzip) in; each line accepted or refused alone;
//! the accepted ones logged and queued, all or nothing, before the answer.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::{check, roles};
use super::error::ErrorBody;
use super::{ApiError, Params};
use crate::durability::{CommitError, WhenFull};
use crate::model::now_ms;
use crate::server::state::AppState;

/// Reads an ingest body: at most `ingest.max_body_bytes` on the wire and, when gzip-encoded, at
/// most that once decompressed (a gzip bomb is refused, not expanded).
fn ingest_body(
    max: usize,
    headers: &HeaderMap,
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

/// The acknowledgement of one ingest body.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct IngestAck {
    /// Records logged, fsynced and queued.
    pub accepted: usize,
    /// Lines refused, with what was wrong.
    pub rejected: Vec<crate::ingest::decode::LineReject>,
}

/// A refused commit as an HTTP answer: 503 with a retry delay (the feed's data was not taken).
fn commit_error(e: CommitError) -> ApiError {
    let retry = match &e {
        CommitError::Full => 1,
        CommitError::Closed => 5,
        // Logged once per outage by the committer, not once per refused request.
        CommitError::Log(_) => 5,
    };
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).retry_after(retry)
}

/// `POST /api/ingest` (feed role).
#[utoipa::path(post, path = "/api/ingest", tag = "feeds",
    description = "NDJSON records (FEEDS.md), optionally gzip. Accepted lines are logged and fsynced before the 202; refused lines are listed by number.",
    params(("token" = Option<String>, Query, description = "Bearer token, for clients that cannot send `Authorization` (browsers opening a WebSocket)")),
    request_body(content = String, content_type = "application/x-ndjson", description = "One record per line"),
    responses((status = 202, description = "Accepted records acknowledged; refused lines named", body = IngestAck), (status = 401, description = "No or unknown token", body = ErrorBody), (status = 403, description = "The token's role may not do this", body = ErrorBody),
        (status = 400, description = "Body unreadable (bad gzip)", body = ErrorBody),
        (status = 413, description = "Body over ingest.max_body_bytes, or more records than the feed's rate lets one request hold (split it)", body = ErrorBody),
        (status = 429, description = "Feed over its rate limit (Retry-After)", body = ErrorBody),
        (status = 503, description = "Queue full or log failing: nothing was taken (Retry-After)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn ingest(
    State(h): State<AppState>,
    headers: HeaderMap,
    q: Params,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let who = check(&h.config.auth, &headers, &q, roles::FEED)?;
    let body = ingest_body(h.config.ingest.max_body_bytes, &headers, body)?;
    let decoded = h.sink.decode(&body, now_ms());
    let per_s = h.config.limits.ingest_records_per_s;
    let n = decoded.records.len();
    if per_s > 0.0 && n as f64 > super::limits::burst(per_s) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "this request holds {n} records; at feed `{}`'s rate of {per_s} records/s (limits.ingest_records_per_s) one request may hold at most {:.0}: split it, nothing from this request was taken",
                who.name,
                super::limits::burst(per_s).floor()
            ),
        ));
    }
    if let Err(wait) = h.limits.records(&who.name, decoded.records.len(), per_s) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "feed `{}` is over its rate of {per_s} records/s (limits.ingest_records_per_s): nothing from this request was taken",
                who.name
            ),
        )
        .retry_after(wait as u32));
    }
    // All or nothing: logged, then queued; when the queue is full nothing is taken.
    let n = h
        .sink
        .commit(decoded.records, WhenFull::Refuse)
        .await
        .map_err(commit_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(IngestAck {
            accepted: n,
            rejected: decoded.rejected,
        }),
    )
        .into_response())
}
