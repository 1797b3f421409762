//! The organisers' threshold store: per-segment overrides persisted in the data dir (atomic
//! replace) and an audit trail of every change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

pub use crate::config::thresholds::{Levels, LevelsPatch, ThresholdPatch, Thresholds};
use crate::durability::files;
use crate::model::Role;

/// One audited change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AuditEntry {
    /// When (epoch ms, wall clock).
    pub ts: i64,
    /// The segment.
    pub segment_id: String,
    /// Token name of who changed it.
    pub by: String,
    /// Their role.
    pub role: Role,
    /// Thresholds in force before.
    pub old: Thresholds,
    /// Thresholds in force after.
    pub new: Thresholds,
}

/// Organiser overrides, persisted in `<data-dir>/thresholds.json`, audited in
/// `<data-dir>/thresholds-audit.ndjson`. A cheap handle: clones share one store (the API writes
/// it, the engine task reads it each evaluation); its lock is private.
#[derive(Debug, Clone)]
pub struct ThresholdStore {
    dir: Option<PathBuf>,
    overrides: Arc<RwLock<BTreeMap<String, ThresholdPatch>>>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The new values are invalid (a 400).
    #[error("{0}")]
    Invalid(String),
    /// Disk trouble (a 503: the thresholds in force are unchanged).
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

const OVERRIDES_FILE: &str = files::names::THRESHOLDS;
const AUDIT_FILE: &str = files::names::THRESHOLDS_AUDIT;

impl ThresholdStore {
    /// Loads the overrides kept in `dir` (None: in memory only, for tests and offline use).
    pub fn open(dir: Option<&Path>) -> Result<ThresholdStore, StoreError> {
        let mut overrides = BTreeMap::new();
        if let Some(d) = dir {
            let p = d.join(OVERRIDES_FILE);
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
            overrides: Arc::new(RwLock::new(overrides)),
        })
    }

    /// Organiser overrides of one segment.
    pub fn overrides(&self, segment: &str) -> Option<ThresholdPatch> {
        self.overrides
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(segment)
            .copied()
    }

    /// Applies a patch on top of `current` (the thresholds in force), validates, persists, audits.
    /// Changes are serialised: two organisers' patches never interleave.
    pub fn update(&self, change: Change<'_>) -> Result<Thresholds, StoreError> {
        let Change {
            segment,
            current,
            patch,
            by,
            role,
            now_ms,
        } = change;
        let new = patch.apply(current);
        new.validate().map_err(StoreError::Invalid)?;
        let mut overrides = self.overrides.write().unwrap_or_else(|p| p.into_inner());
        let mut merged = overrides.get(segment).copied().unwrap_or_default();
        merged.merge(patch);
        let mut next = overrides.clone();
        next.insert(segment.to_owned(), merged);
        if let Some(dir) = &self.dir {
            files::replace(&dir.join(OVERRIDES_FILE), |w| {
                serde_json::to_writer_pretty(w, &next).map_err(std::io::Error::other)
            })
            .map_err(|e| StoreError::Io {
                what: "replacing thresholds".into(),
                source: e.into_io(),
            })?;
            let entry = AuditEntry {
                ts: now_ms,
                segment_id: segment.into(),
                by: by.into(),
                role,
                old: current,
                new,
            };
            if let Err(e) = files::append_lines(&dir.join(AUDIT_FILE), &files::json_lines([&entry]), true) {
                // A change nobody can audit is not made: put the old file back, so a restart does
                // not bring in what the organiser was told failed.
                let restored = files::replace(&dir.join(OVERRIDES_FILE), |w| {
                    serde_json::to_writer_pretty(w, &*overrides).map_err(std::io::Error::other)
                });
                if let Err(r) = restored {
                    tracing::error!(error = %r.into_io(), "Could not put the previous thresholds file back; a restart may apply the refused change.");
                }
                return Err(StoreError::Io {
                    what: "writing the audit log".into(),
                    source: e,
                });
            }
        }
        *overrides = next;
        Ok(new)
    }

    /// Every audited change, oldest first.
    pub fn audit(&self) -> Vec<AuditEntry> {
        let Some(dir) = &self.dir else { return Vec::new() };
        std::fs::read_to_string(dir.join(AUDIT_FILE))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// One organiser's change, as `ThresholdStore::update` takes it.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    /// The segment.
    pub segment: &'a str,
    /// The thresholds in force before.
    pub current: Thresholds,
    /// What changes.
    pub patch: &'a ThresholdPatch,
    /// Token name of who changes it.
    pub by: &'a str,
    /// Their role.
    pub role: Role,
    /// When (epoch ms, wall clock).
    pub now_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_persist_across_reopen_and_are_audited() {
        let dir = tempfile::tempdir().unwrap();
        let s = ThresholdStore::open(Some(dir.path())).unwrap();
        let change = |current, patch, now_ms| Change {
            segment: "enr",
            current,
            patch,
            by: "bund-organiser",
            role: Role::Organiser,
            now_ms,
        };
        let p: ThresholdPatch = serde_json::from_str(r#"{"capacity":5000,"density":{"high":2.5}}"#).unwrap();
        let new = s.update(change(Thresholds::default(), &p, 42)).unwrap();
        assert_eq!(new.density.high, 2.5);
        let p2: ThresholdPatch = serde_json::from_str(r#"{"flow":{"critical":90}}"#).unwrap();
        s.update(change(new, &p2, 43)).unwrap();
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
