//! The isolated tier at the pool: the operator certifies a provider for
//! a limited time after reviewing its host compliance report (only a
//! passing one); the certification ends when it expires, when the
//! operator revokes it, or at the first failing report the provider sends
//! (the tier is lost at the first failure). A job that asks for the tier
//! (`resources.tier`, or a confidential job's `privacy.providers =
//! "isolated"`) is claimed only by providers certified now: the claim's
//! rule, [`HOLDS_TIER`].
//!
//! Between registrations the pool asks a certified provider for its
//! checks again at random times ([`compliance_if_due`], answered by
//! `POST /v1/providers/compliance`); unanswered within
//! [`COMPLIANCE_DEADLINE_MS`], the tier is lost too.

use crate::error::PoolError;
use crate::tx::Write;
use gradpool_core::compliance::SignedCompliance;
use gradpool_core::state::ProviderTier;
use sqlx::AnyConnection;

/// The claim's rule, over the job `j`, the claiming provider `?1` and the
/// time `?3`: a job with a tier goes only to a provider certified into it
/// now.
pub(crate) const HOLDS_TIER: &str = "(j.tier IS NULL OR EXISTS (SELECT 1 FROM certifications cert \
     WHERE cert.provider_id = $1 AND cert.tier = j.tier AND cert.revoked_at IS NULL \
     AND cert.expires_at > $3))";

/// How long a provider has to answer the pool's request for its checks.
pub const COMPLIANCE_DEADLINE_MS: i64 = 10 * 60 * 1000;

/// The longest a certification may last: a year.
pub const MAX_DAYS: u32 = 366;

/// A provider's certification into a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certification {
    pub provider: String,
    pub tier: ProviderTier,
    /// Milliseconds since the epoch.
    pub certified_at: i64,
    pub expires_at: i64,
}

/// Certifies `provider` into `tier` for `days` from `now` (ms): refused
/// unless its latest compliance report passes, every check of it.
pub async fn certify(
    conn: &mut AnyConnection,
    provider: &str,
    tier: ProviderTier,
    days: u32,
    now: i64,
) -> Result<Certification, PoolError> {
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(PoolError::BadRequest(format!(
            "days: from 1 to {MAX_DAYS}, got {days}"
        )));
    }
    let stored: Option<Option<String>> =
        sqlx::query_scalar("SELECT compliance FROM providers WHERE id = $1")
            .bind(provider)
            .fetch_optional(&mut *conn)
            .await?;
    let stored = stored.ok_or_else(|| PoolError::NotFound(format!("provider {provider}")))?;
    let report: SignedCompliance = stored
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .ok_or_else(|| {
            PoolError::BadRequest(format!(
                "provider {provider} sent no compliance report: start it with tier = \"isolated\""
            ))
        })?;
    if !report.report.passed() {
        return Err(PoolError::BadRequest(format!(
            "provider {provider}'s compliance report fails: {}",
            report.report.failures().join(", ")
        )));
    }
    let expires_at = now.saturating_add(i64::from(days) * 86_400_000);
    sqlx::query(
        "INSERT INTO certifications (provider_id, tier, certified_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(provider)
    .bind(tier.as_str())
    .bind(now)
    .bind(expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(Certification {
        provider: provider.to_owned(),
        tier,
        certified_at: now,
        expires_at,
    })
}

/// Ends `provider`'s current certifications with `reason`; how many.
pub async fn revoke(
    conn: &mut AnyConnection,
    provider: &str,
    reason: &str,
    now: i64,
) -> Result<u64, PoolError> {
    let done = sqlx::query(
        "UPDATE certifications SET revoked_at = $1, reason = $2 \
         WHERE provider_id = $3 AND revoked_at IS NULL AND expires_at > $4",
    )
    .bind(now)
    .bind(reason)
    .bind(provider)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// After a registration: a certified provider whose report fails, or that
/// sent none, loses its tier at once.
pub(crate) async fn registered(
    conn: &mut AnyConnection,
    provider: &str,
    report: Option<&SignedCompliance>,
    now: i64,
) -> Result<(), PoolError> {
    let reason = match report {
        Some(r) if r.report.passed() => return Ok(()),
        Some(r) => format!(
            "compliance check failed: {}",
            r.report.failures().join(", ")
        ),
        None => "registered without a compliance report".to_owned(),
    };
    let ended = revoke(conn, provider, &reason, now).await?;
    if ended > 0 {
        tracing::warn!(provider, reason = %reason, "provider lost its tier");
    }
    Ok(())
}

/// The tier `provider` holds now, and until when (ms).
pub async fn current(
    conn: &mut AnyConnection,
    provider: &str,
    now: i64,
) -> Result<Option<(ProviderTier, i64)>, PoolError> {
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT tier, expires_at FROM certifications WHERE provider_id = $1 AND revoked_at IS NULL \
         AND expires_at > $2 ORDER BY expires_at DESC LIMIT 1",
    )
    .bind(provider)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    row.map(|(tier, expires)| {
        tier.parse()
            .map(|t| (t, expires))
            .map_err(|e| PoolError::Internal(format!("stored tier: {e}")))
    })
    .transpose()
}

/// Whether a certified provider's heartbeat at `now` leaves its
/// compliance checks as they are ([`compliance_if_due`] writes nothing):
/// a request is pending within its deadline, or the next is planned for
/// later.
pub(crate) fn compliance_quiet(next: Option<i64>, asked: Option<i64>, now: i64) -> bool {
    match asked {
        Some(asked) => now - asked <= COMPLIANCE_DEADLINE_MS,
        None => next.is_some_and(|next| next > now),
    }
}

/// At a heartbeat: whether the pool asks `provider` (certified now) for
/// its checks, at a random time after the last; a request left
/// unanswered past its deadline loses the tier.
pub(crate) async fn compliance_if_due(
    w: &mut Write<'_>,
    provider: &str,
    mean_s: u64,
) -> Result<bool, PoolError> {
    let now = w.now;
    if mean_s == 0 || current(w.conn(), provider, now).await?.is_none() {
        return Ok(false);
    }
    let (next, asked): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT next_compliance_at, compliance_asked_at FROM providers WHERE id = $1",
    )
    .bind(provider)
    .fetch_one(w.conn())
    .await?;
    if let Some(asked) = asked {
        if now - asked > COMPLIANCE_DEADLINE_MS {
            revoke(
                w.conn(),
                provider,
                "no compliance report within 10 minutes of the pool's request",
                now,
            )
            .await?;
            sqlx::query("UPDATE providers SET compliance_asked_at = NULL WHERE id = $1")
                .bind(provider)
                .execute(w.conn())
                .await?;
            tracing::warn!(
                provider,
                "provider lost its tier: no compliance report in time"
            );
        }
        return Ok(false);
    }
    let due = next.is_some_and(|n| n <= now);
    let planned = now + crate::proof::random_delay_ms(mean_s);
    if due || next.is_none() {
        sqlx::query(
            "UPDATE providers SET next_compliance_at = $1, compliance_asked_at = $2 WHERE id = $3",
        )
        .bind(planned)
        .bind(due.then_some(now))
        .bind(provider)
        .execute(w.conn())
        .await?;
    }
    Ok(due)
}

impl crate::Pool {
    /// A compliance report the provider sent when asked: kept, and a
    /// failing one loses the tier. Refused unless its node key signed it.
    pub async fn receive_compliance(
        &self,
        provider: &gradpool_core::ProviderId,
        report: SignedCompliance,
    ) -> Result<bool, PoolError> {
        report.report.check().map_err(PoolError::BadRequest)?;
        let mut w = self.write().await?;
        let key: String = sqlx::query_scalar("SELECT public_key FROM providers WHERE id = $1")
            .bind(provider.as_str())
            .fetch_one(w.conn())
            .await?;
        let key: gradpool_core::signing::PublicKey = key
            .parse()
            .map_err(|e| PoolError::Internal(format!("stored public key: {e}")))?;
        if !report.is_signed_by(&key) {
            return Err(PoolError::BadRequest(
                "compliance: not signed by this provider's node key".into(),
            ));
        }
        sqlx::query(
            "UPDATE providers SET compliance = $1, compliance_asked_at = NULL WHERE id = $2",
        )
        .bind(serde_json::to_string(&report)?)
        .bind(provider.as_str())
        .execute(w.conn())
        .await?;
        let now = w.now;
        registered(w.conn(), provider.as_str(), Some(&report), now).await?;
        w.commit().await?;
        Ok(report.report.passed())
    }

    /// [`certify`], by the pool's clock: what `gradpool pool certify` does.
    pub async fn certify(
        &self,
        provider: &str,
        tier: ProviderTier,
        days: u32,
    ) -> Result<Certification, PoolError> {
        let mut conn = self.inner.db.acquire().await?;
        certify(&mut conn, provider, tier, days, self.now()).await
    }

    /// [`revoke`], by the pool's clock.
    pub async fn revoke_certification(
        &self,
        provider: &str,
        reason: &str,
    ) -> Result<u64, PoolError> {
        let mut conn = self.inner.db.acquire().await?;
        revoke(&mut conn, provider, reason, self.now()).await
    }
}
