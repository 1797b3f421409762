//! HTTP routes (axum): handlers extract, make one call, map the result.

pub mod auth;
pub mod dashboard;
pub mod http;

pub use http::router;
