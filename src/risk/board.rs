//! The latest segment picture, recent history per segment, and the alert list, shared with the API.

use std::collections::{HashMap, VecDeque};

use super::evaluate::{Alert, SegmentStatus};

/// Evaluations kept per segment (an hour at a 10 s slide).
const HISTORY: usize = 360;
/// Alerts kept in memory (all are also appended to `alerts.ndjson` in the data dir).
const ALERTS: usize = 10_000;

/// What the API shows.
#[derive(Debug, Default)]
pub struct Board {
    latest: Vec<SegmentStatus>,
    history: HashMap<String, VecDeque<SegmentStatus>>,
    alerts: VecDeque<Alert>,
}

impl Board {
    /// Records one evaluation.
    pub fn publish(&mut self, statuses: Vec<SegmentStatus>, alerts: &[Alert]) {
        for s in &statuses {
            let h = self.history.entry(s.id.clone()).or_default();
            h.push_back(s.clone());
            if h.len() > HISTORY {
                h.pop_front();
            }
        }
        self.latest = statuses;
        for a in alerts {
            self.alerts.push_back(a.clone());
            if self.alerts.len() > ALERTS {
                self.alerts.pop_front();
            }
        }
    }

    /// The newest status of every segment.
    pub fn latest(&self) -> &[SegmentStatus] {
        &self.latest
    }

    /// A segment's recent statuses, oldest first.
    pub fn history(&self, id: &str) -> Vec<SegmentStatus> {
        self.history
            .get(id)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Alerts at or after `since` (epoch ms), newest first.
    pub fn alerts_since(&self, since: i64) -> Vec<Alert> {
        self.alerts
            .iter()
            .rev()
            .filter(|a| a.ts >= since)
            .cloned()
            .collect()
    }

    /// Forgets segments no longer in the file.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.history.retain(|k, _| keep(k));
        self.latest.retain(|s| keep(&s.id));
    }
}
