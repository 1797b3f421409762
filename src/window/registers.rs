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
    /// Reset, backwards or implausible jump: new base, no count.
    Reset,
    /// Older than (or as old as) the last reading: ignored, the newer delta already covers it.
    OutOfOrder,
}

/// Last reading of every register seen.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Registers {
    last: FxHashMap<RegisterKey, Reading>,
    max_rate_per_s: f64,
    /// Readings taken as new bases after a reset or jump.
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
        let plausible = |new: u64, old: u64| new >= old && ((new - old) as f64) <= limit;
        let delta = if plausible(a, prev.a) && plausible(b, prev.b) {
            Delta::Counted(a - prev.a, b - prev.b)
        } else {
            self.resets += 1;
            Delta::Reset
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
        assert_eq!(r.resets, 1);
        assert_eq!(r.observe(K, 20_000, 40, 10), Delta::Counted(28, 7));
    }

    #[test]
    fn a_backwards_running_register_is_a_reset() {
        let mut r = Registers::new(50.0);
        r.observe(K, 0, 500, 500);
        assert_eq!(r.observe(K, 10_000, 499, 510), Delta::Reset);
    }

    #[test]
    fn an_implausible_jump_is_a_reset_not_a_huge_count() {
        let mut r = Registers::new(50.0);
        r.observe(K, 0, 10, 10);
        // 10 s at 50 p/s allows 500; a jump of 5 million is a replaced counter.
        assert_eq!(r.observe(K, 10_000, 5_000_010, 10), Delta::Reset);
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
