//! SQL over history for analysts: one DataFusion engine (`sql`) behind three doors — `POST
//! /api/sql`, `throng query` and the PostgreSQL wire (`pg`). Read-only: nothing here writes the
//! history; `tables` reads its files and in-memory tail.

pub mod format;
pub mod h3fn;
pub mod pg;
pub mod sql;
pub mod tables;

pub use sql::{Answer, SqlEngine, SqlError};
