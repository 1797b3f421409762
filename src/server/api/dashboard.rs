//! The command-centre dashboard (embedded, no CDN) and the viewer WebSocket route.

use std::collections::HashMap;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};

use super::auth::{check, roles};
use super::error::ErrorBody;
use super::ApiError;
use crate::live::frames::Subscription;
use crate::live::ws::{serve_viewer, ViewerContext, MAX_CLIENT_MESSAGE};
use crate::server::state::AppState;

const INDEX: &str = include_str!("../../../dashboards/live/index.html");
const APP_JS: &str = include_str!("../../../dashboards/live/app.js");

/// `GET /`: the page (its data still needs a viewer token).
#[utoipa::path(get, path = "/", tag = "live",
    responses((status = 200, description = "The command-centre dashboard page", content_type = "text/html", body = String)))]
pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}

/// The page's script.
#[utoipa::path(get, path = "/dashboard/app.js", tag = "live",
    responses((status = 200, description = "The dashboard's script", content_type = "text/javascript", body = String)))]
pub async fn app_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS)
}

/// `GET /ws/live`: viewers' live frames.
#[utoipa::path(get, path = "/ws/live", tag = "live",
    description = "WebSocket upgrade for viewers: heatmap, segments and alert frames (CONTRACT.md); a client may send a subscription message (resolution, bounding box).",
    params(("token" = Option<String>, Query, description = "Bearer token, for clients that cannot send `Authorization` (browsers opening a WebSocket)")),
    responses((status = 101, description = "Switching to the WebSocket protocol"), (status = 401, description = "No or unknown token", body = ErrorBody), (status = 403, description = "The token's role may not do this", body = ErrorBody),
        (status = 429, description = "Too many sockets from this address", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn ws_live(
    State(h): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    super::origin::check(&h.config.auth.allowed_origins, &headers)?;
    check(&h.config.auth, &headers, &q, roles::VIEW)?;
    let bbox = h
        .picture
        .segments()
        .bbox()
        .unwrap_or([-180.0, -90.0, 180.0, 90.0]);
    // About 200 m around the segments, so the streets' ends are in view.
    let margin = 0.002;
    let ctx = ViewerContext {
        engine_res: h.config.h3.resolution,
        k: h.config.privacy.k,
        default: Subscription {
            res: h.config.h3.resolution,
            bbox: [
                bbox[0] - margin,
                bbox[1] - margin,
                bbox[2] + margin,
                bbox[3] + margin,
            ],
        },
        latest_window: h.latest.borrow().clone(),
        latest_segments: h.picture.latest(),
    };
    let slot = h.limits.socket(peer.ip(), h.config.limits.ws_per_address)?;
    let hub = h.hub.clone();
    let stop = h.stop.clone();
    Ok(ws
        .max_message_size(MAX_CLIENT_MESSAGE * 4)
        .max_frame_size(MAX_CLIENT_MESSAGE * 4)
        // A viewer only ever sends a small subscription. tungstenite zeroes its whole read buffer
        // (128 KiB by default) each time the socket is polled for input, which is at every frame
        // pushed: with 100 viewers that was 5 % of the server's time during ingest (issue 20).
        .read_buffer_size(MAX_CLIENT_MESSAGE * 4)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            serve_viewer(socket, hub, ctx, stop).await
        }))
}
