//! The flow's live output: every evaluation to the board the API reads, and as frames to viewers
//! (alerts first, then the segments, then the heatmap); the open window as provisional heatmaps.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::{Hub, LiveEvent, Picture};
use crate::flow::{Closed, Outputs, SourceProgress, WindowKind};
use crate::window::HexWindow;

/// Publishes to viewers and the board.
pub struct Publisher {
    hub: Hub,
    picture: Picture,
    latest: watch::Sender<Option<Arc<HexWindow>>>,
}

impl Publisher {
    /// A publisher to `hub` and `picture`; `latest` always holds the newest closed window.
    pub fn new(hub: Hub, picture: Picture, latest: watch::Sender<Option<Arc<HexWindow>>>) -> Publisher {
        Publisher { hub, picture, latest }
    }

    /// End of the newest closed window.
    pub fn last_window_end(&self) -> Option<i64> {
        self.latest.borrow().as_ref().map(|w| w.end.0)
    }
}

impl Outputs for Publisher {
    fn closed(&mut self, c: &Closed<'_>) {
        let at = Instant::now();
        for a in c.alerts {
            self.hub.publish(LiveEvent::Alert {
                alert: Arc::new(a.clone()),
                at,
            });
        }
        if !c.statuses.is_empty() {
            self.hub.publish(LiveEvent::Segments {
                window_end: c.window.end.0,
                segments: c.statuses.clone(),
                at,
            });
        }
        self.picture.publish(c.statuses, c.alerts);
        if c.kind == WindowKind::Data {
            self.hub.publish(LiveEvent::Heatmap {
                window: c.window.clone(),
                progress: Arc::default(),
                at: Instant::now(),
            });
            self.latest.send_replace(Some(c.window.clone()));
        }
    }

    fn provisional(&mut self, snapshot: HexWindow, progress: Vec<SourceProgress>) {
        self.hub.publish(LiveEvent::Heatmap {
            window: Arc::new(snapshot),
            progress: Arc::new(progress),
            at: Instant::now(),
        });
    }
}
