//! Cross-site WebSocket hijacking guard: a browser sends `Origin` on every WebSocket upgrade and
//! attaches no token of its own, so a page on another site could otherwise open `/ws/live` in
//! demo mode (no tokens) and read the live feed. Clients that send no `Origin` (feeds, the CLI,
//! scripts) are not browsers and pass; browsers pass from this server's own origin or from an
//! origin the operator listed in `[auth] allowed_origins`.

use axum::http::{header, HeaderMap, StatusCode};

use super::ApiError;

/// Checks a WebSocket upgrade's `Origin` against the server's own origin and `allowed`.
pub fn check(allowed: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let own = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|h| !host.is_empty() && h.eq_ignore_ascii_case(host));
    let listed = allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin));
    if own || listed {
        return Ok(());
    }
    tracing::warn!(origin, host, "WebSocket upgrade refused: cross-site Origin.");
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "WebSocket from origin {origin:?} refused: it is not this server's origin ({host}); \
             to allow it, add it to [auth] allowed_origins in the configuration"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn no_origin_and_same_origin_pass_other_sites_are_refused_unless_listed() {
        let none: Vec<String> = Vec::new();
        assert!(check(&none, &headers(None, "127.0.0.1:8080")).is_ok());
        assert!(check(&none, &headers(Some("http://127.0.0.1:8080"), "127.0.0.1:8080")).is_ok());
        assert!(check(&none, &headers(Some("https://Throng.example"), "throng.example")).is_ok());
        assert!(check(&none, &headers(Some("http://evil.example"), "127.0.0.1:8080")).is_err());
        // Same host, another port is another origin.
        assert!(check(&none, &headers(Some("http://127.0.0.1:9999"), "127.0.0.1:8080")).is_err());
        assert!(check(&none, &headers(Some("null"), "127.0.0.1:8080")).is_err());
        let listed = vec!["http://grafana.example:3000/".to_owned()];
        assert!(check(
            &listed,
            &headers(Some("http://grafana.example:3000"), "127.0.0.1:8080")
        )
        .is_ok());
        assert!(check(&listed, &headers(Some("http://evil.example"), "127.0.0.1:8080")).is_err());
    }
}
