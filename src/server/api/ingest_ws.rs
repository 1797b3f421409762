//! `/ws/ingest`: NDJSON text frames in, one acknowledgement frame out per input frame, sent only
//! once the frame's accepted records are in the write-ahead log. When the queue is full the
//! server stops reading the socket until there is room (backpressure), it never drops a frame.

use std::collections::HashMap;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::json;

use super::auth::{check, roles};
use super::error::ErrorBody;
use super::ApiError;
use crate::durability::WhenFull;
use crate::model::now_ms;
use crate::server::state::AppState;

/// Largest frame accepted.
const MAX_FRAME: usize = 1 << 20;

/// The upgrade.
#[utoipa::path(get, path = "/ws/ingest", tag = "feeds",
    description = "WebSocket upgrade for feeds: each text message is an NDJSON body, answered in order by an acknowledgement like POST /api/ingest's.",
    params(("token" = Option<String>, Query, description = "Bearer token, for clients that cannot send `Authorization` (browsers opening a WebSocket)")),
    responses((status = 101, description = "Switching to the WebSocket protocol"), (status = 401, description = "No or unknown token", body = ErrorBody), (status = 403, description = "The token's role may not do this", body = ErrorBody),
        (status = 429, description = "Too many sockets from this address", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn ws_ingest(
    State(h): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    super::origin::check(&h.config.auth.allowed_origins, &headers)?;
    check(&h.config.auth, &headers, &q, roles::FEED)?;
    let slot = h.limits.socket(peer.ip(), h.config.limits.ws_per_address)?;
    Ok(ws
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |s| async move {
            let _slot = slot;
            feed(s, h).await
        }))
}

async fn feed(mut socket: WebSocket, h: AppState) {
    let mut frame = 0u64;
    loop {
        // Stop with the server: an open feed socket must not keep the pipeline alive.
        let msg = tokio::select! {
            _ = h.stop.cancelled() => break,
            m = socket.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Binary(_)) => {
                frame += 1;
                let ack = json!({"frame": frame, "accepted": 0, "error": "binary frames are not accepted: send NDJSON text"});
                if socket
                    .send(Message::Text(Utf8Bytes::from(ack.to_string())))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        frame += 1;
        let decoded = h.sink.decode(text.as_bytes(), now_ms());
        let rejected = decoded.rejected;
        let ack = if decoded.records.is_empty() {
            json!({"frame": frame, "accepted": 0, "rejected": rejected})
        } else {
            // Waiting here is the backpressure: this socket is not read until there is room.
            match h.sink.commit(decoded.records, WhenFull::Wait).await {
                Ok(n) => json!({"frame": frame, "accepted": n, "rejected": rejected}),
                Err(e) => json!({"frame": frame, "accepted": 0, "error": e.to_string()}),
            }
        };
        if socket
            .send(Message::Text(Utf8Bytes::from(ack.to_string())))
            .await
            .is_err()
        {
            break;
        }
    }
}
