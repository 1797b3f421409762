//! The latest segment picture, recent history per segment, and the alert list, shared with the API.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::risk::{Alert, SegmentStatus};
use crate::scenario::SegmentMap;

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
    pub fn publish(&mut self, statuses: &[SegmentStatus], alerts: &[Alert]) {
        for s in statuses {
            let h = self.history.entry(s.id.0.clone()).or_default();
            h.push_back(s.clone());
            if h.len() > HISTORY {
                h.pop_front();
            }
        }
        self.latest = statuses.to_vec();
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
        self.latest.retain(|s| keep(s.id.as_str()));
    }
}

/// The board and the segments in force, as one handle the engine task writes and the API reads.
/// Cheap to clone; its locks are private and never held across an await.
#[derive(Debug, Clone)]
pub struct Picture {
    board: Arc<RwLock<Board>>,
    segments: Arc<RwLock<Arc<SegmentMap>>>,
}

impl Picture {
    /// An empty board over `segments`.
    pub fn new(segments: Arc<SegmentMap>) -> Picture {
        Picture {
            board: Arc::default(),
            segments: Arc::new(RwLock::new(segments)),
        }
    }

    fn board(&self) -> RwLockReadGuard<'_, Board> {
        self.board.read().unwrap_or_else(|p| p.into_inner())
    }

    fn board_mut(&self) -> RwLockWriteGuard<'_, Board> {
        self.board.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one evaluation.
    pub fn publish(&self, statuses: &[SegmentStatus], alerts: &[Alert]) {
        self.board_mut().publish(statuses, alerts);
    }

    /// The newest status of every segment.
    pub fn latest(&self) -> Vec<SegmentStatus> {
        self.board().latest().to_vec()
    }

    /// One segment's newest status.
    pub fn status(&self, id: &str) -> Option<SegmentStatus> {
        self.board().latest().iter().find(|s| s.id == *id).cloned()
    }

    /// A segment's recent statuses, oldest first.
    pub fn history(&self, id: &str) -> Vec<SegmentStatus> {
        self.board().history(id)
    }

    /// Alerts at or after `since` (epoch ms), newest first.
    pub fn alerts_since(&self, since: i64) -> Vec<Alert> {
        self.board().alerts_since(since)
    }

    /// The segments in force.
    pub fn segments(&self) -> Arc<SegmentMap> {
        self.segments.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in reloaded segments; the board forgets segments no longer in the file.
    pub fn replace_segments(&self, map: Arc<SegmentMap>) {
        let keep: std::collections::HashSet<String> = map.segments().iter().map(|s| s.id.0.clone()).collect();
        self.board_mut().retain(|id| keep.contains(id));
        *self.segments.write().unwrap_or_else(|p| p.into_inner()) = map;
    }
}
