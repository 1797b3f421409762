//! The Bund simulator: people as agents walking the segment network, and the feeds they cause.
//!
//! A feed like any other: it writes NDJSON records (FEEDS.md) and, for checking, the true number of
//! people per segment per window. Deterministic for a seed.
//!
//! The model: agents arrive from metro exits and street ends (routes in `routes.json`), walk their
//! route at 0.8–1.5 m/s to a riverside segment, mill about there until after midnight, then walk
//! back and leave. A share is already in place at the start. Time is "scenario seconds" from the
//! start; event timestamps are `start_ms + scenario_s × 1000 / speed`, so `throng demo --speed 10`
//! plays the night ten times faster while timestamps stay on the wall clock.

pub mod agents;
pub mod emit;
pub mod score;

pub use agents::{Changes, Closed, Closure, Panel, Provider, Scenario, SimConfig, World};
pub use emit::{Emitter, TruthRow};
