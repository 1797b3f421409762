//! Bearer tokens → a named holder with a role. With no tokens configured every role is open.

use axum::http::{HeaderMap, StatusCode};

use super::error::ApiError;
use crate::config::AuthConfig;
use crate::model::Role;

/// Who is asking.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The token's name (audit logs show it).
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// Role sets a route accepts.
pub mod roles {
    use crate::model::Role;

    /// Watch the live picture.
    pub const VIEW: &[Role] = &[Role::Viewer, Role::Organiser, Role::Admin];
    /// Change thresholds.
    pub const ORGANISE: &[Role] = &[Role::Organiser, Role::Admin];
    /// Push feed records.
    pub const FEED: &[Role] = &[Role::Feed, Role::Admin];
    /// Query history with SQL.
    pub const ANALYSE: &[Role] = &[Role::Analyst, Role::Admin];
    /// Run the server.
    pub const ADMIN: &[Role] = &[Role::Admin];
}

/// Checks the request's token (`Authorization: Bearer`, or `token` from the query) against `allowed`.
pub fn authorize(
    auth: &AuthConfig,
    headers: &HeaderMap,
    query_token: Option<&str>,
    allowed: &[Role],
) -> Result<Principal, ApiError> {
    if auth.tokens.is_empty() {
        return Ok(Principal {
            name: "open-mode".into(),
            role: Role::Admin,
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
    let t = auth
        .resolve(presented)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "invalid token"))?;
    if !allowed.contains(&t.role) {
        let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "role `{}` may not do this (needs one of: {})",
                t.role,
                names.join(", ")
            ),
        ));
    }
    Ok(Principal {
        name: t.name.clone(),
        role: t.role,
    })
}

/// `authorize` with the server's tokens and the request's `?token=`.
pub fn check(
    auth: &AuthConfig,
    headers: &HeaderMap,
    query: &std::collections::HashMap<String, String>,
    allowed: &[Role],
) -> Result<Principal, ApiError> {
    authorize(auth, headers, query.get("token").map(String::as_str), allowed)
}
