//! HTTP routes (axum): handlers extract, make one call, map the result.

pub mod auth;
pub mod dashboard;
pub mod http;
pub mod ingest_ws;
pub mod limits;
pub mod sql;

pub use http::router;
