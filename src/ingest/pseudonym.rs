//! Device pseudonyms: a keyed hash (SipHash-2-4, a PRF) of the provider's device string.
//!
//! The 128-bit key is derived from the configured `privacy.hash_key` with BLAKE3's key derivation, so
//! a short passphrase still yields a full-width key. Without the key a pseudonym cannot be linked back.
//!
//! Rotation: with `privacy.rotate` set (daily by default) the key used for a record is derived from
//! the secret and the rotation period its *event time* falls in, so one phone has a different
//! pseudonym each period and pseudonyms of different periods cannot be linked without the secret.
//! The price: a window that straddles a rotation instant (UTC midnight for daily) sees a device that
//! pinged on both sides as two devices — at most a window's worth of double counting, once a day.

use std::cell::Cell;
use std::hash::Hasher;

use siphasher::sip::SipHasher24;

use crate::model::DeviceId;

/// (secret key halves, period number) → that period's key halves.
type PeriodKeys = ([u64; 3], (u64, u64));

thread_local! {
    /// The keys of the period last used on this thread, by (secret key, period number): deriving
    /// them costs two SipHash runs, twice the pseudonym itself, and a feed's records share a period.
    static PERIOD_KEYS: Cell<Option<PeriodKeys>> = const { Cell::new(None) };
}

/// Turns device strings into pseudonyms.
#[derive(Clone)]
pub struct Pseudonymiser {
    k0: u64,
    k1: u64,
    /// Rotation period in ms (0: never rotate).
    period_ms: i64,
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymiser(<key hidden>)")
    }
}

impl Pseudonymiser {
    /// Derives the hash key from the configured secret.
    pub fn new(secret: &str) -> Self {
        let key = blake3::derive_key("throng 2026 device pseudonym v1", secret.as_bytes());
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(&key[..8]);
        k1.copy_from_slice(&key[8..16]);
        Pseudonymiser {
            k0: u64::from_le_bytes(k0),
            k1: u64::from_le_bytes(k1),
            period_ms: 0,
        }
    }

    /// Rotates the key every `period_ms` of event time (0: never).
    pub fn rotating(mut self, period_ms: i64) -> Self {
        self.period_ms = period_ms.max(0);
        self
    }

    /// The pseudonym of a device string, ignoring rotation (the period holding event time 0).
    pub fn pseudonym(&self, device: &str) -> DeviceId {
        self.pseudonym_at(device, 0)
    }

    /// The pseudonym of a device string for a record at event time `ts_ms`.
    pub fn pseudonym_at(&self, device: &str, ts_ms: i64) -> DeviceId {
        let (k0, k1) = if self.period_ms > 0 {
            // The period's key: a PRF (SipHash under the secret key) of the period number.
            let period = ts_ms.div_euclid(self.period_ms) as u64;
            let prf = |x: u64| {
                let mut h = SipHasher24::new_with_keys(self.k0, self.k1);
                h.write_u64(x);
                h.finish()
            };
            let id = [self.k0, self.k1, period];
            PERIOD_KEYS.with(|c| match c.get() {
                Some((seen, keys)) if seen == id => keys,
                _ => {
                    let keys = (prf(period << 1), prf((period << 1) | 1));
                    c.set(Some((id, keys)));
                    keys
                }
            })
        } else {
            (self.k0, self.k1)
        };
        let mut h = SipHasher24::new_with_keys(k0, k1);
        h.write(device.as_bytes());
        DeviceId(h.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_pseudonym_other_key_other_pseudonym() {
        let a = Pseudonymiser::new("k1");
        let b = Pseudonymiser::new("k2");
        assert_eq!(a.pseudonym("phone-1"), a.pseudonym("phone-1"));
        assert_ne!(a.pseudonym("phone-1"), a.pseudonym("phone-2"));
        assert_ne!(a.pseudonym("phone-1"), b.pseudonym("phone-1"));
    }

    #[test]
    fn daily_rotation_changes_pseudonyms_at_the_period_boundary() {
        let p = Pseudonymiser::new("k").rotating(86_400_000);
        let day = 1_767_225_600_000; // a UTC midnight
        assert_eq!(
            p.pseudonym_at("phone", day - 10),
            p.pseudonym_at("phone", day - 86_000_000)
        );
        assert_ne!(p.pseudonym_at("phone", day - 1), p.pseudonym_at("phone", day));
        assert_ne!(
            p.pseudonym_at("phone", day),
            Pseudonymiser::new("k2")
                .rotating(86_400_000)
                .pseudonym_at("phone", day)
        );
    }

    #[test]
    fn cached_period_keys_never_leak_between_secrets_or_periods() {
        let day = 86_400_000;
        let (a, b) = (
            Pseudonymiser::new("a").rotating(day),
            Pseudonymiser::new("b").rotating(day),
        );
        let calls = [(&a, 0), (&b, 0), (&a, day), (&a, 0), (&b, 3 * day), (&b, 0)];
        let here: Vec<DeviceId> = calls.iter().map(|(p, t)| p.pseudonym_at("phone", *t)).collect();
        // Each computed afresh on its own thread (an empty cache).
        let fresh: Vec<DeviceId> = calls
            .iter()
            .map(|(p, t)| {
                let (p, t) = ((*p).clone(), *t);
                std::thread::spawn(move || p.pseudonym_at("phone", t))
                    .join()
                    .unwrap()
            })
            .collect();
        assert_eq!(here, fresh);
        assert_ne!(here[0], here[1]);
        assert_ne!(here[0], here[2]);
        assert_eq!(here[0], here[3]);
    }

    #[test]
    fn debug_never_shows_the_key() {
        assert_eq!(
            format!("{:?}", Pseudonymiser::new("secret")),
            "Pseudonymiser(<key hidden>)"
        );
    }
}
