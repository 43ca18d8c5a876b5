//! Single-use nonces for registrations and signed nonces, with no table an
//! anonymous client can fill.
//!
//! `POST /v1/providers/challenge` is anonymous, so issuing a nonce stores
//! nothing: the nonce carries its own expiry and a MAC under a key only the
//! pool holds,
//!
//! ```text
//! nonce = hex(expires_ms as u64 BE ‖ 16 random bytes ‖ BLAKE3-keyed(key, expires ‖ random))
//! ```
//!
//! so the pool recognises its own nonces without remembering them. A nonce
//! is remembered only once it is *used*, by a request whose signature
//! verified, until it expires: that keeps it single-use, and what can be
//! remembered is bounded by signed requests (which the throttle limits per
//! client), never by anonymous ones. The key is drawn when the pool opens;
//! nonces issued before a restart are refused after it, and a provider asks
//! for a new one.

use crate::error::PoolError;
use gradpool_core::wire::RegistrationChallenge;
use std::collections::HashMap;
use std::sync::Mutex;

/// How long a nonce is valid, in seconds.
pub const CHALLENGE_SECONDS: u32 = 60;

const RANDOM_LEN: usize = 16;
const BODY_LEN: usize = 8 + RANDOM_LEN;
const NONCE_LEN: usize = BODY_LEN + 32;

/// The pool's nonces: the MAC key and the nonces used and not yet expired.
pub(crate) struct Challenges {
    key: [u8; 32],
    used: Mutex<Used>,
}

#[derive(Default)]
struct Used {
    /// Used nonce bodies and when they expire (ms).
    expiry: HashMap<[u8; BODY_LEN], i64>,
    /// When expired entries were last dropped (ms).
    pruned_at: i64,
}

fn unusable() -> PoolError {
    PoolError::Unauthorized(
        "unknown, used or expired registration challenge; ask for a new one".into(),
    )
}

impl Challenges {
    /// Nonces under a fresh random key.
    pub(crate) fn new() -> Result<Challenges, PoolError> {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key)
            .map_err(|e| PoolError::Internal(format!("random source: {e}")))?;
        Ok(Challenges {
            key,
            used: Mutex::new(Used::default()),
        })
    }

    fn mac(&self, body: &[u8]) -> blake3::Hash {
        blake3::keyed_hash(&self.key, body)
    }

    /// A new nonce, valid for [`CHALLENGE_SECONDS`] from `now_ms`.
    pub(crate) fn issue(&self, now_ms: i64) -> Result<RegistrationChallenge, PoolError> {
        let expires = now_ms.saturating_add(i64::from(CHALLENGE_SECONDS) * 1000);
        let mut body = [0u8; BODY_LEN];
        body[..8].copy_from_slice(&expires.to_be_bytes());
        getrandom::getrandom(&mut body[8..])
            .map_err(|e| PoolError::Internal(format!("random source: {e}")))?;
        let mut nonce = body.to_vec();
        nonce.extend_from_slice(self.mac(&body).as_bytes());
        Ok(RegistrationChallenge {
            nonce: hex::encode(nonce),
            expires_in_seconds: CHALLENGE_SECONDS,
        })
    }

    /// Uses a nonce: one this pool issued, not expired at `now_ms`, and
    /// not used before. Call it only after the request's signature
    /// verified, so that a forged request cannot burn a nonce.
    pub(crate) fn take(&self, nonce: &str, now_ms: i64) -> Result<(), PoolError> {
        if nonce.len() != 2 * NONCE_LEN {
            return Err(unusable());
        }
        let bytes = hex::decode(nonce).map_err(|_| unusable())?;
        let (body, mac) = bytes.split_at(BODY_LEN);
        let mac: [u8; 32] = mac.try_into().map_err(|_| unusable())?;
        // `Hash`'s equality is constant-time.
        if self.mac(body) != blake3::Hash::from_bytes(mac) {
            return Err(unusable());
        }
        let body: [u8; BODY_LEN] = body.try_into().map_err(|_| unusable())?;
        let mut expires = [0u8; 8];
        expires.copy_from_slice(&body[..8]);
        let expires = i64::from_be_bytes(expires);
        if expires <= now_ms {
            return Err(unusable());
        }
        let mut used = self
            .used
            .lock()
            .map_err(|_| PoolError::Internal("nonce table poisoned".into()))?;
        if now_ms - used.pruned_at >= 1000 {
            used.expiry.retain(|_, e| *e > now_ms);
            used.pruned_at = now_ms;
        }
        match used.expiry.insert(body, expires) {
            None => Ok(()),
            Some(_) => Err(unusable()),
        }
    }
}

/// How far a registration's timestamp may be from the pool's clock.
pub const REGISTRATION_SKEW_SECONDS: i64 = 300;

/// Whether a signed time (`time_s`, from anyone) is within
/// [`REGISTRATION_SKEW_SECONDS`] of the pool's `now_s`; any `i64` is
/// answered, none overflows.
pub(crate) fn within_skew(time_s: i64, now_s: i64) -> bool {
    time_s.abs_diff(now_s) <= REGISTRATION_SKEW_SECONDS.unsigned_abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_good_once_and_only_before_it_expires() {
        let c = Challenges::new().unwrap();
        let n = c.issue(1_000).unwrap().nonce;
        c.take(&n, 2_000).unwrap();
        assert!(c.take(&n, 2_000).is_err(), "used twice");
        let late = c.issue(1_000).unwrap().nonce;
        assert!(c.take(&late, 1_000 + 60_000).is_err(), "expired");
    }

    #[test]
    fn nonces_of_another_key_or_edited_ones_are_refused() {
        let (a, b) = (Challenges::new().unwrap(), Challenges::new().unwrap());
        let n = a.issue(0).unwrap().nonce;
        assert!(b.take(&n, 1).is_err());
        // Pushing the expiry forward breaks the MAC.
        let mut bytes = hex::decode(&n).unwrap();
        bytes[0] = 0x7f;
        assert!(a.take(&hex::encode(bytes), 1).is_err());
        for junk in ["", "zz", &"0".repeat(2 * NONCE_LEN), &n[..n.len() - 2]] {
            assert!(a.take(junk, 1).is_err(), "{junk:?}");
        }
        a.take(&n, 1).unwrap();
    }

    #[test]
    fn issuing_remembers_nothing() {
        let c = Challenges::new().unwrap();
        for _ in 0..10_000 {
            c.issue(0).unwrap();
        }
        assert!(c.used.lock().unwrap().expiry.is_empty());
    }
}
