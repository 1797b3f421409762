//! The engine's state as `/api/health` shows it: the watermark, and per source its newest event
//! time, lag, activity and late count.

use serde::Serialize;

use crate::ingest::Sources;
use crate::model::SourceId;
use crate::window::Engine;

/// One source's state, for `/api/health`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceHealth {
    /// `lbs/<provider>`, `counter` or `gate`.
    pub source: String,
    /// Newest event time (epoch ms).
    pub max_event_time: i64,
    /// How far the newest event time trails the wall clock (ms).
    pub lag_ms: i64,
    /// False once silent for `idle_timeout`: it no longer holds the watermark back.
    pub active: bool,
    /// Records accepted.
    pub records: u64,
    /// Late records.
    pub late: u64,
}

/// The engine's state, published every tick.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Health {
    /// Watermark (epoch ms; null before any data).
    pub watermark: Option<i64>,
    /// Wall clock minus watermark (ms).
    pub watermark_lag_ms: Option<i64>,
    /// Per source.
    pub sources: Vec<SourceHealth>,
    /// Windows closed since start.
    pub windows_closed: u64,
    /// End of the newest closed window.
    pub last_window_end: Option<i64>,
}

impl Health {
    /// The state of `engine` at wall-clock `now`.
    pub fn of(engine: &Engine, sources: &Sources, now: i64, last_window_end: Option<i64>) -> Health {
        let wm = engine.watermark().get();
        let srcs = engine
            .watermark()
            .sources()
            .iter()
            .enumerate()
            .filter(|(_, c)| c.records > 0)
            .map(|(i, c)| SourceHealth {
                source: sources.name(SourceId(i as u16)),
                max_event_time: c.max_event,
                lag_ms: now - c.max_event,
                active: engine.watermark().is_active(i, now),
                records: c.records,
                late: c.late,
            })
            .collect();
        Health {
            watermark: wm,
            watermark_lag_ms: wm.map(|w| now - w),
            sources: srcs,
            windows_closed: engine.stats().windows_closed,
            last_window_end,
        }
    }
}
