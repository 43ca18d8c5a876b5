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
//! client), never by anonymous ones. The key is drawn once and kept in the
//! database (`pool_secrets`), so every process serving the pool (and the
//! same one after a restart) recognises the others' nonces. With several
//! processes (PostgreSQL), a used nonce is also recorded in `used_nonces`,
//! so it is used once across all of them.

use crate::db::Dialect;
use crate::error::PoolError;
use gradpool_core::wire::RegistrationChallenge;
use sqlx::AnyPool;
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
    /// The database where used nonces are recorded too, when other
    /// processes may be taking them (PostgreSQL).
    shared: Option<AnyPool>,
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
    /// Nonces under a fresh random key, known to this process alone.
    #[cfg(test)]
    fn new() -> Result<Challenges, PoolError> {
        Ok(Challenges {
            key: random_key()?,
            used: Mutex::new(Used::default()),
            shared: None,
        })
    }

    /// Nonces under the pool's key in `db` (drawn and stored by the first
    /// process to open it).
    pub(crate) async fn open(db: &AnyPool) -> Result<Challenges, PoolError> {
        sqlx::query("INSERT INTO pool_secrets (name, value) VALUES ('challenge', $1) ON CONFLICT DO NOTHING")
            .bind(hex::encode(random_key()?))
            .execute(db)
            .await?;
        let stored: String =
            sqlx::query_scalar("SELECT value FROM pool_secrets WHERE name = 'challenge'")
                .fetch_one(db)
                .await?;
        let key = hex::decode(&stored)
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or_else(|| {
                PoolError::Internal("pool_secrets: the challenge key is not 32 bytes of hex".into())
            })?;
        Ok(Challenges {
            key,
            used: Mutex::new(Used::default()),
            shared: (Dialect::of_pool(db) == Dialect::Postgres).then(|| db.clone()),
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
    pub(crate) async fn take(&self, nonce: &str, now_ms: i64) -> Result<(), PoolError> {
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
        let prune = {
            let mut used = self
                .used
                .lock()
                .map_err(|_| PoolError::Internal("nonce table poisoned".into()))?;
            let prune = now_ms - used.pruned_at >= 1000;
            if prune {
                used.expiry.retain(|_, e| *e > now_ms);
                used.pruned_at = now_ms;
            }
            if used.expiry.insert(body, expires).is_some() {
                return Err(unusable());
            }
            prune
        };
        match &self.shared {
            None => Ok(()),
            Some(db) => take_shared(db, &body, expires, now_ms, prune).await,
        }
    }
}

/// Records a nonce as used in the database, where every process of the
/// pool looks; refused if one already did.
async fn take_shared(
    db: &AnyPool,
    body: &[u8],
    expires: i64,
    now_ms: i64,
    prune: bool,
) -> Result<(), PoolError> {
    if prune {
        sqlx::query("DELETE FROM used_nonces WHERE expires_at <= $1")
            .bind(now_ms)
            .execute(db)
            .await?;
    }
    let recorded: Option<String> = sqlx::query_scalar(
        "INSERT INTO used_nonces (body, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING body",
    )
    .bind(hex::encode(body))
    .bind(expires)
    .fetch_optional(db)
    .await?;
    match recorded {
        Some(_) => Ok(()),
        None => Err(unusable()),
    }
}

fn random_key() -> Result<[u8; 32], PoolError> {
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key)
        .map_err(|e| PoolError::Internal(format!("random source: {e}")))?;
    Ok(key)
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

    #[tokio::test]
    async fn a_nonce_is_good_once_and_only_before_it_expires() {
        let c = Challenges::new().unwrap();
        let n = c.issue(1_000).unwrap().nonce;
        c.take(&n, 2_000).await.unwrap();
        assert!(c.take(&n, 2_000).await.is_err(), "used twice");
        let late = c.issue(1_000).unwrap().nonce;
        assert!(c.take(&late, 1_000 + 60_000).await.is_err(), "expired");
    }

    #[tokio::test]
    async fn nonces_of_another_key_or_edited_ones_are_refused() {
        let (a, b) = (Challenges::new().unwrap(), Challenges::new().unwrap());
        let n = a.issue(0).unwrap().nonce;
        assert!(b.take(&n, 1).await.is_err());
        // Pushing the expiry forward breaks the MAC.
        let mut bytes = hex::decode(&n).unwrap();
        bytes[0] = 0x7f;
        assert!(a.take(&hex::encode(bytes), 1).await.is_err());
        for junk in ["", "zz", &"0".repeat(2 * NONCE_LEN), &n[..n.len() - 2]] {
            assert!(a.take(junk, 1).await.is_err(), "{junk:?}");
        }
        a.take(&n, 1).await.unwrap();
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
