//! Cells → road segments → risk tiers and alerts. Pure except for the threshold store, which keeps
//! organisers' changes in the data dir through `durability`'s atomic writes.

pub mod evaluate;
pub mod thresholds;
pub mod tiers;

pub use evaluate::{thresholds_for, Alert, Risk, RiskState, SegmentStatus};
pub use thresholds::{ThresholdPatch, ThresholdStore, Thresholds};
pub use tiers::{Shown, Tier};
