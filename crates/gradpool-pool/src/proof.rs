//! Hardware proofs: at registration the pool challenges a provider to
//! multiply two seeded matrices sized to the speed and memory it claims,
//! and checks the answer with Freivalds' algorithm
//! ([`gradpool_core::proof`]) — O(n²), the pool never redoes the work — and
//! against a deadline the claimed speed allows. A wrong, late or missing
//! answer holds the provider: it gets no work until it registers again and
//! passes. After registration, proofs come again at random times
//! ([`crate::presence`]). A passed proof's measured speed is the provider's performance
//! score (`proven_gflops`).

use crate::error::PoolError;
use crate::tx::Write;
use crate::Pool;
use gradpool_core::proof::{self, ProofAnswer, ProofChallenge, ProofResult};
use gradpool_core::state::{ProofStatus, ProviderChange};
use gradpool_core::ProviderId;

/// Freivalds rounds: a wrong answer passes with probability at most 2⁻¹⁰.
const ROUNDS: u32 = 10;
/// Work a challenge is sized for at the claimed speed, in seconds.
const TARGET_SECONDS: f64 = 0.5;
/// The deadline allows this many times the claimed compute time …
const SLACK: f64 = 4.0;
/// … plus this much for starting the process, generating the matrices and
/// uploading the answer, in milliseconds.
const OVERHEAD_MS: f64 = 5_000.0;
/// The speed assumed for a provider that claims none, in GFLOP/s.
const UNCLAIMED_GFLOPS: f64 = 1.0;

/// 64 bits from the OS's randomness.
pub(crate) fn random_u64() -> u64 {
    u64::from_str_radix(&gradpool_core::id::random_hex(8), 16).unwrap_or(0x5eed)
}

/// Issues a challenge to `provider`, which claims `gflops` and
/// `memory_bytes`.
pub(crate) async fn issue_proof(
    w: &mut Write<'_>,
    provider: &ProviderId,
    gflops: Option<f64>,
    memory_bytes: u64,
) -> Result<ProofChallenge, PoolError> {
    let claimed = gflops.unwrap_or(UNCLAIMED_GFLOPS);
    let n = proof::side_for(claimed, memory_bytes, TARGET_SECONDS);
    let compute_ms = 2.0 * f64::from(n).powi(3) / (claimed * 1e9) * 1000.0;
    let deadline_ms = (compute_ms * SLACK + OVERHEAD_MS).ceil() as u64;
    let challenge = ProofChallenge {
        id: format!("proof_{}", gradpool_core::id::random_hex(8)),
        // SQLite integers are signed: keep the seed in 63 bits.
        seed: random_u64() >> 1,
        n,
        deadline_ms,
    };
    // A new challenge replaces any still open (from an earlier
    // registration): only the newest can be answered, and an old one
    // lapsing must not hold a provider that passed since.
    sqlx::query("UPDATE proofs SET status = 'void' WHERE provider_id = $1 AND status = 'open'")
        .bind(provider.as_str())
        .execute(w.conn())
        .await?;
    sqlx::query(
        "INSERT INTO proofs (id, provider_id, seed, n, claimed_gflops, issued_at, deadline_ms, status) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'open')",
    )
    .bind(&challenge.id)
    .bind(provider.as_str())
    .bind(challenge.seed as i64)
    .bind(i64::from(n))
    .bind(gflops)
    .bind(w.now)
    .bind(deadline_ms as i64)
    .execute(w.conn())
    .await?;
    // Until it answers, it is held: a provider that cannot prove its
    // hardware gets no work.
    sqlx::query("UPDATE providers SET held = 'hardware proof pending' WHERE id = $1")
        .bind(provider.as_str())
        .execute(w.conn())
        .await?;
    crate::presence::record_status(
        w,
        provider.as_str(),
        ProviderChange::Held,
        Some("hardware proof pending"),
    )
    .await?;
    Ok(challenge)
}

impl Pool {
    /// Judges a provider's answer to its challenge `id` (the product
    /// uploaded as a blob).
    pub async fn answer_proof(
        &self,
        provider: &ProviderId,
        id: &str,
        answer: ProofAnswer,
    ) -> Result<ProofResult, PoolError> {
        let received = self.now();
        let row: Option<(i64, i64, i64, i64, String)> = {
            let mut conn = self.inner.db.acquire().await?;
            sqlx::query_as(
                "SELECT seed, n, issued_at, deadline_ms, status FROM proofs WHERE id = $1 AND provider_id = $2",
            )
            .bind(id)
            .bind(provider.as_str())
            .fetch_optional(&mut *conn)
            .await?
        };
        let Some((seed, n, issued_at, deadline_ms, status)) = row else {
            return Err(PoolError::NotFound(format!("proof {id} not found")));
        };
        let status: ProofStatus = status.parse()?;
        if status != ProofStatus::Open {
            return Err(PoolError::Conflict(format!(
                "proof {id} is already {status}"
            )));
        }
        let n = u32::try_from(n).map_err(|_| PoolError::Internal("bad proof size".into()))?;
        let elapsed_ms = u64::try_from(received - issued_at).unwrap_or(0).max(1);
        // Only the provider's own upload: naming another's blob by its
        // digest must neither read it nor have it removed below.
        let uploaded: bool = sqlx::query_scalar::<_, crate::db::Flag>(
            "SELECT EXISTS (SELECT 1 FROM blob_uploads WHERE sha256 = $1 AND principal = $2)",
        )
        .bind(answer.answer_sha256.as_str())
        .bind(provider.as_str())
        .fetch_one(&self.inner.db)
        .await?
        .0;
        if !uploaded {
            return Err(PoolError::BadRequest(format!(
                "answer_sha256: blob {} is not among your uploads",
                answer.answer_sha256
            )));
        }
        let path = self.inner.blobs.local(&answer.answer_sha256).await?;
        let bytes = tokio::fs::read(&path).await.map_err(|_| {
            PoolError::BadRequest(format!(
                "answer_sha256: blob {} is not uploaded",
                answer.answer_sha256
            ))
        })?;
        // O(n²): on a blocking thread, off the async workers.
        let correct = tokio::task::spawn_blocking(move || {
            let (a, b) = proof::matrices(seed as u64, n);
            proof::from_bytes(&bytes)
                .is_some_and(|c| proof::freivalds(&a, &b, &c, n, ROUNDS, random_u64()))
        })
        .await
        .map_err(|e| PoolError::Internal(format!("proof check: {e}")))?;
        let proven_gflops = 2.0 * f64::from(n).powi(3) / (elapsed_ms as f64 / 1000.0) / 1e9;
        let outcome = if !correct {
            ProofStatus::WrongAnswer
        } else if elapsed_ms > u64::try_from(deadline_ms).unwrap_or(0) {
            ProofStatus::TooSlow
        } else {
            ProofStatus::Passed
        };
        let mut w = self.write().await?;
        sqlx::query(
            "UPDATE proofs SET status = $1, elapsed_ms = $2, proven_gflops = $3 WHERE id = $4 AND status = 'open'",
        )
        .bind(outcome.as_str())
        .bind(elapsed_ms as i64)
        .bind(proven_gflops)
        .bind(id)
        .execute(w.conn())
        .await?;
        if outcome == ProofStatus::Passed {
            sqlx::query("UPDATE providers SET held = NULL, proven_gflops = $1 WHERE id = $2")
                .bind(proven_gflops)
                .bind(provider.as_str())
                .execute(w.conn())
                .await?;
            crate::presence::record_status(
                &mut w,
                provider.as_str(),
                ProviderChange::Released,
                Some("hardware proof passed"),
            )
            .await?;
        } else {
            let why = if outcome == ProofStatus::WrongAnswer {
                "hardware proof failed: wrong answer".to_owned()
            } else {
                format!(
                    "hardware proof failed: {elapsed_ms} ms where the claimed speed allows {deadline_ms} ms"
                )
            };
            sqlx::query("UPDATE providers SET held = $1 WHERE id = $2")
                .bind(&why)
                .bind(provider.as_str())
                .execute(w.conn())
                .await?;
            crate::presence::record_status(
                &mut w,
                provider.as_str(),
                ProviderChange::Held,
                Some(&why),
            )
            .await?;
        }
        // The answer served its purpose: the provider's upload of it goes,
        // and the blob itself unless anyone else uploaded the same bytes or
        // a job refers to them.
        sqlx::query("DELETE FROM blob_uploads WHERE sha256 = $1 AND principal = $2")
            .bind(answer.answer_sha256.as_str())
            .bind(provider.as_str())
            .execute(w.conn())
            .await?;
        let removed = sqlx::query(
            "DELETE FROM blobs WHERE sha256 = $1 \
               AND NOT EXISTS (SELECT 1 FROM blob_uploads WHERE sha256 = $1) \
               AND NOT EXISTS (SELECT 1 FROM jobs WHERE data_sha256 = $1 OR checkpoint_sha256 = $1) \
               AND NOT EXISTS (SELECT 1 FROM job_blobs WHERE sha256 = $1) \
               AND NOT EXISTS (SELECT 1 FROM commitments \
                               WHERE checkpoint_sha256 = $1 OR pseudo_gradient_sha256 = $1) \
               AND NOT EXISTS (SELECT 1 FROM outer_steps \
                               WHERE global_sha256 = $1 OR update_sha256 = $1 OR from_global_sha256 = $1 \
                                  OR weights_sha256 = $1)",
        )
        .bind(answer.answer_sha256.as_str())
        .execute(w.conn())
        .await?
        .rows_affected();
        w.commit().await?;
        if removed > 0 {
            if let Err(e) = self.inner.blobs.remove(&answer.answer_sha256).await {
                tracing::warn!(sha256 = %answer.answer_sha256, error = %e, "removing a proof's answer");
            }
        }
        tracing::info!(provider = %provider, proof = id, n, elapsed_ms, proven_gflops, outcome = %outcome, "hardware proof answered");
        Ok(ProofResult {
            outcome,
            elapsed_ms,
            proven_gflops,
        })
    }
}

/// An exponentially distributed delay with mean `mean_s` seconds, in
/// milliseconds, drawn from the OS's randomness.
pub(crate) fn random_delay_ms(mean_s: u64) -> i64 {
    let bits = crate::proof::random_u64();
    // Uniform in (0, 1]: never ln(0).
    let u = ((bits >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let ms = -u.ln() * mean_s as f64 * 1000.0;
    ms.min(i64::MAX as f64 / 2.0) as i64
}

/// Plans the provider's next hardware proof at a random time (none when
/// the pool's interval is 0).
pub(crate) async fn plan_next_proof(
    w: &mut Write<'_>,
    provider: &str,
    mean_s: u64,
) -> Result<(), PoolError> {
    let next = (mean_s > 0).then(|| w.now + random_delay_ms(mean_s));
    sqlx::query("UPDATE providers SET next_proof_at = $1 WHERE id = $2")
        .bind(next)
        .bind(provider)
        .execute(w.conn())
        .await?;
    Ok(())
}

/// Issues the provider's next hardware proof if it is due and none is
/// open, and plans the one after.
pub(crate) async fn proof_if_due(
    w: &mut Write<'_>,
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
        "SELECT next_proof_at, benchmark_gflops, memory_bytes, held FROM providers WHERE id = $1",
    )
    .bind(provider.as_str())
    .fetch_optional(w.conn())
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
    if due > w.now || held.is_some() {
        return Ok(None);
    }
    let open: Option<String> =
        sqlx::query_scalar("SELECT id FROM proofs WHERE provider_id = $1 AND status = 'open'")
            .bind(provider.as_str())
            .fetch_optional(w.conn())
            .await?;
    crate::proof::plan_next_proof(w, provider.as_str(), mean_s).await?;
    if open.is_some() {
        return Ok(None);
    }
    let challenge =
        crate::proof::issue_proof(w, provider, gflops, u64::try_from(memory).unwrap_or(0)).await?;
    tracing::info!(provider = %provider, proof = %challenge.id, n = challenge.n, "hardware proof at a random time");
    Ok(Some(challenge))
}

/// A row of `proofs` as the owner's page reads it.
#[derive(sqlx::FromRow)]
struct ProofRow {
    status: String,
    issued_at: i64,
    claimed_gflops: Option<f64>,
    proven_gflops: Option<f64>,
    elapsed_ms: Option<i64>,
}

/// `provider`'s hardware proofs, newest first, at most `limit`.
pub(crate) async fn proofs_of(
    conn: &mut sqlx::AnyConnection,
    provider: &str,
    limit: u32,
) -> Result<Vec<gradpool_core::wire::ProofRecord>, PoolError> {
    let rows: Vec<ProofRow> = sqlx::query_as(
        "SELECT status, issued_at, claimed_gflops, proven_gflops, elapsed_ms FROM proofs \
         WHERE provider_id = $1 ORDER BY issued_at DESC, id LIMIT $2",
    )
    .bind(provider)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(gradpool_core::wire::ProofRecord {
                outcome: r.status.parse()?,
                issued_at: crate::store::rfc3339(r.issued_at),
                claimed_gflops: r.claimed_gflops,
                proven_gflops: r.proven_gflops,
                elapsed_ms: r.elapsed_ms.and_then(|e| u64::try_from(e).ok()),
            })
        })
        .collect()
}
