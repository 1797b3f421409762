//! The command-centre dashboard (embedded, no CDN) and the viewer WebSocket route.

use std::collections::HashMap;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};

use super::auth::{check, roles};
use super::ApiError;
use crate::live::frames::Subscription;
use crate::live::ws::{serve_viewer, ViewerContext, MAX_CLIENT_MESSAGE};
use crate::server::state::AppState;

const INDEX: &str = include_str!("../../../dashboards/live/index.html");
const APP_JS: &str = include_str!("../../../dashboards/live/app.js");

/// `GET /`: the page (its data still needs a viewer token).
pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}

/// The page's script.
pub async fn app_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS)
}

/// `GET /ws/live`: viewers' live frames.
pub async fn ws_live(
    State(h): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
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
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            serve_viewer(socket, hub, ctx, stop).await
        }))
}
