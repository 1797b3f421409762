//! HTTP routes (axum): handlers extract, make one call on a typed handle, map the result.
//! `ingest` and `ingest_ws` take feeds; `segments` serves the live picture and organisers'
//! thresholds; `sql` serves analysts; `dashboard` the page and viewers' WebSocket; `ops` health,
//! metrics and the OpenAPI document. `auth`, `limits`, `origin` and `throttle` guard them; `error` is their one error
//! type.
//!
//! Every route is registered through `utoipa_axum::routes!` from its handler's
//! `#[utoipa::path]`, so the router and `/api/openapi.json` are built from one list and cannot
//! drift apart.

pub mod alerts;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod ingest;
pub mod ingest_ws;
pub mod limits;
pub mod ops;
pub mod origin;
pub mod rewind;
pub mod segments;
pub mod sql;
pub mod throttle;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Query};
use axum::{Extension, Router};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;

use super::state::AppState;

/// Query parameters (`?token=`, `?since=`).
pub type Params = Query<HashMap<String, String>>;

/// The time in query parameter `name` (epoch ms or RFC 3339), None when absent; a 400 naming the
/// parameter when unreadable. Every route taking a time reads it here.
pub fn time_param(q: &Params, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(s) = q.get(name) else { return Ok(None) };
    s.parse::<i64>()
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis()))
        .map(Some)
        .map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                format!("{name}={s:?}: expected epoch milliseconds or RFC 3339"),
            )
        })
}

/// The document's fixed parts; the paths come from the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "throng",
        description = "Crowd-flow stream processor: feeds in (NDJSON over HTTP or WebSocket), the live picture out (segments, alerts, WebSocket frames), SQL over history. Roles and tokens: CONTRACT.md; feed formats: FEEDS.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&Bearer),
    tags(
        (name = "feeds", description = "Ingest (feed role)"),
        (name = "live", description = "The live picture (viewer role)"),
        (name = "organisers", description = "Thresholds and segments (organiser, admin)"),
        (name = "analysis", description = "SQL (analyst role)"),
        (name = "ops", description = "Health, metrics, this document (open)")
    )
)]
struct ApiDoc;

/// Declares the `bearer` scheme the routes name.
struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The router and the OpenAPI document of every route in it.
pub fn routes() -> (OpenApiRouter<AppState>, utoipa::openapi::OpenApi) {
    let r = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ingest::ingest))
        .routes(routes!(ops::health))
        .routes(routes!(ops::openapi))
        .routes(routes!(segments::list))
        .routes(routes!(segments::reload))
        .routes(routes!(segments::one))
        .routes(routes!(segments::put_thresholds))
        .routes(routes!(segments::audit))
        .routes(routes!(alerts::alerts))
        .routes(routes!(alerts::ack))
        .routes(routes!(segments::scenario))
        .routes(routes!(rewind::range))
        .routes(routes!(rewind::segments))
        .routes(routes!(rewind::heatmap))
        .routes(routes!(segments::boundaries))
        .routes(routes!(sql::sql))
        .routes(routes!(dashboard::ws_live))
        .routes(routes!(ingest_ws::ws_ingest))
        .routes(routes!(dashboard::index))
        .routes(routes!(dashboard::app_js))
        .routes(routes!(ops::metrics));
    let doc = r.get_openapi().clone();
    (r, doc)
}

/// The OpenAPI document alone (`throng serve` serves it; tests read it).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

/// Builds the routes.
pub fn router(h: AppState) -> Router {
    let (routes, doc) = routes();
    let (router, _) = routes.split_for_parts();
    router
        .layer(axum::middleware::from_fn_with_state(
            h.clone(),
            throttle::throttle,
        ))
        .layer(Extension(Arc::new(doc)))
        .layer(DefaultBodyLimit::max(h.config.ingest.max_body_bytes))
        .with_state(h)
}
