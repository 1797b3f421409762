//! Tier thresholds: global defaults, per-segment overrides (file and organisers), validation,
//! persistence in the data dir and an audit trail of every change.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Entry levels of the three raised tiers for one trigger.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
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

/// One audited change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// When (epoch ms, wall clock).
    pub ts: i64,
    /// The segment.
    pub segment_id: String,
    /// Token name of who changed it.
    pub by: String,
    /// Their role.
    pub role: String,
    /// Thresholds in force before.
    pub old: Thresholds,
    /// Thresholds in force after.
    pub new: Thresholds,
}

/// Organiser overrides, persisted in `<data-dir>/thresholds.json`, audited in
/// `<data-dir>/thresholds-audit.ndjson`.
#[derive(Debug)]
pub struct ThresholdStore {
    dir: Option<PathBuf>,
    overrides: BTreeMap<String, ThresholdPatch>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The new values are invalid (a 400).
    #[error("{0}")]
    Invalid(String),
    /// Disk trouble (a 500).
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

impl ThresholdStore {
    /// Loads the overrides kept in `dir` (None: in memory only, for tests and offline use).
    pub fn open(dir: Option<&Path>) -> Result<ThresholdStore, StoreError> {
        let mut overrides = BTreeMap::new();
        if let Some(d) = dir {
            let p = d.join("thresholds.json");
            if p.exists() {
                let text = std::fs::read_to_string(&p).map_err(|e| StoreError::Io {
                    what: format!("reading {}", p.display()),
                    source: e,
                })?;
                overrides = serde_json::from_str(&text)
                    .map_err(|e| StoreError::Invalid(format!("{}: {e}", p.display())))?;
            }
        }
        Ok(ThresholdStore {
            dir: dir.map(Path::to_owned),
            overrides,
        })
    }

    /// Organiser overrides of one segment.
    pub fn overrides(&self, segment: &str) -> Option<&ThresholdPatch> {
        self.overrides.get(segment)
    }

    /// Applies a patch on top of `current` (the thresholds in force), validates, persists, audits.
    pub fn update(
        &mut self,
        segment: &str,
        current: Thresholds,
        patch: &ThresholdPatch,
        by: &str,
        role: &str,
        now_ms: i64,
    ) -> Result<Thresholds, StoreError> {
        let new = patch.apply(current);
        new.validate().map_err(StoreError::Invalid)?;
        let mut merged = self.overrides.get(segment).copied().unwrap_or_default();
        merged.merge(patch);
        let mut next = self.overrides.clone();
        next.insert(segment.to_owned(), merged);
        if let Some(dir) = &self.dir {
            let io = |what: &str, e| StoreError::Io {
                what: what.to_owned(),
                source: e,
            };
            std::fs::create_dir_all(dir).map_err(|e| io("creating the data dir", e))?;
            let tmp = dir.join("thresholds.json.tmp");
            let body = serde_json::to_vec_pretty(&next).map_err(|e| StoreError::Invalid(e.to_string()))?;
            let mut f = std::fs::File::create(&tmp).map_err(|e| io("writing thresholds", e))?;
            f.write_all(&body)
                .and_then(|_| f.sync_all())
                .map_err(|e| io("writing thresholds", e))?;
            std::fs::rename(&tmp, dir.join("thresholds.json")).map_err(|e| io("replacing thresholds", e))?;
            let entry = AuditEntry {
                ts: now_ms,
                segment_id: segment.into(),
                by: by.into(),
                role: role.into(),
                old: current,
                new,
            };
            let mut line = serde_json::to_vec(&entry).map_err(|e| StoreError::Invalid(e.to_string()))?;
            line.push(b'\n');
            let mut a = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("thresholds-audit.ndjson"))
                .map_err(|e| io("opening the audit log", e))?;
            a.write_all(&line)
                .and_then(|_| a.sync_all())
                .map_err(|e| io("writing the audit log", e))?;
        }
        self.overrides = next;
        Ok(new)
    }

    /// Every audited change, oldest first.
    pub fn audit(&self) -> Vec<AuditEntry> {
        let Some(dir) = &self.dir else { return Vec::new() };
        std::fs::read_to_string(dir.join("thresholds-audit.ndjson"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
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
        let mut s = ThresholdStore::open(None).unwrap();
        let p: ThresholdPatch = serde_json::from_str(r#"{"density":{"high":5}}"#).unwrap();
        let e = s
            .update("x", Thresholds::default(), &p, "t", "organiser", 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("density") && e.contains("medium < high < critical"),
            "{e}"
        );
        let p: ThresholdPatch = serde_json::from_str(r#"{"capacity":-5}"#).unwrap();
        let e = s
            .update("x", Thresholds::default(), &p, "t", "organiser", 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("capacity"), "{e}");
    }

    #[test]
    fn updates_persist_across_reopen_and_are_audited() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ThresholdStore::open(Some(dir.path())).unwrap();
        let p: ThresholdPatch = serde_json::from_str(r#"{"capacity":5000,"density":{"high":2.5}}"#).unwrap();
        let new = s
            .update(
                "enr",
                Thresholds::default(),
                &p,
                "bund-organiser",
                "organiser",
                42,
            )
            .unwrap();
        assert_eq!(new.density.high, 2.5);
        let p2: ThresholdPatch = serde_json::from_str(r#"{"flow":{"critical":90}}"#).unwrap();
        s.update("enr", new, &p2, "bund-organiser", "organiser", 43)
            .unwrap();
        let again = ThresholdStore::open(Some(dir.path())).unwrap();
        let o = again.overrides("enr").unwrap().apply(Thresholds::default());
        assert_eq!(
            (o.capacity, o.density.high, o.flow.critical),
            (Some(5000.0), 2.5, 90.0)
        );
        let audit = again.audit();
        assert_eq!(audit.len(), 2);
        assert_eq!(
            (
                audit[0].by.as_str(),
                audit[0].old.density.high,
                audit[0].new.density.high
            ),
            ("bund-organiser", 2.0, 2.5)
        );
    }
}
