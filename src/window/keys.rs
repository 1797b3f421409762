//! The idempotency keys a closed pane leaves behind, held for `window.resend_horizon` so a re-sent
//! record is recognised as counted rather than taken as late.
//!
//! They were a sorted `Vec<u64>`: 8 bytes a record for ten minutes, the largest part of the
//! window state that grows with time (issue 20). A pane's keys are now held as fingerprints of
//! 32 + b bits, b chosen so that a bucket holds ~16 keys: the top b bits pick the bucket (a
//! 4-byte offset per bucket, a quarter byte a key) and the next 32 bits are stored. That is ~4.3
//! bytes a key. The price: a record that is *not* a duplicate matches a stored fingerprint with
//! probability ~(keys in its bucket) / 2³², about 4e-9 per look-up — and only late records and
//! re-sends ever look here (a false match files a late record as a duplicate: it was too late for
//! every window, so no window changes).
//! The full 64-bit keys (a hash) already had a chance of ~keys / 2⁶⁴.

use serde::{Deserialize, Serialize};

/// One closed pane's keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "KeysForm", into = "KeysForm")]
pub struct ClosedKeys {
    /// Bucket bits (b).
    bits: u32,
    /// Where each bucket's fingerprints start in `low`; one more entry than buckets.
    starts: Vec<u32>,
    /// Each key's 32 bits after the bucket's, sorted within its bucket.
    low: Vec<u32>,
    /// Keys added after the pane closed (late records sent twice), full and sorted.
    extra: Vec<u64>,
}

/// Keys per bucket aimed at: the bucket offsets cost 4 / `PER_BUCKET` bytes a key.
const PER_BUCKET: usize = 16;

impl ClosedKeys {
    /// Holds `keys` (sorted, as a pane leaves them).
    pub fn new(keys: &[u64]) -> ClosedKeys {
        debug_assert!(keys.is_sorted());
        let bits = (keys.len() / PER_BUCKET).max(1).ilog2().min(31);
        ClosedKeys::with_bits(bits, keys.iter().copied())
    }

    /// Holds `keys` in any order (a closing pane's): bucketed by a counting pass and each bucket's
    /// ~16 sorted alone, not the whole list sorted (2 % of a replay, issue 20). The same as `new`
    /// of the sorted keys; a key given twice is held once.
    pub fn from_keys(keys: Vec<u64>) -> ClosedKeys {
        let bits = (keys.len() / PER_BUCKET).max(1).ilog2().min(31);
        let buckets = 1usize << bits;
        let mut starts = vec![0u32; buckets + 1];
        for &k in &keys {
            starts[split(bits, k).0 + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut low = vec![0u32; keys.len()];
        let mut next: Vec<u32> = starts[..buckets].to_vec();
        for &k in &keys {
            let (b, l) = split(bits, k);
            low[next[b] as usize] = l;
            next[b] += 1;
        }
        // Sort each bucket; drop repeats, closing the gaps they leave.
        let mut w = 0usize;
        for b in 0..buckets {
            let (from, to) = (starts[b] as usize, starts[b + 1] as usize);
            low[from..to].sort_unstable();
            starts[b] = w as u32;
            let mut last = None;
            for r in from..to {
                if last != Some(low[r]) {
                    last = Some(low[r]);
                    low[w] = low[r];
                    w += 1;
                }
            }
        }
        starts[buckets] = w as u32;
        low.truncate(w);
        ClosedKeys {
            bits,
            starts,
            low,
            extra: Vec::new(),
        }
    }

    fn with_bits(bits: u32, sorted: impl Iterator<Item = u64>) -> ClosedKeys {
        let mut starts = vec![0u32; (1usize << bits) + 1];
        let mut low = Vec::with_capacity(sorted.size_hint().0);
        for k in sorted {
            let (b, l) = split(bits, k);
            low.push(l);
            starts[b + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        ClosedKeys {
            bits,
            starts,
            low,
            extra: Vec::new(),
        }
    }

    /// Whether `key` is (most probably, see the module's note) one of the pane's.
    pub fn contains(&self, key: u64) -> bool {
        if self.extra.binary_search(&key).is_ok() {
            return true;
        }
        if self.low.is_empty() {
            return false;
        }
        let (b, l) = split(self.bits, key);
        let (from, to) = (self.starts[b] as usize, self.starts[b + 1] as usize);
        self.low[from..to].binary_search(&l).is_ok()
    }

    /// Adds a key after the pane closed.
    pub fn insert(&mut self, key: u64) {
        if let Err(i) = self.extra.binary_search(&key) {
            self.extra.insert(i, key);
        }
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        self.starts.capacity() * 4 + self.low.capacity() * 4 + self.extra.capacity() * 8
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.low.len() + self.extra.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A key's bucket and the 32 bits after the bucket's.
#[inline]
fn split(bits: u32, key: u64) -> (usize, u32) {
    let bucket = key.checked_shr(64 - bits).unwrap_or(0) as usize;
    (bucket, (key << bits >> 32) as u32)
}

/// How a checkpoint holds closed keys: the full keys a checkpoint written before fingerprints holds
/// (read as they are), or the fingerprints with their bucket bits.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum KeysForm {
    Full(Vec<u64>),
    Fingerprints {
        bits: u32,
        /// Each fingerprint as the top bits of a key (the rest zero), sorted.
        prints: Vec<u64>,
        extra: Vec<u64>,
    },
}

impl From<KeysForm> for ClosedKeys {
    fn from(f: KeysForm) -> ClosedKeys {
        match f {
            KeysForm::Full(mut keys) => {
                keys.sort_unstable();
                ClosedKeys::new(&keys)
            }
            KeysForm::Fingerprints {
                bits,
                mut prints,
                mut extra,
            } => {
                prints.sort_unstable();
                extra.sort_unstable();
                extra.dedup();
                let mut k = ClosedKeys::with_bits(bits.min(31), prints.into_iter());
                k.extra = extra;
                k
            }
        }
    }
}

impl From<ClosedKeys> for KeysForm {
    fn from(k: ClosedKeys) -> KeysForm {
        let mut prints = Vec::with_capacity(k.low.len());
        for b in 0..k.starts.len() - 1 {
            let top = (b as u64).checked_shl(64 - k.bits).unwrap_or(0);
            for &l in &k.low[k.starts[b] as usize..k.starts[b + 1] as usize] {
                prints.push(top | ((l as u64) << 32 >> k.bits));
            }
        }
        KeysForm::Fingerprints {
            bits: k.bits,
            prints,
            extra: k.extra,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize, seed: u64) -> Vec<u64> {
        let mut x = seed;
        let mut v: Vec<u64> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            })
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn keys_in_any_order_make_the_same_fingerprints_as_sorted_ones() {
        for n in [0, 1, 15, 16, 17, 1_000, 100_000] {
            let sorted = keys(n, 0x2545_f491_4f6c_dd1d);
            let mut shuffled = sorted.clone();
            // A fixed shuffle: reverse, then swap by a stride.
            shuffled.reverse();
            for i in (0..n).step_by(7) {
                shuffled.swap(i, (i * 31 + 3) % n.max(1));
            }
            assert_eq!(
                ClosedKeys::from_keys(shuffled),
                ClosedKeys::new(&sorted),
                "{n} keys"
            );
        }
        // A key given twice is held once, and every key is still found.
        let held = keys(5_000, 7);
        let mut twice = held.clone();
        twice.extend_from_slice(&held[..100]);
        twice.reverse();
        let k = ClosedKeys::from_keys(twice);
        assert_eq!(k.len(), 5_000);
        assert!(held.iter().all(|&x| k.contains(x)));
    }

    #[test]
    fn every_key_held_is_found_others_almost_never_and_a_checkpoint_keeps_them() {
        for n in [0, 1, 15, 16, 17, 1_000, 100_000] {
            let held = keys(n, 0x2545_f491_4f6c_dd1d);
            let mut k = ClosedKeys::new(&held);
            assert_eq!(k.len(), n);
            assert!(
                held.iter().all(|&x| k.contains(x)),
                "{n} keys: one held not found"
            );
            let others = keys(200_000, 0x9e37_79b9_7f4a_7c15);
            let false_matches = others.iter().filter(|&&x| k.contains(x)).count();
            assert!(
                false_matches <= 1,
                "{n} keys: {false_matches} of 200,000 others matched"
            );
            if n > 1_000 {
                let bytes = k.bytes() as f64 / n as f64;
                assert!(bytes < 4.6, "{n} keys: {bytes:.2} bytes a key");
            }
            // A late record's key added after close, then through a checkpoint.
            k.insert(others[7]);
            k.insert(others[7]);
            assert!(k.contains(others[7]));
            let back: ClosedKeys = serde_json::from_str(&serde_json::to_string(&k).unwrap()).unwrap();
            assert_eq!(back, k, "{n} keys through a checkpoint");
        }
    }

    #[test]
    fn a_checkpoint_written_with_full_keys_still_loads() {
        let held = keys(5_000, 7);
        let old = serde_json::to_string(&held).unwrap();
        let k: ClosedKeys = serde_json::from_str(&old).unwrap();
        assert!(held.iter().all(|&x| k.contains(x)));
        assert_eq!(k, ClosedKeys::new(&held));
    }
}
