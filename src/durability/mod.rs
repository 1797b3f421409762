//! Nothing acknowledged is lost: the write-ahead log and checkpoints of the engine.

pub mod wal;

pub use wal::{Recovery, Wal};
