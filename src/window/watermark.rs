//! The watermark: how far event time has surely progressed.
//!
//! watermark = min over *active* sources of (newest event time − allowed lateness). A source silent
//! (in processing time) for `idle_timeout` stops holding it back; when every source is idle the
//! watermark follows the clock minus allowed lateness, so windows still close. It never goes back.

use crate::model::SourceId;

/// What the engine knows about one source.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct SourceClock {
    /// Newest event time seen (ms).
    pub max_event: i64,
    /// Processing time of its last record (ms).
    pub last_seen: i64,
    /// Records accepted from it.
    pub records: u64,
    /// Of those, late ones (they missed at least one closed window).
    pub late: u64,
}

/// Per-source clocks and the combined watermark.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Watermark {
    sources: Vec<SourceClock>,
    lateness_ms: i64,
    idle_ms: i64,
    current: i64,
}

impl Watermark {
    /// A watermark with nothing seen yet.
    pub fn new(lateness_ms: i64, idle_ms: i64) -> Watermark {
        Watermark {
            sources: Vec::new(),
            lateness_ms,
            idle_ms,
            current: i64::MIN,
        }
    }

    /// Notes a record from `source` with event time `ts`, seen at processing time `now`.
    pub fn observe(&mut self, source: SourceId, ts: i64, now: i64) -> &mut SourceClock {
        let i = source.0 as usize;
        if i >= self.sources.len() {
            self.sources.resize(
                i + 1,
                SourceClock {
                    max_event: i64::MIN,
                    ..Default::default()
                },
            );
        }
        let c = &mut self.sources[i];
        c.max_event = c.max_event.max(ts);
        c.last_seen = now;
        c.records += 1;
        c
    }

    /// Recomputes the watermark at processing time `now`; returns it.
    pub fn advance(&mut self, now: i64) -> i64 {
        let active = self
            .sources
            .iter()
            .filter(|c| c.records > 0 && now.saturating_sub(c.last_seen) < self.idle_ms)
            .map(|c| c.max_event)
            .min();
        let candidate = active.unwrap_or(now).saturating_sub(self.lateness_ms);
        self.current = self.current.max(candidate);
        self.current
    }

    /// Moves the watermark to at least `to` (end of input).
    pub fn force(&mut self, to: i64) {
        self.current = self.current.max(to);
    }

    /// The current watermark (ms), None before it has been set. (Kept as `i64::MIN` inside:
    /// that is how checkpoints already on disk spell "not yet".)
    pub fn get(&self) -> Option<i64> {
        (self.current != i64::MIN).then_some(self.current)
    }

    /// Every source's clock, indexed by `SourceId`.
    pub fn sources(&self) -> &[SourceClock] {
        &self.sources
    }

    /// Every source's clock, mutable (the engine counts late records there).
    pub fn sources_mut(&mut self) -> &mut [SourceClock] {
        &mut self.sources
    }

    /// Whether a source is active (not idle) at `now`.
    pub fn is_active(&self, source: usize, now: i64) -> bool {
        self.sources
            .get(source)
            .is_some_and(|c| c.records > 0 && now.saturating_sub(c.last_seen) < self.idle_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_waits_for_the_slowest_active_source() {
        let mut w = Watermark::new(5_000, 30_000);
        w.observe(SourceId(0), 100_000, 0);
        w.observe(SourceId(1), 60_000, 0);
        assert_eq!(w.advance(1_000), 55_000);
    }

    #[test]
    fn an_idle_source_stops_holding_it_back() {
        let mut w = Watermark::new(5_000, 30_000);
        w.observe(SourceId(0), 60_000, 0);
        w.observe(SourceId(1), 100_000, 0);
        assert_eq!(w.advance(10_000), 55_000);
        w.observe(SourceId(1), 140_000, 40_000);
        assert_eq!(
            w.advance(40_000),
            135_000,
            "source 0 silent for 40 s > idle timeout"
        );
    }

    #[test]
    fn with_every_source_idle_it_follows_the_clock() {
        let mut w = Watermark::new(5_000, 30_000);
        w.observe(SourceId(0), 60_000, 0);
        assert_eq!(w.advance(100_000), 95_000);
    }

    #[test]
    fn it_never_goes_back() {
        let mut w = Watermark::new(5_000, 30_000);
        w.observe(SourceId(0), 100_000, 0);
        assert_eq!(w.advance(0), 95_000);
        w.observe(SourceId(1), 10_000, 1);
        assert_eq!(w.advance(1), 95_000);
    }
}
