//! Device pseudonyms: a keyed hash (SipHash-2-4, a PRF) of the provider's device string.
//!
//! The 128-bit key is derived from the configured `privacy.hash_key` with BLAKE3's key derivation, so
//! a short passphrase still yields a full-width key. Without the key a pseudonym cannot be linked back.

use std::hash::Hasher;

use siphasher::sip::SipHasher24;

use crate::model::DeviceId;

/// Turns device strings into pseudonyms.
#[derive(Clone)]
pub struct Pseudonymiser {
    k0: u64,
    k1: u64,
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
        }
    }

    /// The pseudonym of a device string.
    pub fn pseudonym(&self, device: &str) -> DeviceId {
        let mut h = SipHasher24::new_with_keys(self.k0, self.k1);
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
    fn debug_never_shows_the_key() {
        assert_eq!(
            format!("{:?}", Pseudonymiser::new("secret")),
            "Pseudonymiser(<key hidden>)"
        );
    }
}
