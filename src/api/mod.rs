//! HTTP routes (axum): handlers extract, make one call, map the result.

mod http;

pub use http::router;
