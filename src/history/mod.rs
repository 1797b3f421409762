//! History: closed windows in Parquet, and SQL over them for analysts (HTTP, CLI, PostgreSQL wire).

pub mod format;
pub mod h3fn;
pub mod pg;
pub mod schema;
pub mod sql;
pub mod store;
pub mod tables;

pub use sql::{Answer, SqlEngine, SqlError};
pub use store::{History, HistoryError, Table};
