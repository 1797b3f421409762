//! The scenario: what a deployment knows about its ground before any record arrives — sensors,
//! stations and their feed points (`registry`), and the road segments as polygons over H3 cells
//! (`segments`), and where a position lies among them (`matcher`). Loaded once at start (segments again on reload); read by every stage below.

pub mod matcher;
pub mod registry;
pub mod segments;

pub use matcher::{Matcher, Place, PlaceCache, NO_PLACE};
pub use registry::Registry;
pub use segments::{SegmentId, SegmentMap};

use crate::config::Config;

/// Loads the scenario's segments (an empty map when the scenario has none).
pub fn load_segments(cfg: &Config) -> Result<SegmentMap, String> {
    let path = cfg.scenario.join("segments.geojson");
    if !path.exists() {
        tracing::warn!(path = %path.display(), "No segments file: segment tiers are off.");
        return Ok(SegmentMap::default());
    }
    let mut map = SegmentMap::load(&path, cfg.resolution()).map_err(|e| e.to_string())?;
    map.set_max_match(cfg.lbs.max_match_m);
    Ok(map)
}
