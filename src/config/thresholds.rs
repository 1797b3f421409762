//! Tier thresholds as values: the defaults of `[risk.thresholds]`, the partial updates a segments
//! file or an organiser applies, and their validation. Kept and audited by `risk::thresholds`.

use serde::{Deserialize, Serialize};

/// Entry levels of the three raised tiers for one trigger.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Levels {
    /// Enter medium at or above this.
    pub medium: f64,
    /// Enter high at or above this.
    pub high: f64,
    /// Enter critical at or above this.
    pub critical: f64,
}

/// The thresholds in force for one segment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Organiser capacity, people (None: no capacity trigger).
    pub capacity: Option<f64>,
    /// People per m² of walkable area.
    pub density: Levels,
    /// People per metre of effective width per minute.
    pub flow: Levels,
    /// Share of capacity.
    pub capacity_share: Levels,
    /// High when density would reach `density.high` within this many minutes at the current rise.
    pub time_to_high_min: f64,
}

impl Default for Thresholds {
    /// CROWD-SAFETY.md defaults: Fruin E onset, UK planning density, Still's 4 p/m², Green Guide 82.
    fn default() -> Self {
        Thresholds {
            capacity: None,
            density: Levels {
                medium: 1.0,
                high: 2.0,
                critical: 4.0,
            },
            flow: Levels {
                medium: 49.0,
                high: 66.0,
                critical: 82.0,
            },
            capacity_share: Levels {
                medium: 0.6,
                high: 0.8,
                critical: 0.95,
            },
            time_to_high_min: 10.0,
        }
    }
}

/// A partial update of one trigger's levels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LevelsPatch {
    /// New medium level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub medium: Option<f64>,
    /// New high level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high: Option<f64>,
    /// New critical level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub critical: Option<f64>,
}

/// A partial update (the `PUT /api/segments/{id}/thresholds` body): omitted keys keep their value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdPatch {
    /// New capacity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<f64>,
    /// New density levels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub density: Option<LevelsPatch>,
    /// New flow levels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<LevelsPatch>,
    /// New capacity-share levels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_share: Option<LevelsPatch>,
    /// New time-to-high horizon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_high_min: Option<f64>,
}

impl LevelsPatch {
    fn apply(&self, l: &mut Levels) {
        if let Some(v) = self.medium {
            l.medium = v;
        }
        if let Some(v) = self.high {
            l.high = v;
        }
        if let Some(v) = self.critical {
            l.critical = v;
        }
    }

    fn merge(&mut self, o: &LevelsPatch) {
        self.medium = o.medium.or(self.medium);
        self.high = o.high.or(self.high);
        self.critical = o.critical.or(self.critical);
    }
}

impl ThresholdPatch {
    /// `t` with this patch applied.
    pub fn apply(&self, mut t: Thresholds) -> Thresholds {
        if let Some(c) = self.capacity {
            t.capacity = Some(c);
        }
        if let Some(p) = &self.density {
            p.apply(&mut t.density);
        }
        if let Some(p) = &self.flow {
            p.apply(&mut t.flow);
        }
        if let Some(p) = &self.capacity_share {
            p.apply(&mut t.capacity_share);
        }
        if let Some(v) = self.time_to_high_min {
            t.time_to_high_min = v;
        }
        t
    }

    /// This patch with `o` layered on top.
    pub fn merge(&mut self, o: &ThresholdPatch) {
        self.capacity = o.capacity.or(self.capacity);
        self.time_to_high_min = o.time_to_high_min.or(self.time_to_high_min);
        for (mine, theirs) in [
            (&mut self.density, &o.density),
            (&mut self.flow, &o.flow),
            (&mut self.capacity_share, &o.capacity_share),
        ] {
            if let Some(t) = theirs {
                mine.get_or_insert_with(LevelsPatch::default).merge(t);
            }
        }
    }
}

impl Thresholds {
    /// Checks every level is positive and medium < high < critical; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(c) = self.capacity {
            if !(c.is_finite() && c > 0.0) {
                return Err(format!("capacity: must be a positive number of people, got {c}"));
            }
        }
        for (name, l) in [
            ("density", &self.density),
            ("flow", &self.flow),
            ("capacity_share", &self.capacity_share),
        ] {
            for (k, v) in [("medium", l.medium), ("high", l.high), ("critical", l.critical)] {
                if !(v.is_finite() && v > 0.0) {
                    return Err(format!("{name}.{k}: must be positive, got {v}"));
                }
            }
            if !(l.medium < l.high && l.high < l.critical) {
                return Err(format!(
                    "{name}: levels must rise medium < high < critical, got {} / {} / {}",
                    l.medium, l.high, l.critical
                ));
            }
        }
        if !(self.time_to_high_min.is_finite() && self.time_to_high_min > 0.0) {
            return Err(format!(
                "time_to_high_min: must be positive, got {}",
                self.time_to_high_min
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_ordered() {
        Thresholds::default().validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = serde_json::from_str::<ThresholdPatch>(r#"{"densty":{"high":3}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("densty"), "{e}");
        let e = serde_json::from_str::<ThresholdPatch>(r#"{"density":{"extreme":3}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("extreme"), "{e}");
    }

    #[test]
    fn disordered_or_negative_levels_are_refused_naming_the_key() {
        let p: ThresholdPatch = serde_json::from_str(r#"{"density":{"high":5}}"#).unwrap();
        let e = p.apply(Thresholds::default()).validate().unwrap_err();
        assert!(
            e.contains("density") && e.contains("medium < high < critical"),
            "{e}"
        );
        let p: ThresholdPatch = serde_json::from_str(r#"{"capacity":-5}"#).unwrap();
        let e = p.apply(Thresholds::default()).validate().unwrap_err();
        assert!(e.contains("capacity"), "{e}");
    }
}
