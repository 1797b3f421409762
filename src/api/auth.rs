//! Bearer tokens → a named holder with a role. With no tokens configured every role is open.

use axum::http::{HeaderMap, StatusCode};

use super::http::ApiError;
use crate::config::AuthConfig;

/// Who is asking.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The token's name (audit logs show it).
    pub name: String,
    /// Its role.
    pub role: String,
}

/// Role sets a route accepts.
pub mod roles {
    /// Watch the live picture.
    pub const VIEW: &[&str] = &["viewer", "organiser", "admin"];
    /// Change thresholds.
    pub const ORGANISE: &[&str] = &["organiser", "admin"];
    /// Push feed records.
    pub const FEED: &[&str] = &["feed", "admin"];
    /// Query history with SQL.
    pub const ANALYSE: &[&str] = &["analyst", "admin"];
    /// Run the server.
    pub const ADMIN: &[&str] = &["admin"];
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    // Constant time for equal lengths; a length mismatch says nothing about the content.
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token holder whose token equals `presented` (every token is compared, in constant time).
pub fn resolve<'a>(auth: &'a AuthConfig, presented: &str) -> Option<&'a crate::config::TokenConfig> {
    let mut found = None;
    for t in &auth.tokens {
        if ct_eq(t.token.as_bytes(), presented.as_bytes()) {
            found = Some(t);
        }
    }
    found
}

/// Checks the request's token (`Authorization: Bearer`, or `token` from the query) against `allowed`.
pub fn authorize(
    auth: &AuthConfig,
    headers: &HeaderMap,
    query_token: Option<&str>,
    allowed: &[&str],
) -> Result<Principal, ApiError> {
    if auth.tokens.is_empty() {
        return Ok(Principal {
            name: "open-mode".into(),
            role: "admin".into(),
        });
    }
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(query_token)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing token: send Authorization: Bearer TOKEN",
            )
        })?;
    let t =
        resolve(auth, presented).ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "invalid token"))?;
    if !allowed.contains(&t.role.as_str()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "role `{}` may not do this (needs one of: {})",
                t.role,
                allowed.join(", ")
            ),
        ));
    }
    Ok(Principal {
        name: t.name.clone(),
        role: t.role.clone(),
    })
}

/// `authorize` with the server's tokens and the request's `?token=`.
pub fn check(
    h: &crate::app::Handles,
    headers: &HeaderMap,
    query: &std::collections::HashMap<String, String>,
    allowed: &[&str],
) -> Result<Principal, ApiError> {
    authorize(
        &h.config.auth,
        headers,
        query.get("token").map(String::as_str),
        allowed,
    )
}
