//! The hub: one broadcast of pipeline events; each viewer task encodes them for its subscription.
//!
//! A broadcast never blocks its sender, so a slow viewer can never slow ingest; a viewer that falls
//! behind skips to the newest frames (see `ws`).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;
use tokio::sync::broadcast;

use crate::flow::SourceProgress;
use crate::risk::{Alert, SegmentStatus};
use crate::window::HexWindow;

/// Events retained for viewers that are momentarily behind.
const CAPACITY: usize = 16;

/// What the pipeline publishes.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// A window's cells: final at close, provisional for the open window (with where each
    /// source stands against it; empty for final frames).
    Heatmap {
        window: Arc<HexWindow>,
        progress: Arc<Vec<SourceProgress>>,
        at: Instant,
    },
    /// Every segment after an evaluation.
    Segments {
        window_end: i64,
        segments: Arc<Vec<SegmentStatus>>,
        at: Instant,
    },
    /// A tier change.
    Alert { alert: Arc<Alert>, at: Instant },
    /// Someone acknowledged an alert (every screen marks it).
    Ack { ack: Arc<crate::live::Ack>, at: Instant },
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

/// The kinds of frame a viewer gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A window's cells.
    Heatmap = 0,
    /// Every segment after an evaluation.
    Segments = 1,
    /// A tier change.
    Alert = 2,
}

impl FrameKind {
    /// Every kind, in `Latency::by_type` order.
    pub const ALL: [FrameKind; 3] = [FrameKind::Heatmap, FrameKind::Segments, FrameKind::Alert];

    /// The frame's `type` (and metric label).
    pub const fn as_str(self) -> &'static str {
        match self {
            FrameKind::Heatmap => "heatmap",
            FrameKind::Segments => "segments",
            FrameKind::Alert => "alert",
        }
    }
}

/// The publish side, cloned into the HTTP layer for subscriptions.
#[derive(Debug, Clone)]
pub struct Hub {
    tx: broadcast::Sender<LiveEvent>,
    /// Per-type frame latency.
    pub latency: Arc<Latency>,
    /// Frames already encoded, shared by every viewer with the same view of the same event.
    encoded: Arc<Mutex<std::collections::VecDeque<Encoded>>>,
}

/// An encoded frame and what it was encoded from (held, so its address is not reused).
struct Encoded {
    key: FrameKey,
    _source: Arc<dyn std::any::Any + Send + Sync>,
    text: axum::extract::ws::Utf8Bytes,
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encoded({:?}, {} bytes)", self.key, self.text.len())
    }
}

/// What makes two viewers' frames identical: the event (by address), the view and k.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameKey {
    /// Address of the event's shared payload.
    pub source: usize,
    /// Resolution of the view.
    pub res: u8,
    /// Its bounding box.
    pub bbox: [f64; 4],
    /// Smallest count shown.
    pub k: u32,
}

/// Frames kept for sharing: one per distinct view of the newest few events.
const ENCODED_KEPT: usize = 16;

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: broadcast::channel(CAPACITY).0,
            latency: Arc::new(Latency::default()),
            encoded: Arc::default(),
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

    /// The frame for `key`, encoded once by `make` and then shared: a hundred viewers of the same
    /// window with the same view cost one encoding, not a hundred.
    pub fn frame(
        &self,
        key: FrameKey,
        source: Arc<dyn std::any::Any + Send + Sync>,
        make: impl FnOnce() -> String,
    ) -> axum::extract::ws::Utf8Bytes {
        // Held while encoding: viewers arriving meanwhile wait for this encoding instead of
        // repeating it.
        let Ok(mut cache) = self.encoded.lock() else {
            return make().into();
        };
        if let Some(e) = cache.iter().find(|e| e.key == key) {
            return e.text.clone();
        }
        let text: axum::extract::ws::Utf8Bytes = make().into();
        if cache.len() >= ENCODED_KEPT {
            cache.pop_front();
        }
        cache.push_back(Encoded {
            key,
            _source: source,
            text: text.clone(),
        });
        text
    }

    /// Records a frame's latency (the hdrhistogram for `/api/health`, the Prometheus histogram
    /// for `/metrics`).
    pub fn record(&self, kind: FrameKind, at: Instant) {
        let elapsed = at.elapsed();
        let us = elapsed.as_micros().clamp(1, 60_000_000) as u64;
        if let Ok(mut h) = self.latency.by_type[kind as usize].lock() {
            let _ = h.record(us);
        }
        metrics::histogram!("throng_frame_latency_seconds", "type" => kind.as_str())
            .record(elapsed.as_secs_f64());
    }

    /// Frame latency quantiles (milliseconds) and counts per frame type, for people reading
    /// `/api/health`; machines read the histogram on `/metrics`.
    pub fn latency_summary(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for kind in FrameKind::ALL {
            let Ok(h) = self.latency.by_type[kind as usize].lock() else {
                continue;
            };
            let q = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0);
            out.insert(
                kind.as_str().to_owned(),
                serde_json::json!({"frames": h.len(), "p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999)}),
            );
        }
        serde_json::Value::Object(out)
    }
}
