//! The watermark: how far event time has surely progressed.
//!
//! watermark = min over *active* sources of (newest event time − allowed lateness). A source silent
//! (in processing time) for `idle_timeout` stops holding it back; when every source is idle the
//! watermark moves on with elapsed processing time from where the sources were last seen, so
//! windows still close without jumping a delayed feed over to the wall clock. Nothing moves before
//! the first record. It never goes back.

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
    /// Per source, a longer silence it may keep and still hold the watermark (ms; 0: none).
    #[serde(default)]
    max_delay_ms: Vec<i64>,
    /// Processing time of the first record of any source.
    #[serde(default)]
    first_seen: Option<i64>,
}

impl Watermark {
    /// A watermark with nothing seen yet.
    pub fn new(lateness_ms: i64, idle_ms: i64) -> Watermark {
        Watermark {
            sources: Vec::new(),
            lateness_ms,
            idle_ms,
            current: i64::MIN,
            max_delay_ms: Vec::new(),
            first_seen: None,
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
        self.first_seen.get_or_insert(now);
        let c = &mut self.sources[i];
        c.max_event = c.max_event.max(ts);
        c.last_seen = now;
        c.records += 1;
        c
    }

    /// Recomputes the watermark at processing time `now`; returns it (`i64::MIN`: none yet).
    ///
    /// Before any source has been seen nothing moves: the server cannot know which event time a
    /// feed that has not spoken yet lives in (a recorded night from a year ago, a carrier minutes
    /// behind). When every seen source is idle, event time moves on with elapsed processing time
    /// from where the sources were last seen — the newest (event time + time since its arrival)
    /// — so a feed's steady delay is kept rather than jumped over to the wall clock.
    pub fn advance(&mut self, now: i64) -> i64 {
        if let Some(t) = self.target(now) {
            self.current = self.current.max(t);
        }
        self.current
    }

    /// Whether [`advance`](Watermark::advance) at `now` would move the watermark.
    pub fn would_advance(&self, now: i64) -> bool {
        self.target(now).is_some_and(|t| t > self.current)
    }

    /// Where the sources put the watermark at `now`, before "it never goes back".
    fn target(&self, now: i64) -> Option<i64> {
        if self.awaiting(now) {
            return None;
        }
        let seen = || self.sources.iter().filter(|c| c.records > 0);
        let active = (0..self.sources.len())
            .filter(|&i| self.is_active(i, now))
            .map(|i| self.sources[i].max_event)
            .min();
        let newest = active.or_else(|| {
            seen()
                .map(|c| c.max_event.saturating_add(now.saturating_sub(c.last_seen).max(0)))
                .max()
        });
        newest.map(|t| t.saturating_sub(self.lateness_ms))
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

    /// Whether a configured delayed source (one with a `max_delay`) has not been seen yet and the
    /// run is younger than its `max_delay`: the server knows it is coming, so nothing closes
    /// before it could have arrived (a carrier minutes behind would otherwise find its first
    /// windows closed by the realtime feeds beside it).
    fn awaiting(&self, now: i64) -> bool {
        let Some(t0) = self.first_seen else { return false };
        self.max_delay_ms.iter().enumerate().any(|(i, &d)| {
            d > 0 && self.sources.get(i).is_none_or(|c| c.records == 0) && now.saturating_sub(t0) < d
        })
    }

    /// Whether a source is active (not idle) at `now`.
    pub fn is_active(&self, source: usize, now: i64) -> bool {
        let limit = self
            .idle_ms
            .max(self.max_delay_ms.get(source).copied().unwrap_or(0));
        self.sources
            .get(source)
            .is_some_and(|c| c.records > 0 && now.saturating_sub(c.last_seen) < limit)
    }

    /// Sets how long each source may be silent and still hold the watermark back (ms, by id).
    pub fn set_max_delays(&mut self, max_delay_ms: Vec<i64>) {
        self.max_delay_ms = max_delay_ms;
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
    fn with_every_source_idle_it_moves_on_with_elapsed_time_from_where_they_were() {
        let mut w = Watermark::new(5_000, 30_000);
        // A feed two minutes behind the clock goes quiet at processing time 200 s.
        w.observe(SourceId(0), 80_000, 200_000);
        w.observe(SourceId(1), 70_000, 190_000);
        // 100 s later: the newest position moved on by 100 s, the delay kept (not the clock's 295 s).
        assert_eq!(w.advance(300_000), 80_000 + 100_000 - 5_000);
    }

    #[test]
    fn a_configured_delayed_source_not_seen_yet_holds_it_back_for_its_max_delay() {
        let mut w = Watermark::new(5_000, 30_000);
        w.set_max_delays(vec![0, 0, 0, 90_000]);
        // Only the realtime source 2 has spoken; source 3 (max_delay 90 s) is expected.
        w.observe(SourceId(2), 1_000_000, 0);
        assert_eq!(
            w.advance(1_000),
            i64::MIN,
            "nothing closes before the carrier could arrive"
        );
        assert!(!w.would_advance(60_000));
        // It arrives three minutes behind: from then on it holds the watermark as any source.
        w.observe(SourceId(3), 820_000, 60_000);
        assert_eq!(w.advance(60_000), 815_000);
        // A configured source that never comes holds nothing after its max_delay.
        let mut w = Watermark::new(5_000, 30_000);
        w.set_max_delays(vec![0, 0, 0, 90_000]);
        w.observe(SourceId(2), 1_000_000, 0);
        w.observe(SourceId(2), 1_000_000, 91_000);
        assert_eq!(w.advance(91_000), 995_000);
    }

    #[test]
    fn a_source_with_a_max_delay_holds_it_back_through_its_batch_gaps_and_no_longer() {
        let mut w = Watermark::new(5_000, 8_000);
        w.set_max_delays(vec![0, 90_000]);
        w.observe(SourceId(0), 300_000, 300_000); // realtime app panel
        w.observe(SourceId(1), 120_000, 300_000); // a carrier 3 min behind, one batch a minute
        w.observe(SourceId(0), 360_000, 360_000);
        assert_eq!(
            w.advance(360_000),
            115_000,
            "60 s into its gap the carrier still holds it"
        );
        w.observe(SourceId(0), 400_000, 400_000);
        assert_eq!(
            w.advance(400_000),
            395_000,
            "after 100 s > max_delay it no longer does"
        );
    }

    #[test]
    fn nothing_moves_before_a_source_has_been_seen() {
        let mut w = Watermark::new(5_000, 30_000);
        assert_eq!(w.advance(1_000_000), i64::MIN);
        assert_eq!(w.get(), None);
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
