//! A parallel job's rounds: closing a round once its workers' segments are
//! committed, and the outer step that makes the next global checkpoint.
//!
//! Each round, the pool queues one inner segment per worker slot, all from
//! the round's global checkpoint ([`crate::queue::queue_round`]); a
//! provider holds at most one of a job's segments at a time, so a round's
//! workers train on different providers at once. A segment whose lease
//! expires, or that fails or is handed back, is queued again for its slot,
//! and the round waits for it, unless it may close without it: once
//! `parallel.min_workers` of its segments are committed, the pool waits
//! `round_grace_seconds` for the others, then cancels their tasks and
//! closes the round with the workers present ([`close_if_due`]); a slot
//! left out keeps its last committed state. Once every slot has an
//! accepted commitment, or the round closed, its outer step is queued as a
//! task of kind `outer`, over exactly the committed segments.
//!
//! A worker's segment sends its pseudo-gradient, not its checkpoint
//! ([`gradpool_core::delta`]). A provider computes the outer step from
//! them (`gradpool checkpoint outer`) and signs an
//! [`OuterCommitment`](gradpool_core::commitment::OuterCommitment) that
//! binds the next global checkpoint's digest to the inner commitments it
//! used. The pool computes the step again, every time ([`recompute`], the
//! same f32 arithmetic of [`gradpool_core::outer`], without candle), and
//! accepts the commitment only if the digest and the chain hash are its
//! own; it then stores the global checkpoint and the outer update itself,
//! so nobody uploads them, and a worker that holds a round's weights
//! downloads only the update to the next. A provider whose outer step does not match is barred from the job
//! and its stake slashed ([`forged`]); the step goes to another provider.
//! The outer step is not billed: it is a few passes of arithmetic over the
//! parameters, next to the inner segments, which are.

use crate::error::PoolError;
use crate::queue::{job_of, leased_task, round_inputs};
use crate::store::{self, to_u64, JobRow, TaskRow};
use crate::tx::Write;
use crate::Pool;
use gradpool_core::commitment::{outer_chain, OuterInput};
use gradpool_core::delta::{self, DeltaKind};
use gradpool_core::outer::{self, Global};
use gradpool_core::state::TaskStatus;
use gradpool_core::wire::{CommitReply, JobEventKind, OuterCommit, TaskKind};
use gradpool_core::{JobSpec, ProviderId, Sha256Hex, TaskId};

/// After a worker's segment of a parallel job was accepted: queues the
/// round's outer step once every slot of the round has its commitment.
pub(crate) async fn segment_committed(w: &mut Write<'_>, job: &JobRow) -> Result<(), PoolError> {
    let round = job.round;
    let workers = job.workers.unwrap_or(1);
    let committed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM commitments WHERE job_id = $1 AND segment >= $2 AND segment < $3",
    )
    .bind(&job.id)
    .bind(round * workers)
    .bind((round + 1) * workers)
    .fetch_one(w.conn())
    .await?;
    let pending: bool = sqlx::query_scalar::<_, crate::db::Flag>(
        "SELECT EXISTS (SELECT 1 FROM tasks WHERE job_id = $1 AND kind = 'outer' AND round = $2 \
         AND status IN ('queued', 'leased'))",
    )
    .bind(&job.id)
    .bind(round)
    .fetch_one(w.conn())
    .await?
    .0;
    if pending {
        return Ok(());
    }
    if committed >= workers {
        crate::queue::queue_outer(w, job, round).await?;
        tracing::info!(job = %job.id, round, "round trained; outer step queued");
    } else {
        close_if_due(w, job).await?;
    }
    Ok(())
}

/// Closes a parallel job's round without its missing workers when it may
/// and must: `min_workers` segments are committed, and the pool's grace
/// (`round_grace_seconds`) since the `min_workers`-th has passed. The
/// missing workers' tasks are cancelled (a leased one's provider learns it
/// at its next call) and the outer step is queued with the workers
/// present. Returns whether it closed the round.
pub(crate) async fn close_if_due(w: &mut Write<'_>, job: &JobRow) -> Result<bool, PoolError> {
    let (Some(n), Some(min)) = (job.workers, job.min_workers) else {
        return Ok(false);
    };
    let round = job.round;
    let nth: Option<i64> = sqlx::query_scalar(
        "SELECT committed_at FROM commitments WHERE job_id = $1 AND segment >= $2 AND segment < $3 \
         ORDER BY committed_at LIMIT 1 OFFSET $4",
    )
    .bind(&job.id)
    .bind(round * n)
    .bind((round + 1) * n)
    .bind(min.max(1) - 1)
    .fetch_optional(w.conn())
    .await?;
    let grace_ms = i64::try_from(w.pool().inner.config.round_grace_seconds)
        .unwrap_or(i64::MAX / 2)
        .saturating_mul(1000);
    let Some(nth) = nth.filter(|at| at.saturating_add(grace_ms) <= w.now) else {
        return Ok(false);
    };
    let reason = format!(
        "left out of round {round}: {min} workers committed and the others did not within {} s",
        grace_ms / 1000
    );
    let cut: Vec<(Option<i64>, Option<String>)> = sqlx::query_as(
        "UPDATE tasks SET status = 'cancelled', reason = $1, lease_expires_at = NULL, updated_at = $2 \
         WHERE job_id = $3 AND kind = 'train' AND round = $4 AND status IN ('queued', 'leased') \
         RETURNING worker, provider_id",
    )
    .bind(&reason)
    .bind(w.now)
    .bind(&job.id)
    .bind(round)
    .fetch_all(w.conn())
    .await?;
    for (worker, provider) in cut {
        w.event(
            &job.id,
            JobEventKind::LeftOut {
                round: to_u64(round),
                worker: worker.map_or(0, crate::store::to_u32),
                provider: provider.as_deref().map(ProviderId::from),
            },
        )
        .await?;
    }
    crate::queue::queue_outer(w, job, round).await?;
    tracing::info!(job = %job.id, round, since_ms = w.now - nth, "round closed without its late workers; outer step queued");
    Ok(true)
}

impl Pool {
    /// A customer asks for its parallel job's checkpoints that workers
    /// keep: each must be a committed checkpoint of the job. Those the pool
    /// lacks join its providers' `wanted` lists.
    pub async fn request_checkpoints(
        &self,
        account: &str,
        job_id: &str,
        request: gradpool_core::wire::CheckpointRequest,
    ) -> Result<gradpool_core::wire::CheckpointRequestReply, PoolError> {
        let shas = request.checkpoint_sha256;
        if shas.len() > gradpool_core::wire::CheckpointRequest::MAX {
            return Err(PoolError::BadRequest(format!(
                "checkpoint_sha256: at most {} at a time, got {}",
                gradpool_core::wire::CheckpointRequest::MAX,
                shas.len()
            )));
        }
        let mut w = self.write().await?;
        let job = store::owned_job(w.conn(), account, job_id).await?;
        let mut reply = gradpool_core::wire::CheckpointRequestReply {
            present: Vec::new(),
            asked: Vec::new(),
        };
        for (i, sha) in shas.into_iter().enumerate() {
            let committed: bool = sqlx::query_scalar::<_, crate::db::Flag>(
                "SELECT EXISTS (SELECT 1 FROM commitments WHERE job_id = $1 AND checkpoint_sha256 = $2)",
            )
            .bind(&job.id)
            .bind(sha.as_str())
            .fetch_one(w.conn())
            .await?
            .0;
            if !committed {
                return Err(PoolError::BadRequest(format!(
                    "checkpoint_sha256[{i}]: {sha} is not a committed checkpoint of job {}",
                    job.id
                )));
            }
            let present: bool = sqlx::query_scalar::<_, crate::db::Flag>(
                "SELECT EXISTS (SELECT 1 FROM blobs WHERE sha256 = $1)",
            )
            .bind(sha.as_str())
            .fetch_one(w.conn())
            .await?
            .0;
            if present {
                reply.present.push(sha);
                continue;
            }
            sqlx::query(
                "INSERT INTO checkpoint_requests (job_id, sha256, requested_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(&job.id)
            .bind(sha.as_str())
            .bind(w.now)
            .execute(w.conn())
            .await?;
            reply.asked.push(sha);
        }
        w.commit().await?;
        Ok(reply)
    }

    /// Resets the worker slots whose checkpoint is lost: a queued segment
    /// continues a slot checkpoint the pool never received, and the
    /// provider that holds it has not been seen for a lease. The segment
    /// then starts from fresh AdamW moments (a `slot_reset` event), so
    /// the job goes on without it. Returns how many slots it reset.
    pub async fn reset_lost_slots(&self) -> Result<usize, PoolError> {
        let mut w = self.write().await?;
        let gone_before = w.now - self.lease_ms();
        let lost: Vec<LostSlot> = sqlx::query_as(
            "SELECT t.id, t.job_id, t.segment, t.round, t.worker, h.provider_id AS holder FROM tasks t \
             JOIN commitments h ON h.job_id = t.job_id AND h.checkpoint_sha256 = t.slot_sha256 \
             JOIN providers p ON p.id = h.provider_id \
             WHERE t.status = 'queued' AND t.kind = 'train' AND t.slot_sha256 IS NOT NULL \
               AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.sha256 = t.slot_sha256) \
               AND p.last_seen < $1",
        )
        .bind(gone_before)
        .fetch_all(w.conn())
        .await?;
        for slot in &lost {
            sqlx::query("UPDATE tasks SET slot_sha256 = NULL, updated_at = $1 WHERE id = $2")
                .bind(w.now)
                .bind(&slot.id)
                .execute(w.conn())
                .await?;
            w.event(
                &slot.job_id,
                JobEventKind::SlotReset {
                    round: slot.round.map_or(0, to_u64),
                    worker: slot.worker.map_or(0, crate::store::to_u32),
                    provider: ProviderId::from(slot.holder.as_str()),
                },
            )
            .await?;
            tracing::warn!(job = %slot.job_id, segment = slot.segment, holder = %slot.holder,
                "a worker slot's checkpoint is lost with its provider; the slot starts from fresh moments");
        }
        w.commit().await?;
        if !lost.is_empty() {
            self.inner.work.notify_waiters();
        }
        Ok(lost.len())
    }

    /// Closes the rounds of parallel jobs whose late workers' grace has
    /// passed ([`close_if_due`]). Returns how many it closed.
    pub async fn close_late_rounds(&self) -> Result<usize, PoolError> {
        let mut w = self.write().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT j.id FROM jobs j WHERE j.status = 'running' AND j.workers IS NOT NULL \
             AND j.min_workers < j.workers \
             AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.kind = 'outer' \
                             AND t.round = j.round AND t.status IN ('queued', 'leased', 'committed'))",
        )
        .fetch_all(w.conn())
        .await?;
        let mut closed = 0;
        for id in ids {
            let Some(job) = store::job(w.conn(), &id).await? else {
                continue;
            };
            if close_if_due(&mut w, &job).await? {
                closed += 1;
            }
        }
        w.commit().await?;
        Ok(closed)
    }
}

/// A queued segment whose slot checkpoint is lost with its holder.
#[derive(sqlx::FromRow)]
struct LostSlot {
    id: String,
    job_id: String,
    segment: i64,
    round: Option<i64>,
    worker: Option<i64>,
    holder: String,
}

/// The parts of a job the outer step needs, read once.
struct Round {
    spec: JobSpec,
    round: i64,
    step: u64,
    inputs: Vec<OuterInput>,
}

impl Pool {
    /// Checks a provider's outer step and, if the pool's own computation
    /// gives the same bytes, accepts it: the job moves to the next round,
    /// or ends after its last.
    pub async fn commit_outer(
        &self,
        provider: &ProviderId,
        task_id: &str,
        c: OuterCommit,
    ) -> Result<CommitReply, PoolError> {
        let mut conn = self.inner.db.acquire().await?;
        let task = store::task(&mut conn, task_id)
            .await?
            .ok_or_else(|| PoolError::not_found(format!("task {task_id}")))?;
        let job = job_of(&mut conn, &task).await?;
        if task.status == TaskStatus::Committed
            && task.provider_id.as_deref() == Some(provider.as_str())
        {
            // The same accepted step, sent again.
            let stored: Option<String> = sqlx::query_scalar(
                "SELECT signed FROM outer_steps WHERE task_id = $1 AND discarded_at IS NULL",
            )
            .bind(task_id)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(stored) = stored {
                if serde_json::from_str::<gradpool_core::commitment::SignedOuterCommitment>(
                    &stored,
                )? == c.commitment
                {
                    return Ok(CommitReply {
                        accepted: true,
                        job_done: to_u64(task.end_step) >= to_u64(job.steps),
                    });
                }
            }
        }
        let task = leased_task(&mut conn, provider, task_id).await?;
        if task.kind != TaskKind::Outer {
            return Err(PoolError::BadRequest(format!(
                "task {task_id} is not an outer step: commit it with POST /v1/tasks/{task_id}/commit"
            )));
        }
        let round = self
            .check_outer(&mut conn, provider, &task, &job, &c)
            .await?;
        drop(conn);
        let global = c.commitment.commitment.global_sha256.clone();
        let computed = self.recompute(&job, &round).await?;
        let mine = Sha256Hex::of(&computed.global);
        if mine != global || computed.hash != c.commitment.commitment.hash {
            let reason = if mine != global {
                format!("its global checkpoint {global} is not the pool's {mine}")
            } else {
                format!("its chain hash is not the pool's {}", computed.hash)
            };
            return Err(self.forged(provider, &task, round.round, reason).await?);
        }
        // The files are the pool's own: nobody uploads what the pool
        // computed anyway.
        self.store_computed(&mine, computed.global).await?;
        let update = Sha256Hex::of(&computed.update);
        self.store_computed(&update, computed.update).await?;
        let from_global = match (computed.initial, &job.checkpoint_sha256) {
            (Some(initial), _) => {
                let sha = Sha256Hex::of(&initial);
                self.store_computed(&sha, initial).await?;
                sha
            }
            (None, Some(sha)) => sha
                .parse()
                .map_err(|e| PoolError::Internal(format!("stored digest: {e}")))?,
            (None, None) => return Err(PoolError::Internal("a round without its global".into())),
        };
        let stored = Stored {
            from_global,
            update,
            weights: computed.weights,
        };
        self.accept_outer(provider, &task, &round, &c, &stored)
            .await
    }

    /// Every check of an outer commitment short of computing the step:
    /// signer, job, round, step, chain and inputs.
    async fn check_outer(
        &self,
        conn: &mut sqlx::AnyConnection,
        provider: &ProviderId,
        task: &TaskRow,
        job: &JobRow,
        c: &OuterCommit,
    ) -> Result<Round, PoolError> {
        let signed = &c.commitment;
        signed
            .verify()
            .map_err(|e| PoolError::BadRequest(format!("outer commitment signature: {e}")))?;
        if &signed.signer() != provider {
            return Err(PoolError::BadRequest(format!(
                "the outer commitment is signed by {}, not by you ({provider})",
                signed.signer()
            )));
        }
        let cm = &signed.commitment;
        let round = task.round.unwrap_or(-1);
        let want = (job.id.as_str(), to_u64(round), to_u64(task.end_step));
        let got = (cm.job_id.as_str(), cm.round, cm.step);
        if got != want || job.round != round {
            return Err(PoolError::BadRequest(format!(
                "the outer commitment is for job {} round {} step {}, but the task is job {} round {} step {}",
                got.0, got.1, got.2, want.0, want.1, want.2
            )));
        }
        if cm.prev != job.chain_head()? {
            return Err(PoolError::Conflict(format!(
                "outer commitment prev {} is not the round's global commitment {}",
                cm.prev, job.commitment
            )));
        }
        let inputs = round_inputs(conn, job, round).await?;
        if cm.inputs != inputs {
            return Err(PoolError::BadRequest(format!(
                "the outer commitment's inputs are not the round's {} accepted segments",
                inputs.len()
            )));
        }
        let spec = JobSpec::from_toml_str(&job.spec_toml)
            .map_err(|e| PoolError::Internal(format!("job {}: stored spec: {e}", job.id)))?;
        Ok(Round {
            spec,
            round,
            step: cm.step,
            inputs,
        })
    }

    /// The outer step as the pool computes it from the round's global
    /// checkpoint and the workers' pseudo-gradients.
    async fn recompute(&self, job: &JobRow, round: &Round) -> Result<Computed, PoolError> {
        let parallel = round
            .spec
            .parallel
            .ok_or_else(|| PoolError::Internal(format!("job {} is not parallel", job.id)))?;
        let model = crate::model::stored_model(&job.id, job.model.as_deref())?;
        let seed = round.spec.train.seed;
        let global_path = job
            .checkpoint_sha256
            .as_deref()
            .map(|s| s.parse::<Sha256Hex>())
            .transpose()
            .map_err(|e| PoolError::Internal(format!("stored digest: {e}")))?;
        let global_path = match global_path {
            Some(sha) => Some(self.inner.blobs.local(&sha).await?),
            None => None,
        };
        let mut inputs: Vec<(u32, std::path::PathBuf)> = Vec::with_capacity(round.inputs.len());
        for i in &round.inputs {
            inputs.push((
                i.worker,
                self.inner.blobs.local(&i.pseudo_gradient_sha256).await?,
            ));
        }
        let prev = job.chain_head()?;
        let (step, chained) = (round.step, round.inputs.clone());
        // A container job's round 0 starts from its initial checkpoint.
        let initial = match global_path {
            Some(_) => None,
            None => self.initial_of(&job.id).await?,
        };
        tokio::task::spawn_blocking(move || {
            let mut workers = Vec::with_capacity(inputs.len());
            let mut metadata = None;
            for (w, path) in &inputs {
                let d = delta::decode(&std::fs::read(path)?, DeltaKind::PseudoGradient)
                    .map_err(|e| bad(format!("worker {w}: {e}")))?;
                metadata.get_or_insert(d.metadata);
                workers.push((*w, d.values));
            }
            let (global, initial) = match global_path {
                Some(path) => (
                    Global::from_bytes(&std::fs::read(path)?).map_err(bad)?,
                    None,
                ),
                None => {
                    let g = match initial {
                        Some(path) => {
                            gradpool_core::container::initial_global(&std::fs::read(path)?)
                                .map_err(|e| bad(format!("the initial checkpoint: {e}")))?
                        }
                        None => {
                            let metadata =
                                metadata.ok_or_else(|| bad("the round has no segment"))?;
                            Global::initial_for(&model, seed, &metadata)
                        }
                    };
                    let bytes = g.to_bytes();
                    (g, Some(bytes))
                }
            };
            let next = outer::outer_step(&global, &workers, &parallel, step).map_err(bad)?;
            let bytes = next.global.to_bytes();
            let hash = outer_chain(&bytes, &prev, &chained);
            Ok(Computed {
                weights: Sha256Hex::of(&next.global.weights().to_bytes()),
                global: bytes,
                update: next.update,
                hash,
                initial,
            })
        })
        .await?
    }

    /// Puts a file the pool computed into the blob store.
    async fn store_computed(&self, sha: &Sha256Hex, bytes: Vec<u8>) -> Result<(), PoolError> {
        let size = bytes.len() as u64;
        let body =
            futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes::Bytes::from(bytes))]);
        self.inner.blobs.put(sha, body, u64::MAX).await?;
        let mut w = self.write().await?;
        let now = w.now;
        sqlx::query("INSERT INTO blobs (sha256, size, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(sha.as_str())
            .bind(i64::try_from(size).unwrap_or(i64::MAX))
            .bind(now)
            .execute(w.conn())
            .await?;
        w.commit().await
    }

    /// A forged outer step: the task fails, its provider is barred from the
    /// job and its stake slashed (to the customer), and the step is queued
    /// for another provider. Returns the error the provider is answered.
    async fn forged(
        &self,
        provider: &ProviderId,
        task: &TaskRow,
        round: i64,
        reason: String,
    ) -> Result<PoolError, PoolError> {
        let mut w = self.write().await?;
        let task = leased_task(w.conn(), provider, &task.id).await?;
        let job = job_of(w.conn(), &task).await?;
        let now = w.now;
        sqlx::query(
            "UPDATE tasks SET status = 'failed', reason = $1, lease_expires_at = NULL, updated_at = $2 WHERE id = $3",
        )
        .bind(format!("forged outer step: {reason}"))
        .bind(now)
        .bind(&task.id)
        .execute(w.conn())
        .await?;
        let (forfeited, slashed) =
            crate::money::slash(&mut w, provider.as_str(), &job.id, &job.account_id, None, 0)
                .await?;
        crate::audit::bar(
            &mut w,
            &job.id,
            provider.as_str(),
            crate::audit::Evidence::Task(&task.id),
        )
        .await?;
        w.event(
            &job.id,
            JobEventKind::OuterRefused {
                round: to_u64(round),
                provider: provider.clone(),
                reason: reason.clone(),
            },
        )
        .await?;
        crate::queue::queue_outer(&mut w, &job, round).await?;
        w.commit().await?;
        tracing::warn!(job = %job.id, round, provider = %provider, forfeited = %forfeited,
            slashed = %slashed, reason = %reason, "forged outer step refused");
        Ok(PoolError::BadRequest(format!(
            "the outer step does not match the pool's computation: {reason}; \
             you are barred from job {} and your stake is slashed",
            job.id
        )))
    }

    /// Accepts a checked outer step: the job moves to the next round's
    /// global checkpoint, and that round is queued (or the job ends).
    async fn accept_outer(
        &self,
        provider: &ProviderId,
        task: &TaskRow,
        round: &Round,
        c: &OuterCommit,
        stored: &Stored,
    ) -> Result<CommitReply, PoolError> {
        let mut w = self.write().await?;
        // The state may have moved while the step was computed.
        let task = leased_task(w.conn(), provider, &task.id).await?;
        let job = job_of(w.conn(), &task).await?;
        let cm = &c.commitment.commitment;
        if job.round != round.round || job.chain_head()? != cm.prev {
            return Err(PoolError::Conflict(
                "the job moved on while this outer step was checked".into(),
            ));
        }
        let now = w.now;
        let (loss, eval_loss, wait_seconds) = round_figures(&mut w, &job, round.round).await?;
        sqlx::query(
            "INSERT INTO outer_steps (job_id, round, provider_id, task_id, step, global_sha256, prev, hash, \
             signed, loss, eval_loss, committed_at, update_sha256, from_global_sha256, weights_sha256) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(&job.id)
        .bind(round.round)
        .bind(provider.as_str())
        .bind(&task.id)
        .bind(i64::try_from(cm.step).unwrap_or(i64::MAX))
        .bind(cm.global_sha256.as_str())
        .bind(cm.prev.to_string())
        .bind(cm.hash.to_string())
        .bind(serde_json::to_string(&c.commitment)?)
        .bind(f64::from(loss))
        .bind(eval_loss.map(f64::from))
        .bind(now)
        .bind(stored.update.as_str())
        .bind(stored.from_global.as_str())
        .bind(stored.weights.as_str())
        .execute(w.conn())
        .await?;
        sqlx::query(
            "UPDATE tasks SET status = 'committed', step = end_step, lease_expires_at = NULL, updated_at = $1 \
             WHERE id = $2",
        )
        .bind(now)
        .bind(&task.id)
        .execute(w.conn())
        .await?;
        sqlx::query(
            "UPDATE jobs SET step = $1, round = round + 1, checkpoint_sha256 = $2, commitment = $3, last_loss = $4, \
             eval_loss = $5, updated_at = $6 WHERE id = $7",
        )
        .bind(i64::try_from(cm.step).unwrap_or(i64::MAX))
        .bind(cm.global_sha256.as_str())
        .bind(cm.hash.to_string())
        .bind(f64::from(loss))
        .bind(eval_loss.map(f64::from))
        .bind(now)
        .bind(&job.id)
        .execute(w.conn())
        .await?;
        w.event(
            &job.id,
            JobEventKind::OuterStep {
                round: to_u64(round.round),
                step: cm.step,
                provider: provider.clone(),
                workers: cm.inputs.iter().map(|i| i.worker).collect(),
                global_sha256: cm.global_sha256.clone(),
                commitment: cm.hash,
                loss,
                eval_loss,
                wait_seconds,
            },
        )
        .await?;
        let job_done = to_u64(job.steps) <= cm.step;
        if job_done {
            if !crate::audit::finish_if_done(&mut w, &job.id).await? {
                tracing::info!(job = %job.id, "last round closed; the job succeeds once its audits are decided");
            }
        } else {
            let job = job_of(w.conn(), &task).await?;
            let next = u32::try_from(job.round)
                .map_err(|_| PoolError::Internal(format!("job {}: round overflows", job.id)))?;
            crate::queue::queue_round(&mut w, &job, next).await?;
        }
        w.commit().await?;
        tracing::info!(job = %job.id, task = %TaskId::from(task.id.as_str()), provider = %provider,
            round = round.round, step = cm.step, "outer step checked and accepted");
        Ok(CommitReply {
            accepted: true,
            job_done,
        })
    }
}

/// A round's mean last training loss and held-out loss over its workers,
/// and how long it waited between its first and last worker's commitment.
async fn round_figures(
    w: &mut Write<'_>,
    job: &JobRow,
    round: i64,
) -> Result<(f32, Option<f32>, f64), PoolError> {
    let n = job.workers.unwrap_or(1);
    let rows: Vec<(String, Option<f64>, i64)> = sqlx::query_as(
        "SELECT loss_trace, eval_loss, committed_at FROM commitments WHERE job_id = $1 AND segment >= $2 \
         AND segment < $3 ORDER BY segment",
    )
    .bind(&job.id)
    .bind(round * n)
    .bind((round + 1) * n)
    .fetch_all(w.conn())
    .await?;
    let mut losses = Vec::with_capacity(rows.len());
    let mut evals = Vec::with_capacity(rows.len());
    for (trace, eval, _) in &rows {
        let trace: Vec<f32> = serde_json::from_str(trace)?;
        losses.extend(trace.last().copied());
        evals.extend(eval.map(|e| e as f32));
    }
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    let eval = (evals.len() == rows.len() && !evals.is_empty()).then(|| mean(&evals));
    let first = rows.iter().map(|r| r.2).min().unwrap_or(0);
    let last = rows.iter().map(|r| r.2).max().unwrap_or(0);
    Ok((mean(&losses), eval, (last - first) as f64 / 1000.0))
}

fn bad(e: impl std::fmt::Display) -> PoolError {
    PoolError::BadRequest(format!("the round's outer step cannot be computed: {e}"))
}

/// The pool's own outer step: the next global checkpoint, its update file
/// and its chain hash.
struct Computed {
    global: Vec<u8>,
    update: Vec<u8>,
    hash: gradpool_core::signing::ChainHash,
    /// The digest of the weights file of `global`.
    weights: Sha256Hex,
    /// Round 0's global checkpoint, which the pool computed to start from.
    initial: Option<Vec<u8>>,
}

/// What the pool stored of an outer step: the global checkpoint it
/// started from, its update and the weights file the update gives.
struct Stored {
    from_global: Sha256Hex,
    update: Sha256Hex,
    weights: Sha256Hex,
}
