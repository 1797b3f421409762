//! Cells → road segments → risk tiers and alerts. Pure except for the threshold store, which keeps
//! organisers' changes in the data dir through `durability`'s atomic writes.

pub mod calibrate;
pub mod evaluate;
pub mod thresholds;
pub mod tiers;

pub use calibrate::{Calibrator, Estimate, Rejection, SourceCalibration, Status as CalibrationStatus};
pub use evaluate::{thresholds_for, Alert, Contributions, Risk, RiskState, SegmentStatus};
pub use thresholds::{ThresholdPatch, ThresholdStore, Thresholds};
pub use tiers::{Shown, Tier};
