//! The engine's state as `/api/health` shows it: the watermark, and per source its newest event
//! time, lag, activity and late count.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::ingest::Sources;
use crate::model::SourceId;
use crate::window::Engine;

/// Longest delay told apart: a week (a recorded night replayed later is "a week late", not more).
const MAX_DELAY_MS: u64 = 7 * 86_400_000;

/// How late each source's records arrive: arrival (processing time) − event time, per source.
/// Feeds are late by design (carrier signalling arrives in batches minutes after the fact), and
/// an operator has to see how late before trusting the newest window.
#[derive(Debug, Default)]
pub struct Delays {
    by_source: Vec<Option<Histogram<u64>>>,
}

impl Delays {
    /// Notes one record of `source` with event time `ts` arriving at `now` (ms; early counts 0).
    pub fn observe(&mut self, source: SourceId, ts: i64, now: i64) {
        let i = source.0 as usize;
        if i >= self.by_source.len() {
            self.by_source.resize_with(i + 1, || None);
        }
        let h = self.by_source[i]
            .get_or_insert_with(|| Histogram::new_with_bounds(1, MAX_DELAY_MS, 2).expect("valid bounds"));
        let ms = u64::try_from(now.saturating_sub(ts))
            .unwrap_or(0)
            .clamp(1, MAX_DELAY_MS);
        let _ = h.record(ms);
    }

    /// The `q` quantile of `source`'s delays (ms), if it has any.
    pub fn quantile(&self, source: usize, q: f64) -> Option<i64> {
        let h = self.by_source.get(source)?.as_ref()?;
        (!h.is_empty()).then(|| h.value_at_quantile(q) as i64)
    }
}

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
    /// Arrival − event time, median (ms), since start; null offline.
    pub delay_p50_ms: Option<i64>,
    /// Arrival − event time, 99th percentile (ms).
    pub delay_p99_ms: Option<i64>,
    /// Processing time since its last record arrived (ms).
    pub last_arrival_age_ms: i64,
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
    pub fn of(
        engine: &Engine,
        sources: &Sources,
        delays: &Delays,
        now: i64,
        last_window_end: Option<i64>,
    ) -> Health {
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
                delay_p50_ms: delays.quantile(i, 0.5),
                delay_p99_ms: delays.quantile(i, 0.99),
                last_arrival_age_ms: now - c.last_seen,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_kept_per_source_and_early_records_count_as_on_time() {
        let mut d = Delays::default();
        for i in 0..100 {
            d.observe(SourceId(3), 1_000_000, 1_000_000 + 180_000 + i);
        }
        d.observe(SourceId(0), 2_000_000, 1_999_000);
        let p50 = d.quantile(3, 0.5).unwrap();
        assert!((178_000..=182_000).contains(&p50), "{p50}");
        assert_eq!(
            d.quantile(0, 0.5),
            Some(1),
            "a record from the future is not negative delay"
        );
        assert_eq!(d.quantile(1, 0.5), None, "a source never seen has no delay");
        assert_eq!(d.quantile(9, 0.5), None);
    }
}
