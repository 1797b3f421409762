//! Feeds end here: raw records (NDJSON) are parsed, validated, pseudonymised and H3-indexed.

pub mod crs;
pub mod parse;
pub mod pseudonym;
pub mod registry;
pub mod replay;
pub mod sources;

pub use parse::{Parser, Reject, RejectCode};
pub use pseudonym::Pseudonymiser;
pub use registry::Registry;
pub use sources::Sources;
