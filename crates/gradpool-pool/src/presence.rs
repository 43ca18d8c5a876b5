//! Where a provider stands over time, as the pool sees it: registrations,
//! pauses, holds and disconnections, each recorded in `provider_status`
//! with its reason; the GPU a provider claims, held with its twin when two
//! providers claim the same one; and hardware proofs at random times after
//! registration; and what the pool pays now (`GET /v1/pool`).
//!
//! History rows (`status`): `registered`, `paused` / `resumed` (the owner's
//! limits, reported in heartbeats), `held` / `released` (a hardware proof
//! pending or failed, a GPU claimed twice), `disconnected` (heartbeats
//! stopped for a lease period) / `connected` (heard from again).

use crate::error::PoolError;
use crate::tx::Write;
use crate::Pool;
use gradpool_core::proof::ProofChallenge;
use gradpool_core::state::ProviderChange;
use gradpool_core::wire::PoolInfo;
use gradpool_core::{Piconero, ProviderId};

/// The `held` text of a provider whose GPU another provider also claims.
pub(crate) fn duplicate_reason(uuid: &str, other: &str) -> String {
    format!("GPU {uuid} is also claimed by provider {other}")
}

/// An exponentially distributed delay with mean `mean_s` seconds, in
/// milliseconds, drawn from the OS's randomness.
fn random_delay_ms(mean_s: u64) -> i64 {
    let bits = crate::proof::random_u64();
    // Uniform in (0, 1]: never ln(0).
    let u = ((bits >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let ms = -u.ln() * mean_s as f64 * 1000.0;
    ms.min(i64::MAX as f64 / 2.0) as i64
}

impl Write<'_> {
    /// Appends to the provider's status history.
    pub(crate) async fn record_status(
        &mut self,
        provider: &str,
        status: ProviderChange,
        reason: Option<&str>,
    ) -> Result<(), PoolError> {
        let now = self.now;
        sqlx::query(
            "INSERT INTO provider_status (provider_id, status, reason, at) VALUES (?, ?, ?, ?)",
        )
        .bind(provider)
        .bind(status.as_str())
        .bind(reason)
        .bind(now)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// The provider was heard from: if the pool had recorded it
    /// disconnected, it is connected again.
    pub(crate) async fn seen(&mut self, provider: &str) -> Result<(), PoolError> {
        let reconnected = sqlx::query(
            "UPDATE providers SET disconnected_at = NULL WHERE id = ? AND disconnected_at IS NOT NULL",
        )
        .bind(provider)
        .execute(self.conn())
        .await?
        .rows_affected();
        if reconnected > 0 {
            self.record_status(provider, ProviderChange::Connected, None)
                .await?;
        }
        Ok(())
    }

    /// Records the GPU `provider` claims and holds it, and every connected
    /// provider claiming the same GPU, until the others are gone. A
    /// provider that no longer shares its GPU with anyone is released.
    pub(crate) async fn check_gpu_claim(
        &mut self,
        provider: &ProviderId,
        uuid: Option<&str>,
        lease_ms: i64,
    ) -> Result<(), PoolError> {
        let p = provider.as_str();
        sqlx::query("UPDATE providers SET gpu_uuid = ? WHERE id = ?")
            .bind(uuid)
            .bind(p)
            .execute(self.conn())
            .await?;
        let others: Vec<String> = match uuid {
            Some(uuid) => {
                sqlx::query_scalar(
                    "SELECT id FROM providers WHERE gpu_uuid = ? AND id != ? AND last_seen >= ? ORDER BY registered_at",
                )
                .bind(uuid)
                .bind(p)
                .bind(self.now - lease_ms)
                .fetch_all(self.conn())
                .await?
            }
            None => Vec::new(),
        };
        let (Some(uuid), Some(first)) = (uuid, others.first()) else {
            return self.release_duplicate(p).await;
        };
        let reason = duplicate_reason(uuid, first);
        sqlx::query("UPDATE providers SET duplicate_of = ? WHERE id = ?")
            .bind(first)
            .bind(p)
            .execute(self.conn())
            .await?;
        self.record_status(p, ProviderChange::Held, Some(&reason))
            .await?;
        for other in &others {
            let set = sqlx::query(
                "UPDATE providers SET duplicate_of = ? WHERE id = ? AND duplicate_of IS NULL",
            )
            .bind(p)
            .bind(other)
            .execute(self.conn())
            .await?
            .rows_affected();
            if set > 0 {
                self.record_status(
                    other,
                    ProviderChange::Held,
                    Some(&duplicate_reason(uuid, p)),
                )
                .await?;
            }
        }
        tracing::warn!(provider = %provider, gpu = uuid, others = ?others, "a GPU is claimed by more than one provider; all are held");
        Ok(())
    }

    /// Releases a provider held for a GPU another provider claimed, once
    /// that one is disconnected (or claims another GPU). One statement: it
    /// runs with every heartbeat.
    pub(crate) async fn release_duplicate_if_gone(
        &mut self,
        provider: &str,
        lease_ms: i64,
    ) -> Result<(), PoolError> {
        let released = sqlx::query(
            "UPDATE providers SET duplicate_of = NULL \
             WHERE id = ?1 AND duplicate_of IS NOT NULL \
               AND NOT EXISTS (SELECT 1 FROM providers o WHERE o.id = providers.duplicate_of \
                               AND o.gpu_uuid IS providers.gpu_uuid AND o.last_seen >= ?2)",
        )
        .bind(provider)
        .bind(self.now - lease_ms)
        .execute(self.conn())
        .await?
        .rows_affected();
        self.record_released(provider, released).await
    }

    async fn release_duplicate(&mut self, provider: &str) -> Result<(), PoolError> {
        let released = sqlx::query(
            "UPDATE providers SET duplicate_of = NULL WHERE id = ? AND duplicate_of IS NOT NULL",
        )
        .bind(provider)
        .execute(self.conn())
        .await?
        .rows_affected();
        self.record_released(provider, released).await
    }

    async fn record_released(&mut self, provider: &str, released: u64) -> Result<(), PoolError> {
        if released > 0 {
            self.record_status(
                provider,
                ProviderChange::Released,
                Some("its GPU is no longer claimed twice"),
            )
            .await?;
        }
        Ok(())
    }

    /// Plans the provider's next hardware proof at a random time (none when
    /// the pool's interval is 0).
    pub(crate) async fn plan_next_proof(
        &mut self,
        provider: &str,
        mean_s: u64,
    ) -> Result<(), PoolError> {
        let next = (mean_s > 0).then(|| self.now + random_delay_ms(mean_s));
        sqlx::query("UPDATE providers SET next_proof_at = ? WHERE id = ?")
            .bind(next)
            .bind(provider)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Issues the provider's next hardware proof if it is due and none is
    /// open, and plans the one after.
    pub(crate) async fn proof_if_due(
        &mut self,
        provider: &ProviderId,
        mean_s: u64,
    ) -> Result<Option<ProofChallenge>, PoolError> {
        #[derive(sqlx::FromRow)]
        struct Due {
            next_proof_at: Option<i64>,
            benchmark_gflops: Option<f64>,
            memory_bytes: i64,
            held: Option<String>,
        }
        let row: Option<Due> = sqlx::query_as(
            "SELECT next_proof_at, benchmark_gflops, memory_bytes, held FROM providers WHERE id = ?",
        )
        .bind(provider.as_str())
        .fetch_optional(self.conn())
        .await?;
        let Some(Due {
            next_proof_at: Some(due),
            benchmark_gflops: gflops,
            memory_bytes: memory,
            held,
        }) = row
        else {
            return Ok(None);
        };
        // A provider already held (a proof pending, or one failed: it must
        // register again) gets no new proof meanwhile.
        if due > self.now || held.is_some() {
            return Ok(None);
        }
        let open: Option<String> =
            sqlx::query_scalar("SELECT id FROM proofs WHERE provider_id = ? AND status = 'open'")
                .bind(provider.as_str())
                .fetch_optional(self.conn())
                .await?;
        self.plan_next_proof(provider.as_str(), mean_s).await?;
        if open.is_some() {
            return Ok(None);
        }
        let challenge = self
            .issue_proof(provider, gflops, u64::try_from(memory).unwrap_or(0))
            .await?;
        tracing::info!(provider = %provider, proof = %challenge.id, n = challenge.n, "hardware proof at a random time");
        Ok(Some(challenge))
    }
}

/// The median of `values` (the lower middle of an even count).
fn median(mut values: Vec<i64>) -> Option<Piconero> {
    values.sort_unstable();
    let m = *values.get(values.len().saturating_sub(1) / 2)?;
    u64::try_from(m).ok().map(Piconero)
}

impl Pool {
    /// What the pool is and what it pays now: for rig owners deciding to
    /// join, and for `gradpool provider init`'s estimate.
    pub async fn info(&self) -> Result<PoolInfo, PoolError> {
        let config = &self.inner.config;
        let lease_ms = i64::from(config.lease_seconds) * 1000;
        let mut conn = self.inner.db.acquire().await?;
        let now = self.now();
        let provider_prices: Vec<i64> = sqlx::query_scalar(
            "SELECT price_per_hour FROM providers WHERE last_seen >= ? AND trains = 1",
        )
        .bind(now - lease_ms)
        .fetch_all(&mut *conn)
        .await?;
        let job_prices: Vec<i64> = sqlx::query_scalar(
            "SELECT max_price_per_hour FROM jobs WHERE status IN ('queued', 'running') \
             AND max_price_per_hour IS NOT NULL",
        )
        .fetch_all(&mut *conn)
        .await?;
        let jobs_open: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')")
                .fetch_one(&mut *conn)
                .await?;
        Ok(PoolInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            backend: match config.money.backend {
                crate::MoneyBackend::Dev => "dev".to_owned(),
                crate::MoneyBackend::Monero(_) => "monero".to_owned(),
            },
            network: config.money.network.as_str().to_owned(),
            pool_fee_bps: config.money.pool_fee_bps,
            validator_fee_bps: config.money.validator_fee_bps,
            providers_connected: u32::try_from(provider_prices.len()).unwrap_or(u32::MAX),
            median_provider_price_per_hour: median(provider_prices),
            median_job_price_per_hour: median(job_prices),
            jobs_open: u32::try_from(jobs_open).unwrap_or(0),
            hardware_proof: config.hardware_proof,
        })
    }

    /// Records as `disconnected` every provider not heard from for a lease
    /// period, and closes the hardware proofs whose deadline has passed
    /// unanswered (the provider stays held). Run by the reaper.
    pub async fn mark_absent(&self) -> Result<usize, PoolError> {
        let lease_ms = i64::from(self.inner.config.lease_seconds) * 1000;
        let mut w = self.write().await?;
        let now = w.now;
        let gone: Vec<String> = sqlx::query_scalar(
            "UPDATE providers SET disconnected_at = ?1 \
             WHERE disconnected_at IS NULL AND last_seen < ?1 - ?2 RETURNING id",
        )
        .bind(now)
        .bind(lease_ms)
        .fetch_all(w.conn())
        .await?;
        for p in &gone {
            w.record_status(
                p,
                ProviderChange::Disconnected,
                Some("no heartbeat for a lease period"),
            )
            .await?;
            tracing::info!(provider = %p, "provider disconnected");
        }
        // Answers are judged when they arrive; an upload may take a while,
        // so an open proof is closed only a lease period after its deadline.
        let unanswered: Vec<String> = sqlx::query_scalar(
            "UPDATE proofs SET status = 'no_answer' \
             WHERE status = 'open' AND issued_at + deadline_ms + ?2 < ?1 RETURNING provider_id",
        )
        .bind(now)
        .bind(lease_ms)
        .fetch_all(w.conn())
        .await?;
        for p in &unanswered {
            let why = "hardware proof failed: no answer before its deadline";
            sqlx::query("UPDATE providers SET held = ? WHERE id = ?")
                .bind(why)
                .bind(p)
                .execute(w.conn())
                .await?;
            w.record_status(p, ProviderChange::Held, Some(why)).await?;
        }
        w.commit().await?;
        Ok(gone.len())
    }
}
