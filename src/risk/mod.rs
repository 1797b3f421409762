//! Cells → road segments → risk tiers and alerts. No I/O except the threshold store's files.

pub mod board;
pub mod evaluate;
pub mod segments;
pub mod thresholds;
pub mod tiers;

pub use board::Board;
pub use evaluate::{thresholds_for, Alert, Risk, SegmentStatus};
pub use segments::{SegmentId, SegmentMap};
pub use thresholds::{ThresholdPatch, ThresholdStore, Thresholds};
pub use tiers::Tier;
