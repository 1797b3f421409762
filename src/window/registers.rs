//! Cumulative registers (Xovis-style running totals, MTA-style audits) turned into per-period deltas.
//!
//! A register that resets, runs backwards or jumps faster than people can walk must never produce a
//! negative or huge count: the reading becomes the new base and the event is counted in `resets`.

use rustc_hash::FxHashMap;

use crate::model::RegisterKey;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Reading {
    ts: i64,
    a: u64,
    b: u64,
}

/// What became of one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta {
    /// First reading of this register: a base, no count.
    Baseline,
    /// People counted since the previous reading (both directions).
    Counted(u64, u64),
    /// Both directions reset, ran backwards or jumped: new base, no count. (One direction alone
    /// is re-based inside a `Counted`, with 0 for it.)
    Reset,
    /// Older than (or as old as) the last reading: ignored, the newer delta already covers it.
    OutOfOrder,
}

/// Last reading of every register seen.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Registers {
    last: FxHashMap<RegisterKey, Reading>,
    max_rate_per_s: f64,
    /// Directions re-based after a reset, a backwards step or a jump (a reading can count two).
    pub resets: u64,
    /// Readings ignored for arriving out of order.
    pub out_of_order: u64,
}

impl Registers {
    /// Estimated heap bytes of the register table.
    pub fn state_bytes(&self) -> usize {
        let cap = self.last.capacity();
        if cap == 0 {
            return 0;
        }
        (cap * 8 / 7).next_power_of_two() * (std::mem::size_of::<(RegisterKey, Reading)>() + 1)
    }

    /// A register table allowing at most `max_rate_per_s` people per second per direction.
    pub fn new(max_rate_per_s: f64) -> Registers {
        Registers {
            max_rate_per_s,
            ..Default::default()
        }
    }

    /// Differences a reading `(a, b)` taken at `ts` against the register's previous one.
    pub fn observe(&mut self, key: RegisterKey, ts: i64, a: u64, b: u64) -> Delta {
        let now = Reading { ts, a, b };
        let Some(prev) = self.last.get_mut(&key) else {
            self.last.insert(key, now);
            return Delta::Baseline;
        };
        if ts <= prev.ts {
            self.out_of_order += 1;
            return Delta::OutOfOrder;
        }
        let dt_s = ((ts - prev.ts) as f64 / 1000.0).max(1.0);
        let limit = self.max_rate_per_s * dt_s;
        // Each direction is its own register: one that runs backwards (a known MTA fault) or
        // jumps is re-based alone, and the other's count stands. Taking the whole reading as a
        // reset lost every entry of a turnstile whose exit register ran backwards.
        let step = |new: u64, old: u64| (new >= old && ((new - old) as f64) <= limit).then(|| new - old);
        let delta = match (step(a, prev.a), step(b, prev.b)) {
            (Some(da), Some(db)) => Delta::Counted(da, db),
            (Some(da), None) => {
                self.resets += 1;
                Delta::Counted(da, 0)
            }
            (None, Some(db)) => {
                self.resets += 1;
                Delta::Counted(0, db)
            }
            (None, None) => {
                self.resets += 2;
                Delta::Reset
            }
        };
        *prev = now;
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: RegisterKey = RegisterKey(7);

    #[test]
    fn consecutive_readings_are_differenced() {
        let mut r = Registers::new(50.0);
        assert_eq!(r.observe(K, 0, 100, 50), Delta::Baseline);
        assert_eq!(r.observe(K, 10_000, 130, 55), Delta::Counted(30, 5));
        assert_eq!(r.observe(K, 20_000, 130, 60), Delta::Counted(0, 5));
    }

    #[test]
    fn a_reset_register_becomes_a_new_base_never_negative() {
        let mut r = Registers::new(50.0);
        r.observe(K, 0, 103_422, 99_813);
        assert_eq!(r.observe(K, 10_000, 12, 3), Delta::Reset);
        assert_eq!(r.resets, 2, "both directions re-based");
        assert_eq!(r.observe(K, 20_000, 40, 10), Delta::Counted(28, 7));
    }

    #[test]
    fn a_backwards_running_register_is_rebased_alone_and_the_other_direction_still_counts() {
        let mut r = Registers::new(50.0);
        r.observe(K, 0, 500, 500);
        // Entries ran backwards: exits' 10 still count.
        assert_eq!(r.observe(K, 10_000, 499, 510), Delta::Counted(0, 10));
        assert_eq!(r.resets, 1);
        // An exit register that keeps running backwards never costs the entries.
        assert_eq!(r.observe(K, 20_000, 530, 505), Delta::Counted(31, 0));
        assert_eq!(r.observe(K, 30_000, 560, 501), Delta::Counted(30, 0));
        assert_eq!(r.resets, 3);
        assert_eq!(
            r.observe(K, 40_000, 1, 1),
            Delta::Reset,
            "both reset: a replaced counter"
        );
        assert_eq!(r.resets, 5);
    }

    #[test]
    fn an_implausible_jump_is_a_reset_not_a_huge_count() {
        let mut r = Registers::new(50.0);
        r.observe(K, 0, 10, 10);
        // 10 s at 50 p/s allows 500; a jump of 5 million is a replaced counter.
        assert_eq!(r.observe(K, 10_000, 5_000_010, 10), Delta::Counted(0, 0));
        assert_eq!(r.observe(K, 20_000, 5_000_110, 20), Delta::Counted(100, 10));
    }

    #[test]
    fn an_older_reading_is_ignored() {
        let mut r = Registers::new(50.0);
        r.observe(K, 0, 10, 10);
        r.observe(K, 20_000, 30, 10);
        assert_eq!(r.observe(K, 10_000, 20, 10), Delta::OutOfOrder);
        assert_eq!(r.out_of_order, 1);
        assert_eq!(r.observe(K, 30_000, 31, 10), Delta::Counted(1, 0));
    }
}
