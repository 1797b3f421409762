//! Event-time windows: records → per-cell aggregates per hopping window → Arrow batches.
//! No I/O here; the caller passes the clock in.

pub mod batch;
pub mod engine;
pub mod keys;
pub mod registers;
pub mod watermark;

pub use batch::{cell_area_m2, json_rows, late_row, to_record_batch, HEX_WINDOWS_SCHEMA};
pub use engine::{Engine, EngineStats, HexRow, HexWindow, LateRecord, Presence, SegmentPeople};
