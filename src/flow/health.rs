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

/// Where one source stands against the open window the live picture shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceProgress {
    /// `lbs/<provider>`, `counter` or `gate`.
    pub source: String,
    /// `in`: it has reported up to where the picture stands (within a slide of the newest event
    /// time any source has reported, or past the window's end); `due`: behind that and still
    /// holding the watermark, its records for the window are still to come; `idle`: behind and
    /// silent past `idle_timeout` (and its `max_delay`), no longer waited for.
    pub state: &'static str,
    /// Newest event time it has reported (epoch ms).
    pub reported_to: i64,
    /// For `due`: when its records up to where the picture stands should arrive, from its median
    /// delay (ms from now; 0 when overdue; absent before its delay is known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_in_ms: Option<i64>,
}

/// Each seen source against the window ending at `window_end` (see [`SourceProgress`]).
pub fn progress(
    engine: &Engine,
    sources: &Sources,
    delays: &Delays,
    clocks: Clocks,
    window_end: i64,
) -> Vec<SourceProgress> {
    let wm = engine.watermark();
    let seen = || wm.sources().iter().enumerate().filter(|(_, c)| c.records > 0);
    // Where the picture stands: the newest event time reported, but never past the window.
    let Some(frontier) = seen().map(|(_, c)| c.max_event).max() else {
        return Vec::new();
    };
    let reference = frontier.min(window_end);
    let slack = engine.slide_ms();
    seen()
        .map(|(i, c)| {
            let state = if c.max_event >= reference - slack {
                "in"
            } else if wm.is_active(i, clocks.processing) {
                "due"
            } else {
                "idle"
            };
            // Its records for event time `reference` arrive about its delay after it (wall clock).
            let due_in_ms = (state == "due")
                .then(|| delays.quantile(i, 0.5))
                .flatten()
                .map(|d| (reference + d - clocks.wall).max(0));
            SourceProgress {
                source: sources.name(SourceId(i as u16)),
                state,
                reported_to: c.max_event,
                due_in_ms,
            }
        })
        .collect()
}

/// The two clocks health reads: lag is against the wall clock, silence against processing time
/// (which skips the time a restarted server was down).
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    /// The wall clock (ms).
    pub wall: i64,
    /// Processing time as the log stamps it (ms).
    pub processing: i64,
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
    /// How far processing time runs behind the wall clock (ms): the downtime a restart skipped.
    pub processing_offset_ms: i64,
    /// End of the open window the live picture shows (null before any record).
    pub open_window_end: Option<i64>,
    /// Each source against that window: which are in, which still due (see [`SourceProgress`]).
    pub open_window_sources: Vec<SourceProgress>,
    /// Each LBS source's people per device: configured, or learnt from zone headcounts.
    pub calibration: Vec<crate::risk::SourceCalibration>,
    /// The newest zone count calibration ignored, and why (null: none).
    pub calibration_note: Option<String>,
}

impl Health {
    /// The state of `engine` at `clocks`.
    pub fn of(
        engine: &Engine,
        sources: &Sources,
        delays: &Delays,
        clocks: Clocks,
        last_window_end: Option<i64>,
    ) -> Health {
        let (now, proc_now) = (clocks.wall, clocks.processing);
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
                active: engine.watermark().is_active(i, proc_now),
                records: c.records,
                late: c.late,
                delay_p50_ms: delays.quantile(i, 0.5),
                delay_p99_ms: delays.quantile(i, 0.99),
                last_arrival_age_ms: proc_now - c.last_seen,
            })
            .collect();
        Health {
            watermark: wm,
            watermark_lag_ms: wm.map(|w| now - w),
            sources: srcs,
            windows_closed: engine.stats().windows_closed,
            last_window_end,
            processing_offset_ms: clocks.wall - clocks.processing,
            open_window_end: engine.open_window_end(),
            open_window_sources: engine
                .open_window_end()
                .map(|end| progress(engine, sources, delays, clocks, end))
                .unwrap_or_default(),
            calibration: Vec::new(),
            calibration_note: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LbsConfig, RegisterConfig, WindowConfig};
    use crate::model::{Body, CellId, DeviceId, EventTime, Record};

    fn ping(source: u16, ts: i64, device: u64) -> Record {
        Record {
            ts: EventTime(ts),
            source: SourceId(source),
            cell: CellId(0x08b3_0995_8ac3_6fff),
            point: None,
            body: Body::Ping {
                device: DeviceId(device),
                pos: None,
            },
        }
    }

    #[test]
    fn a_provisional_window_says_which_sources_are_in_and_when_a_delayed_one_is_due() {
        let t0 = 1_767_193_200_000;
        let sources = Sources::new(&LbsConfig::default());
        let mut e = Engine::new(
            &WindowConfig::default(),
            &RegisterConfig::default(),
            sources.scales(),
        );
        let mut delays = Delays::default();
        // An app panel in real time (source 2) and a carrier three minutes behind (source 3),
        // both arriving at processing time `now`; a counter (source 0) that went quiet long ago.
        let now = t0 + 600_000;
        e.ingest(&ping(0, t0, 1), t0);
        for k in 0..30 {
            let ts = now - 30_000 + k * 1_000;
            e.ingest(&ping(2, ts, 100 + k as u64), now);
            delays.observe(SourceId(2), ts, now);
            e.ingest(&ping(3, ts - 180_000, 200 + k as u64), now);
            delays.observe(SourceId(3), ts - 180_000, now);
        }
        let end = e.open_window_end().unwrap();
        assert!(end > now - 1_000, "the open window holds the newest pane");
        let clocks = Clocks {
            wall: now,
            processing: now,
        };
        let p = progress(&e, &sources, &delays, clocks, end);
        let state = |p: &[SourceProgress], i: u16| {
            p.iter()
                .find(|x| x.source == sources.name(SourceId(i)))
                .unwrap()
                .clone()
        };
        assert_eq!(state(&p, 0).state, "idle", "behind and silent past idle_timeout");
        assert_eq!(
            state(&p, 2).state,
            "in",
            "the realtime panel is where the picture stands"
        );
        let carrier = state(&p, 3);
        assert_eq!(carrier.state, "due");
        let due = carrier.due_in_ms.unwrap();
        assert!((170_000..=200_000).contains(&due), "due in about 3 min: {due}");
        // Once the carrier has caught up it is in too.
        e.ingest(&ping(3, now - 2_000, 999), now);
        let p = progress(&e, &sources, &delays, clocks, end);
        assert_eq!(state(&p, 3).state, "in");
    }

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
