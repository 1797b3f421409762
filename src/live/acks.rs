//! Alert acknowledgements: who in the command centre saw which alert, and when. Persisted (one
//! JSON line each in `<data-dir>/alert-acks.ndjson`, the `alert_acks` table) before anyone is
//! told, so an acknowledgement a screen showed survives a restart; pushed to every screen.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::durability::files;
use crate::model::Role;

/// Longest note an acknowledgement may carry (characters): a line for the log, not a report.
pub const MAX_NOTE_CHARS: usize = 500;

/// One acknowledgement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Ack {
    /// When it was acknowledged (epoch ms, wall clock).
    pub ts: i64,
    /// The alert's `ts` (event time of the tier change, epoch ms).
    pub alert_ts: i64,
    /// The alert's segment.
    pub segment_id: String,
    /// Token name of who acknowledged it.
    pub by: String,
    /// Their role.
    pub role: Role,
    /// What they said (optional, at most 500 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Acknowledgements by (alert ts, segment): a segment changes tier at most once per evaluation,
/// so that pair names one alert. A cheap handle; its lock is private.
#[derive(Debug, Clone, Default)]
pub struct AckStore {
    file: Option<PathBuf>,
    acks: Arc<Mutex<HashMap<(i64, String), Ack>>>,
}

impl AckStore {
    /// Loads the acknowledgements kept in `dir` (None: in memory only). Unreadable lines (a torn
    /// tail after a crash) are skipped with a warning.
    pub fn open(dir: Option<&Path>) -> std::io::Result<AckStore> {
        let file = dir.map(|d| d.join(files::names::ALERT_ACKS));
        let mut acks = HashMap::new();
        if let Some(f) = &file {
            let text = match std::fs::read_to_string(f) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(e),
            };
            let mut skipped = 0;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<Ack>(line) {
                    Ok(a) => {
                        acks.entry((a.alert_ts, a.segment_id.clone())).or_insert(a);
                    }
                    Err(_) => skipped += 1,
                }
            }
            if skipped > 0 {
                tracing::warn!(path = %f.display(), skipped, "Unreadable acknowledgement lines skipped.");
            }
        }
        Ok(AckStore {
            file,
            acks: Arc::new(Mutex::new(acks)),
        })
    }

    /// The acknowledgement of the alert at `alert_ts` on `segment`, if any.
    pub fn get(&self, alert_ts: i64, segment: &str) -> Option<Ack> {
        self.lock().get(&(alert_ts, segment.to_owned())).cloned()
    }

    /// Records `ack` durably unless the alert is already acknowledged; returns the
    /// acknowledgement in force and whether it is this one. The first acknowledgement stands:
    /// the log says who saw it first.
    pub fn acknowledge(&self, ack: Ack) -> std::io::Result<(Ack, bool)> {
        let mut acks = self.lock();
        let key = (ack.alert_ts, ack.segment_id.clone());
        if let Some(a) = acks.get(&key) {
            return Ok((a.clone(), false));
        }
        if let Some(f) = &self.file {
            files::append_lines(f, &files::json_lines([&ack]), true)?;
        }
        acks.insert(key, ack.clone());
        Ok((ack, true))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i64, String), Ack>> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(by: &str) -> Ack {
        Ack {
            ts: 1,
            alert_ts: 1_767_196_800_000,
            segment_id: "chenyi-steps".into(),
            by: by.into(),
            role: Role::Viewer,
            note: None,
        }
    }

    #[test]
    fn the_first_acknowledgement_stands_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = AckStore::open(Some(dir.path())).unwrap();
        assert!(s.acknowledge(ack("huangpu-command")).unwrap().1);
        let (kept, new) = s.acknowledge(ack("someone-else")).unwrap();
        assert!(!new);
        assert_eq!(kept.by, "huangpu-command");
        // A torn tail (a crash mid-write) is skipped, not fatal.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(files::names::ALERT_ACKS))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"ts\":3,\"alert"))
            .unwrap();
        let again = AckStore::open(Some(dir.path())).unwrap();
        let a = again.get(1_767_196_800_000, "chenyi-steps").unwrap();
        assert_eq!(a.by, "huangpu-command");
        assert!(again.get(1_767_196_800_000, "bund-promenade").is_none());
    }
}
