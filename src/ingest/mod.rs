//! Feeds end here: raw records (NDJSON) are parsed, validated, pseudonymised and H3-indexed.

pub mod cells;
pub mod crs;
pub mod parse;
pub mod pseudonym;
pub mod registry;
pub mod replay;
mod scan;
pub mod sources;

pub use parse::{Parser, Reject, RejectCode};
pub use pseudonym::Pseudonymiser;
pub use registry::Registry;
pub use sources::Sources;
