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
use gradpool_core::state::ProviderChange;
use gradpool_core::wire::PoolInfo;
use gradpool_core::{Piconero, ProviderId};
use sqlx::AnyConnection;

/// Appends to the provider's status history.
pub(crate) async fn record_status(
    w: &mut Write<'_>,
    provider: &str,
    status: ProviderChange,
    reason: Option<&str>,
) -> Result<(), PoolError> {
    let now = w.now;
    sqlx::query(
        "INSERT INTO provider_status (provider_id, status, reason, at) VALUES ($1, $2, $3, $4)",
    )
    .bind(provider)
    .bind(status.as_str())
    .bind(reason)
    .bind(now)
    .execute(w.conn())
    .await?;
    Ok(())
}

/// The provider was heard from: if the pool had recorded it
/// disconnected, it is connected again.
pub(crate) async fn seen(w: &mut Write<'_>, provider: &str) -> Result<(), PoolError> {
    let reconnected = sqlx::query(
        "UPDATE providers SET disconnected_at = NULL WHERE id = $1 AND disconnected_at IS NOT NULL",
    )
    .bind(provider)
    .execute(w.conn())
    .await?
    .rows_affected();
    if reconnected > 0 {
        crate::presence::record_status(w, provider, ProviderChange::Connected, None).await?;
    }
    Ok(())
}

/// Records the GPU `provider` claims and holds it, and every connected
/// provider claiming the same GPU, until the others are gone. A
/// provider that no longer shares its GPU with anyone is released.
pub(crate) async fn check_gpu_claim(
    w: &mut Write<'_>,
    provider: &ProviderId,
    uuid: Option<&str>,
    lease_ms: i64,
) -> Result<(), PoolError> {
    let p = provider.as_str();
    sqlx::query("UPDATE providers SET gpu_uuid = $1 WHERE id = $2")
        .bind(uuid)
        .bind(p)
        .execute(w.conn())
        .await?;
    let others: Vec<String> = match uuid {
        Some(uuid) => {
            sqlx::query_scalar(
                "SELECT id FROM providers WHERE gpu_uuid = $1 AND id != $2 AND last_seen >= $3 ORDER BY registered_at",
            )
            .bind(uuid)
            .bind(p)
            .bind(w.now - lease_ms)
            .fetch_all(w.conn())
            .await?
        }
        None => Vec::new(),
    };
    let (Some(uuid), Some(first)) = (uuid, others.first()) else {
        return crate::presence::release_duplicate(w, p).await;
    };
    let reason = crate::store::duplicate_reason(uuid, first);
    sqlx::query("UPDATE providers SET duplicate_of = $1 WHERE id = $2")
        .bind(first)
        .bind(p)
        .execute(w.conn())
        .await?;
    crate::presence::record_status(w, p, ProviderChange::Held, Some(&reason)).await?;
    for other in &others {
        let set = sqlx::query(
            "UPDATE providers SET duplicate_of = $1 WHERE id = $2 AND duplicate_of IS NULL",
        )
        .bind(p)
        .bind(other)
        .execute(w.conn())
        .await?
        .rows_affected();
        if set > 0 {
            crate::presence::record_status(
                w,
                other,
                ProviderChange::Held,
                Some(&crate::store::duplicate_reason(uuid, p)),
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
    w: &mut Write<'_>,
    provider: &str,
    lease_ms: i64,
) -> Result<(), PoolError> {
    let released = sqlx::query(
        "UPDATE providers SET duplicate_of = NULL \
         WHERE id = $1 AND duplicate_of IS NOT NULL \
           AND NOT EXISTS (SELECT 1 FROM providers o WHERE o.id = providers.duplicate_of \
                           AND o.gpu_uuid IS NOT DISTINCT FROM providers.gpu_uuid AND o.last_seen >= $2)",
    )
    .bind(provider)
    .bind(w.now - lease_ms)
    .execute(w.conn())
    .await?
    .rows_affected();
    crate::presence::record_released(w, provider, released).await
}

pub(crate) async fn release_duplicate(w: &mut Write<'_>, provider: &str) -> Result<(), PoolError> {
    let released = sqlx::query(
        "UPDATE providers SET duplicate_of = NULL WHERE id = $1 AND duplicate_of IS NOT NULL",
    )
    .bind(provider)
    .execute(w.conn())
    .await?
    .rows_affected();
    crate::presence::record_released(w, provider, released).await
}

pub(crate) async fn record_released(
    w: &mut Write<'_>,
    provider: &str,
    released: u64,
) -> Result<(), PoolError> {
    if released > 0 {
        crate::presence::record_status(
            w,
            provider,
            ProviderChange::Released,
            Some("its GPU is no longer claimed twice"),
        )
        .await?;
    }
    Ok(())
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
            "SELECT price_per_hour FROM providers WHERE last_seen >= $1 AND trains = 1",
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
    ///
    /// A pool running behind does not blame its providers: the lease is
    /// lengthened by how long the longest-waiting writer (a heartbeat,
    /// most likely) has been waiting for the write lock, so a heartbeat
    /// stuck in the pool's own queue does not turn into a disconnection
    /// and then a reconnection to write.
    pub async fn mark_absent(&self) -> Result<usize, PoolError> {
        let mut w = self.write().await?;
        let now = w.now;
        let lease_ms =
            i64::from(self.inner.config.lease_seconds) * 1000 + self.inner.backlog.delay_ms(now);
        let gone: Vec<String> = sqlx::query_scalar(
            "UPDATE providers SET disconnected_at = $1 \
             WHERE disconnected_at IS NULL AND last_seen < $1 - $2 RETURNING id",
        )
        .bind(now)
        .bind(lease_ms)
        .fetch_all(w.conn())
        .await?;
        for p in &gone {
            crate::presence::record_status(
                &mut w,
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
             WHERE status = 'open' AND issued_at + deadline_ms + $2 < $1 RETURNING provider_id",
        )
        .bind(now)
        .bind(lease_ms)
        .fetch_all(w.conn())
        .await?;
        for p in &unanswered {
            let why = "hardware proof failed: no answer before its deadline";
            sqlx::query("UPDATE providers SET held = $1 WHERE id = $2")
                .bind(why)
                .bind(p)
                .execute(w.conn())
                .await?;
            crate::presence::record_status(&mut w, p, ProviderChange::Held, Some(why)).await?;
        }
        w.commit().await?;
        Ok(gone.len())
    }
}

impl Pool {
    /// Every provider as others see it, now.
    pub(crate) async fn provider_views(
        &self,
        conn: &mut AnyConnection,
    ) -> Result<Vec<gradpool_core::wire::ProviderView>, PoolError> {
        crate::store::providers(
            conn,
            self.now(),
            self.inner.config.lease_seconds,
            self.inner.config.verification.sampling,
            &self.inner.sightings,
        )
        .await
    }

    /// Provider `id` as others see it, now; unknown, a not-found error
    /// that names it.
    pub(crate) async fn provider_view(
        &self,
        conn: &mut AnyConnection,
        id: &str,
    ) -> Result<gradpool_core::wire::ProviderView, PoolError> {
        self.provider_views(conn)
            .await?
            .into_iter()
            .find(|p| p.id.as_str() == id)
            .ok_or_else(|| PoolError::not_found(format!("provider {id}")))
    }
}

/// `provider`'s changes of standing, newest first, at most `limit`.
pub(crate) async fn status_history(
    conn: &mut AnyConnection,
    provider: &str,
    limit: u32,
) -> Result<Vec<gradpool_core::wire::StatusChange>, PoolError> {
    let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT status, reason, at FROM provider_status WHERE provider_id = $1 \
         ORDER BY at DESC, rowid DESC LIMIT $2",
    )
    .bind(provider)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(status, reason, at)| {
            Ok(gradpool_core::wire::StatusChange {
                status: status.parse()?,
                reason,
                at: crate::store::rfc3339(at),
            })
        })
        .collect()
}

/// How often the pool keeps a sample of each connected provider's
/// telemetry.
pub const TELEMETRY_EVERY_MS: i64 = 60_000;

/// How long telemetry samples are kept.
pub const TELEMETRY_KEPT_MS: i64 = 3_600_000;

impl Pool {
    /// Keeps a sample of every connected provider's last telemetry, keyed
    /// by the minute of `now` (a second call in the same minute adds
    /// nothing), and forgets samples older than [`TELEMETRY_KEPT_MS`].
    /// Run by the reaper once a minute. Returns how many it kept.
    pub async fn sample_telemetry(&self) -> Result<u64, PoolError> {
        let lease_ms = i64::from(self.inner.config.lease_seconds) * 1000;
        let mut w = self.write().await?;
        let now = w.now;
        let minute = now - now.rem_euclid(TELEMETRY_EVERY_MS);
        let kept = sqlx::query(
            "INSERT INTO telemetry_samples (provider_id, at, telemetry) \
             SELECT id, $1, telemetry FROM providers \
             WHERE telemetry IS NOT NULL AND last_seen >= $2 \
             ON CONFLICT DO NOTHING",
        )
        .bind(minute)
        .bind(now - lease_ms)
        .execute(w.conn())
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM telemetry_samples WHERE at < $1")
            .bind(now - TELEMETRY_KEPT_MS)
            .execute(w.conn())
            .await?;
        w.commit().await?;
        Ok(kept)
    }
}

/// `provider`'s telemetry samples, oldest first (a malformed one skipped).
pub(crate) async fn telemetry_history(
    conn: &mut AnyConnection,
    provider: &str,
) -> Result<Vec<gradpool_core::wire::TelemetrySample>, PoolError> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT at, telemetry FROM telemetry_samples WHERE provider_id = $1 ORDER BY at",
    )
    .bind(provider)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(at, t)| {
            Some(gradpool_core::wire::TelemetrySample {
                at: crate::store::rfc3339(at),
                telemetry: serde_json::from_str(&t).ok()?,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use crate::clock::ManualClock;
    use crate::{Pool, PoolConfig};
    use std::sync::Arc;
    use std::time::Duration;

    /// A provider last heard from `silent_ms` before the clock's now.
    async fn pool_with_provider(silent_ms: i64) -> (Pool, Arc<ManualClock>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at(1_000_000_000));
        let pool = Pool::open(PoolConfig {
            data_dir: dir.path().to_owned(),
            clock: clock.clone(),
            ..PoolConfig::default()
        })
        .await
        .unwrap();
        let now = pool.now();
        sqlx::query(
            "INSERT INTO providers (id, public_key, name, hardware, device, memory_bytes, class, \
             registered_at, last_seen) VALUES ('prov_a', 'k', 'a', \
             '{\"device\":\"cpu\",\"name\":\"a\",\"threads\":1,\"memory_bytes\":1,\"isa\":\"x86-64\"}', \
             'cpu', 1, 'c', $1, $2)",
        )
        .bind(now - 100_000)
        .bind(now - silent_ms)
        .execute(&pool.inner.db)
        .await
        .unwrap();
        (pool, clock, dir)
    }

    #[tokio::test]
    async fn a_pool_running_behind_does_not_call_its_providers_gone() {
        let lease_ms = i64::from(PoolConfig::default().lease_seconds) * 1000;
        // Silent a second past the lease: gone, when the pool keeps up.
        let (pool, _clock, _dir) = pool_with_provider(lease_ms + 1_000).await;
        assert_eq!(pool.mark_absent().await.unwrap(), 1);

        // The same silence while a writer has waited 5 s for the lock:
        // its heartbeat may be that writer.
        let (pool, clock, _dir) = pool_with_provider(lease_ms + 1_000).await;
        let waiting = pool.inner.backlog.arrive(pool.now() - 5_000);
        assert_eq!(pool.mark_absent().await.unwrap(), 0);
        // Silent for longer than the lease and the pool's delay: gone.
        clock.advance(Duration::from_secs(5));
        assert_eq!(
            pool.mark_absent().await.unwrap(),
            0,
            "waited 10 s, silent 21 s"
        );
        clock.advance(Duration::from_secs(1));
        drop(waiting);
        assert_eq!(pool.mark_absent().await.unwrap(), 1);
    }

    fn idle_heartbeat(paused: Option<&str>) -> gradpool_core::wire::Heartbeat {
        gradpool_core::wire::Heartbeat {
            telemetry: Default::default(),
            running: Vec::new(),
            capacity: 1,
            wait_seconds: 0,
            paused: paused.map(str::to_owned),
        }
    }

    async fn stored_last_seen(pool: &Pool) -> i64 {
        sqlx::query_scalar("SELECT last_seen FROM providers WHERE id = 'prov_a'")
            .fetch_one(&pool.inner.db)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_heartbeat_that_changes_nothing_takes_no_write_lock() {
        let (pool, clock, _dir) = pool_with_provider(1_000).await;
        let provider = gradpool_core::ProviderId::from("prov_a");
        let before = stored_last_seen(&pool).await;
        clock.advance(Duration::from_secs(2));
        {
            // Another writer holds the lock: a quiet heartbeat still answers.
            let _writer = pool.write().await.unwrap();
            let reply = tokio::time::timeout(
                Duration::from_secs(30),
                pool.heartbeat(&provider, idle_heartbeat(None)),
            )
            .await
            .expect("a quiet heartbeat does not wait for the write lock")
            .unwrap();
            assert!(reply.assignments.is_empty());
            assert_eq!(stored_last_seen(&pool).await, before, "not written yet");
        }
        // Shown at once, written by the next write transaction.
        let listed = crate::store::providers(
            &mut pool.inner.db.acquire().await.unwrap(),
            pool.now(),
            pool.inner.config.lease_seconds,
            pool.inner.config.verification.sampling,
            &pool.inner.sightings,
        )
        .await
        .unwrap();
        assert_eq!(
            listed[0].last_seen,
            crate::store::rfc3339(pool.now()),
            "the listing shows the sighting"
        );
        // A transaction that takes them and then does not commit (a
        // refused request, a client gone) puts them back.
        drop(pool.write().await.unwrap());
        assert_eq!(stored_last_seen(&pool).await, before);
        pool.write().await.unwrap().commit().await.unwrap();
        assert_eq!(stored_last_seen(&pool).await, pool.now());
        // A provider sighted within the lease is not marked absent later.
        clock.advance(Duration::from_secs(
            u64::from(pool.inner.config.lease_seconds) - 1,
        ));
        assert_eq!(pool.mark_absent().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_heartbeat_that_changes_something_writes_it() {
        let (pool, clock, _dir) = pool_with_provider(1_000).await;
        let provider = gradpool_core::ProviderId::from("prov_a");
        clock.advance(Duration::from_secs(2));
        // A pause is recorded in its heartbeat's own transaction.
        pool.heartbeat(&provider, idle_heartbeat(Some("schedule")))
            .await
            .unwrap();
        assert_eq!(stored_last_seen(&pool).await, pool.now());
        let changes: Vec<String> = sqlx::query_scalar(
            "SELECT status FROM provider_status WHERE provider_id = 'prov_a' ORDER BY at",
        )
        .fetch_all(&pool.inner.db)
        .await
        .unwrap();
        assert_eq!(changes, ["paused"]);
        // A provider marked gone is connected again by its next heartbeat.
        clock.advance(Duration::from_secs(
            u64::from(pool.inner.config.lease_seconds) + 1,
        ));
        assert_eq!(pool.mark_absent().await.unwrap(), 1);
        pool.heartbeat(&provider, idle_heartbeat(Some("schedule")))
            .await
            .unwrap();
        let last: String = sqlx::query_scalar(
            "SELECT status FROM provider_status WHERE provider_id = 'prov_a' ORDER BY at DESC, rowid DESC",
        )
        .fetch_one(&pool.inner.db)
        .await
        .unwrap();
        assert_eq!(last, "connected");
    }

    #[tokio::test]
    async fn a_pool_far_behind_refuses_what_can_wait() {
        let (pool, _clock, _dir) = pool_with_provider(1_000).await;
        let provider = gradpool_core::ProviderId::from("prov_a");
        let _waiting = pool
            .inner
            .backlog
            .arrive(pool.now() - crate::tx::SHED_AFTER_MS - 1);
        // A pause to record needs a write: refused, with nothing changed.
        let err = pool
            .heartbeat(&provider, idle_heartbeat(Some("schedule")))
            .await
            .unwrap_err();
        assert!(matches!(err, crate::PoolError::Busy(_)), "{err}");
        assert_eq!(err.status().0, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        let paused: Option<String> =
            sqlx::query_scalar("SELECT paused FROM providers WHERE id = 'prov_a'")
                .fetch_one(&pool.inner.db)
                .await
                .unwrap();
        assert_eq!(paused, None);
        // A quiet heartbeat costs no write: still answered.
        pool.heartbeat(&provider, idle_heartbeat(None))
            .await
            .unwrap();
    }
}
