//! Repeated bad tokens from one address: past `limits.auth_failures_per_minute`, that address's
//! requests that carry a token are answered 429 before the token is looked at, until its minute
//! is over. Other addresses are not affected; requests without a token (health, metrics, the
//! dashboard page) pass.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::server::state::AppState;

fn carries_token(req: &Request) -> bool {
    req.headers().contains_key(header::AUTHORIZATION)
        || req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("token=")))
}

/// The middleware.
pub async fn throttle(
    State(h): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if h.config.auth.tokens.is_empty() || !carries_token(&req) {
        return next.run(req).await;
    }
    let ip = peer.ip();
    if let Some(wait) = h.throttle.wait(ip) {
        let s = wait.as_secs().max(1) as u32;
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many failed tokens from {ip} in a minute (limits.auth_failures_per_minute = {}): wait {s} s",
                h.config.limits.auth_failures_per_minute
            ),
        )
        .retry_after(s)
        .into_response();
    }
    let r = next.run(req).await;
    if r.status() == StatusCode::UNAUTHORIZED {
        h.throttle.failed(ip);
    }
    r
}
