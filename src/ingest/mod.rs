//! Feeds end here: raw records (NDJSON) are read (`raw`, `scan`), validated, pseudonymised and
//! H3-indexed (`parse`, `pseudonym`, `cells`, `crs`); `decode` is the one body → records loop
//! every transport uses; `replay` merges recorded files in event-time order. Nothing downstream
//! ever sees a raw device string.

pub mod cells;
pub mod crs;
pub mod decode;
pub mod parse;
pub mod pseudonym;
mod raw;
pub mod replay;
mod scan;
pub mod sources;

pub use decode::{decode, Decoded, LineError, LineReject};
pub use parse::{Parser, Reject, RejectCode};
pub use pseudonym::Pseudonymiser;
pub use sources::{DeviceProfile, Sources};
