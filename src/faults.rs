//! Storage faults in force: which writes to the data dir are failing now, as `/api/health` and
//! `throng_storage_degraded` show them. Writers report each failure and each success; a fault
//! clears itself on the first write that succeeds again (space came back), with a log line.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

/// What was being written when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// The write-ahead log: while it fails, ingest answers 503 and acknowledges nothing.
    Wal,
    /// Checkpoints: while they fail the log keeps every segment (nothing is lost; restarts slow).
    Checkpoint,
    /// Parquet history: closed windows stay in memory (and queryable) until a flush succeeds.
    History,
    /// The `late_records` and alerts logs: rows wait in memory and are appended on the next try.
    HistoryLogs,
    /// Organiser thresholds: a change that could not be written is refused, the old ones stay.
    Thresholds,
}

impl Component {
    /// The name in health and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Component::Wal => "wal",
            Component::Checkpoint => "checkpoint",
            Component::History => "history",
            Component::HistoryLogs => "history_logs",
            Component::Thresholds => "thresholds",
        }
    }
}

/// One failing component, for `/api/health`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    /// What fails.
    pub component: Component,
    /// The newest error, as the OS gave it.
    pub error: String,
    /// When it started failing (epoch ms).
    pub since: i64,
    /// Failed attempts since then.
    pub failures: u64,
}

/// The faults in force, shared by every writer (`Arc<Faults>`).
#[derive(Debug, Default)]
pub struct Faults(Mutex<BTreeMap<Component, Fault>>);

impl Faults {
    /// Notes a failed write of `component`; true when it was not failing before (log it then,
    /// and not on every retry: a full disk under fifty feeds would drown the log).
    pub fn failed(&self, component: Component, error: &dyn std::fmt::Display) -> bool {
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let new = !f.contains_key(&component);
        let e = f.entry(component).or_insert_with(|| Fault {
            component,
            error: String::new(),
            since: crate::model::now_ms(),
            failures: 0,
        });
        e.error = error.to_string();
        e.failures += 1;
        metrics::gauge!("throng_storage_degraded", "component" => component.name()).set(1.0);
        metrics::counter!("throng_storage_failures_total", "component" => component.name()).increment(1);
        new
    }

    /// Notes a write of `component` that succeeded; clears its fault if it had one.
    pub fn succeeded(&self, component: Component) {
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gone) = f.remove(&component) {
            metrics::gauge!("throng_storage_degraded", "component" => component.name()).set(0.0);
            tracing::info!(
                component = component.name(),
                failures = gone.failures,
                down_ms = crate::model::now_ms() - gone.since,
                "Storage writes succeed again."
            );
        }
    }

    /// The faults in force, by component.
    pub fn current(&self) -> Vec<Fault> {
        let f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_counts_its_failures_and_clears_on_the_first_success() {
        let f = Faults::default();
        assert!(f.failed(Component::Wal, &"File too large (os error 27)"));
        assert!(!f.failed(Component::Wal, &"No space left on device (os error 28)"));
        assert!(f.failed(Component::History, &"Not a directory"));
        let now = f.current();
        assert_eq!(now.len(), 2);
        assert_eq!(now[0].component, Component::Wal);
        assert_eq!(now[0].failures, 2);
        assert_eq!(
            now[0].error, "No space left on device (os error 28)",
            "the newest error"
        );
        f.succeeded(Component::Wal);
        f.succeeded(Component::Thresholds);
        let now = f.current();
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].component, Component::History);
    }
}
