//! The hub: one broadcast of pipeline events; each viewer task encodes them for its subscription.
//!
//! A broadcast never blocks its sender, so a slow viewer can never slow ingest; a viewer that falls
//! behind skips to the newest frames (see `ws`).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;
use tokio::sync::broadcast;

use crate::risk::{Alert, SegmentStatus};
use crate::window::HexWindow;

/// Events retained for viewers that are momentarily behind.
const CAPACITY: usize = 16;

/// What the pipeline publishes.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// A window's cells: final at close, provisional for the open window.
    Heatmap { window: Arc<HexWindow>, at: Instant },
    /// Every segment after an evaluation.
    Segments {
        window_end: i64,
        segments: Arc<Vec<SegmentStatus>>,
        at: Instant,
    },
    /// A tier change.
    Alert { alert: Arc<Alert>, at: Instant },
}

/// Frame latency (publish → written to the socket), microseconds, per frame type.
#[derive(Debug)]
pub struct Latency {
    /// heatmap, segments, alert.
    pub by_type: [Mutex<Histogram<u64>>; 3],
}

impl Default for Latency {
    fn default() -> Self {
        let h = || {
            Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3)
                    .unwrap_or_else(|_| Histogram::new(3).expect("3 sigfig")),
            )
        };
        Latency {
            by_type: [h(), h(), h()],
        }
    }
}

/// Frame type names, in `Latency::by_type` order.
pub const FRAME_TYPES: [&str; 3] = ["heatmap", "segments", "alert"];

/// The publish side, cloned into the HTTP layer for subscriptions.
#[derive(Debug, Clone)]
pub struct Hub {
    tx: broadcast::Sender<LiveEvent>,
    /// Per-type frame latency.
    pub latency: Arc<Latency>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: broadcast::channel(CAPACITY).0,
            latency: Arc::new(Latency::default()),
        }
    }
}

impl Hub {
    /// Publishes to every viewer (no-op without viewers).
    pub fn publish(&self, e: LiveEvent) {
        let _ = self.tx.send(e);
    }

    /// A new viewer's receiver.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.tx.subscribe()
    }

    /// Records a frame's latency.
    pub fn record(&self, kind: usize, at: Instant) {
        let us = at.elapsed().as_micros().clamp(1, 60_000_000) as u64;
        if let Ok(mut h) = self.latency.by_type[kind].lock() {
            let _ = h.record(us);
        }
    }

    /// Prometheus lines for the latency quantiles.
    pub fn render_latency(&self) -> String {
        let mut out = String::from(
            "# HELP throng_frame_latency_seconds Window close (or snapshot) to frame written, by frame type.\n# TYPE throng_frame_latency_seconds gauge\n",
        );
        for (i, name) in FRAME_TYPES.iter().enumerate() {
            let Ok(h) = self.latency.by_type[i].lock() else {
                continue;
            };
            for q in [0.5, 0.99, 0.999] {
                let v = if h.is_empty() {
                    0.0
                } else {
                    h.value_at_quantile(q) as f64 / 1e6
                };
                out.push_str(&format!(
                    "throng_frame_latency_seconds{{type=\"{name}\",quantile=\"{q}\"}} {v}\n"
                ));
            }
            out.push_str(&format!(
                "throng_frame_latency_count{{type=\"{name}\"}} {}\n",
                h.len()
            ));
        }
        out
    }
}
