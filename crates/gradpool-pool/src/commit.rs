//! Commits: a provider's signed claim that it trained a segment, checked
//! (signer, chain, checkpoint, loss trace) before the pool accepts it,
//! queues the next segment and draws an audit.

use crate::error::PoolError;
use crate::escrow::WorkDone;
use crate::queue::job_of;
use crate::queue::leased_task;
use crate::store::{self, to_u32, to_u64, JobRow, TaskRow};
use crate::Pool;
use crate::{escrow, ledger};
use gradpool_core::commitment::loss_trace_hash;
use gradpool_core::delta::{self, DeltaKind};
use gradpool_core::model::ModelMeta;
use gradpool_core::state::TaskStatus;
use gradpool_core::wire::{Commit, CommitReply, JobEventKind, JobStatus, TaskKind};
use gradpool_core::{ProviderId, Sha256Hex, SignedCommitment};

impl Pool {
    /// Checks a segment's signed commitment and, if it holds, accepts it:
    /// the job advances to the next segment or succeeds.
    pub async fn commit(
        &self,
        provider: &ProviderId,
        task_id: &str,
        c: Commit,
    ) -> Result<CommitReply, PoolError> {
        let mut conn = self.inner.db.acquire().await?;
        let task = store::task(&mut conn, task_id)
            .await?
            .ok_or_else(|| PoolError::not_found(format!("task {task_id}")))?;
        let job = job_of(&mut conn, &task).await?;
        // Idempotence: the same accepted commitment, sent again.
        if task.status == TaskStatus::Committed
            && task.provider_id.as_deref() == Some(provider.as_str())
        {
            let stored: Option<String> =
                sqlx::query_scalar("SELECT signed FROM commitments WHERE task_id = $1")
                    .bind(task_id)
                    .fetch_optional(&mut *conn)
                    .await?;
            if let Some(stored) = stored {
                if serde_json::from_str::<SignedCommitment>(&stored)? == c.commitment {
                    return Ok(CommitReply {
                        accepted: true,
                        job_done: to_u64(task.end_step) == to_u64(job.steps),
                    });
                }
            }
        }
        drop(conn);
        c.check().map_err(PoolError::BadRequest)?;
        self.check_commit(provider, &task, &job, &c).await?;

        let mut w = self.write().await?;
        // The state may have moved while the checkpoint was hashed.
        let task = leased_task(w.conn(), provider, task_id).await?;
        let job = job_of(w.conn(), &task).await?;
        if job.chain_head()? != c.commitment.commitment.prev {
            return Err(PoolError::Conflict(
                "the job's commitment chain moved on while this commit was checked".into(),
            ));
        }
        let now = w.now;
        let cm = &c.commitment.commitment;
        let end = i64::try_from(cm.end_step)
            .map_err(|_| PoolError::BadRequest("end_step too large".into()))?;
        sqlx::query(
            "INSERT INTO commitments (job_id, segment, provider_id, task_id, start_step, end_step, checkpoint_sha256, \
             prev, hash, signed, loss_trace, committed_at, eval_loss, pseudo_gradient_sha256) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&job.id)
        .bind(task.segment)
        .bind(provider.as_str())
        .bind(task_id)
        .bind(task.start_step)
        .bind(end)
        .bind(cm.checkpoint_sha256.as_str())
        .bind(cm.prev.to_string())
        .bind(cm.hash.to_string())
        .bind(serde_json::to_string(&c.commitment)?)
        .bind(serde_json::to_string(&c.loss_trace)?)
        .bind(now)
        .bind(c.eval_loss.map(f64::from))
        .bind(cm.pseudo_gradient_sha256.as_ref().map(|s| s.as_str().to_owned()))
        .execute(w.conn())
        .await?;
        sqlx::query(
            "UPDATE tasks SET status = 'committed', step = $1, lease_expires_at = NULL, updated_at = $2, \
             share = $3, foreign_processes = $4 WHERE id = $5",
        )
        .bind(end)
        .bind(now)
        .bind(c.dedication.map(|d| d.share))
        .bind(c.dedication.map(|d| i64::from(d.foreign_processes)))
        .bind(task_id)
        .execute(w.conn())
        .await?;
        let loss = c.loss_trace.last().copied().unwrap_or(0.0);
        if job.workers.is_some() {
            // A worker's segment: the job moves on only with the round's
            // outer step.
            sqlx::query(
                "UPDATE jobs SET segments_done = segments_done + 1, updated_at = $1 WHERE id = $2",
            )
            .bind(now)
            .bind(&job.id)
            .execute(w.conn())
            .await?;
        } else {
            sqlx::query(
                "UPDATE jobs SET step = $1, segments_done = segments_done + 1, checkpoint_sha256 = $2, commitment = $3, \
                 last_loss = $4, eval_loss = $5, updated_at = $6 WHERE id = $7",
            )
            .bind(end)
            .bind(cm.checkpoint_sha256.as_str())
            .bind(cm.hash.to_string())
            .bind(f64::from(loss))
            .bind(c.eval_loss.map(f64::from))
            .bind(now)
            .bind(&job.id)
            .execute(w.conn())
            .await?;
        }
        w.event(
            &job.id,
            JobEventKind::Checkpoint {
                provider: provider.clone(),
                segment: cm.segment,
                step: cm.end_step,
                checkpoint_sha256: cm.checkpoint_sha256.clone(),
                commitment: cm.hash,
                loss,
                eval_loss: c.eval_loss,
            },
        )
        .await?;
        crate::escrow::pay_segment(
            &mut w,
            &job,
            WorkDone {
                task_id,
                segment: cm.segment,
                provider,
                reported_ms: c.compute_ms,
                kind: TaskKind::Train,
            },
            self.fees(),
        )
        .await?;
        // Drawn only now, after the commitment is accepted, so the provider
        // cannot know beforehand which segments are replayed.
        crate::audit::draw_audit(&mut w, &job.id, job.verification, cm.segment, provider).await?;
        let job_done = job.workers.is_none() && end >= job.steps;
        let left = ledger::balance_of(w.conn(), &escrow::escrow_account(&job.id)).await?;
        if job.workers.is_some() && !(job.budget > 0 && left == 0) {
            crate::round::segment_committed(&mut w, &job).await?;
        } else if job_done {
            if !crate::audit::finish_if_done(&mut w, &job.id).await? {
                tracing::info!(job = %job.id, "last segment committed; the job succeeds once its audits are decided");
            }
        } else if job.budget > 0 && left == 0 {
            let why = format!(
                "budget exhausted after segment {} (step {}): submit again with a larger budget.total_xmr",
                cm.segment, cm.end_step
            );
            crate::escrow::settle_job(&mut w, &job).await?;
            crate::audit::end_job(&mut w, &job.id, JobStatus::Failed, Some(why)).await?;
        } else {
            crate::queue::queue_segment(&mut w, &job, cm.segment + 1).await?;
        }
        w.commit().await?;
        tracing::info!(job = %job.id, task = %task_id, provider = %provider, segment = cm.segment,
            step = cm.end_step, "segment committed");
        Ok(CommitReply {
            accepted: true,
            job_done,
        })
    }

    /// Every check of a commitment that needs no write: lease, signature,
    /// signer, segment, chain, checkpoint hash and loss trace.
    async fn check_commit(
        &self,
        provider: &ProviderId,
        task: &TaskRow,
        job: &JobRow,
        c: &Commit,
    ) -> Result<(), PoolError> {
        if task.status != TaskStatus::Leased
            || task.provider_id.as_deref() != Some(provider.as_str())
        {
            return Err(PoolError::Conflict(format!(
                "task {} is not leased to you (it is {})",
                task.id, task.status
            )));
        }
        match task.kind {
            TaskKind::Train => {}
            TaskKind::Replay => {
                return Err(PoolError::BadRequest(format!(
                    "task {} is a replay: report it with POST /v1/tasks/{}/replay",
                    task.id, task.id
                )))
            }
            TaskKind::Outer => {
                return Err(PoolError::BadRequest(format!(
                    "task {} is an outer step: commit it with POST /v1/tasks/{}/outer",
                    task.id, task.id
                )))
            }
        }
        let signed = &c.commitment;
        signed
            .verify()
            .map_err(|e| PoolError::BadRequest(format!("commitment signature: {e}")))?;
        let signer = signed.signer();
        if &signer != provider {
            return Err(PoolError::BadRequest(format!(
                "the commitment is signed by {signer}, not by you ({provider})"
            )));
        }
        let cm = &signed.commitment;
        let want = (
            job.id.as_str(),
            to_u32(task.segment),
            to_u64(task.start_step),
            to_u64(task.end_step),
        );
        let got = (cm.job_id.as_str(), cm.segment, cm.start_step, cm.end_step);
        if got != want {
            return Err(PoolError::BadRequest(format!(
                "the commitment is for job {} segment {} steps [{}, {}), but the task is job {} segment {} steps [{}, {})",
                got.0, got.1, got.2, got.3, want.0, want.1, want.2, want.3
            )));
        }
        if cm.prev != job.chain_head()? {
            return Err(PoolError::Conflict(format!(
                "commitment.prev {} does not chain from the job's last accepted commitment {}",
                cm.prev, job.commitment
            )));
        }
        let steps = cm.end_step - cm.start_step;
        if c.loss_trace.len() as u64 != steps {
            return Err(PoolError::BadRequest(format!(
                "loss_trace has {} entries, the segment has {steps} steps",
                c.loss_trace.len()
            )));
        }
        if loss_trace_hash(&c.loss_trace) != cm.loss_trace_blake3 {
            return Err(PoolError::BadRequest(
                "commitment.loss_trace_blake3 does not match the loss trace".into(),
            ));
        }
        let class = {
            let mut conn = self.inner.db.acquire().await?;
            crate::model::class_for(&mut conn, provider.as_str(), job).await?
        };
        if cm.class != class {
            return Err(PoolError::BadRequest(format!(
                "commitment.class {} is not your class for this job ({class})",
                cm.class
            )));
        }
        // Every segment moves the weights: a checkpoint the job already has
        // (or its start) is an old one submitted again.
        let earlier: Option<i64> = sqlx::query_scalar(
            "SELECT segment FROM commitments WHERE job_id = $1 AND checkpoint_sha256 = $2",
        )
        .bind(&job.id)
        .bind(cm.checkpoint_sha256.as_str())
        .fetch_optional(&self.inner.db)
        .await?;
        if let Some(earlier) = earlier {
            return Err(PoolError::BadRequest(format!(
                "checkpoint {} is the one committed for segment {earlier}: a segment must produce a new checkpoint",
                cm.checkpoint_sha256
            )));
        }
        let model = crate::model::stored_model(&job.id, job.model.as_deref())?;
        if let Some(round) = task.round {
            return self
                .check_pseudo_gradient(provider, job, round, cm, model)
                .await;
        }
        if cm.pseudo_gradient_sha256.is_some() {
            return Err(PoolError::BadRequest(
                "commitment.pseudo_gradient_sha256: only a parallel job's segment sends one".into(),
            ));
        }
        let path = self
            .uploaded(provider, "checkpoint", &cm.checkpoint_sha256)
            .await?;
        if job.confidential {
            // A sealed checkpoint: its H chains the plaintext, which only
            // key holders read; they and the customer check it.
            return self.check_sealed(&path, &model).await;
        }
        let hash = match model {
            ModelMeta::Container { .. } => {
                let start = job
                    .checkpoint_sha256
                    .as_deref()
                    .map(|sha| sha.parse::<Sha256Hex>())
                    .transpose()
                    .map_err(|e| PoolError::Internal(format!("job {}: {e}", job.id)))?;
                let start = match start {
                    Some(sha) => Some(self.inner.blobs.local(&sha).await?),
                    None => None,
                };
                crate::model::inspect_container_checkpoint(path, start, cm.end_step, cm.prev)
                    .await?
            }
            model => crate::model::inspect_checkpoint(path, model, cm.end_step, cm.prev).await?,
        };
        if hash != cm.hash {
            return Err(PoolError::BadRequest(format!(
                "commitment.hash {} is not BLAKE3(checkpoint ‖ prev)",
                cm.hash
            )));
        }
        Ok(())
    }

    /// A confidential job's checkpoint must be a sealed file, of a size
    /// that seals a checkpoint of the job's model (a container job's: one
    /// its memory holds).
    async fn check_sealed(
        &self,
        path: &std::path::Path,
        model: &ModelMeta,
    ) -> Result<(), PoolError> {
        use tokio::io::AsyncReadExt;
        let file = tokio::fs::File::open(path).await?;
        let sealed = file.metadata().await?.len();
        let fits = match model {
            ModelMeta::Container { memory_gib } => {
                0..=(u64::from(*memory_gib) << 30).saturating_add(1 << 30)
            }
            model => gradpool_core::checkpoint::size_range(model),
        };
        match gradpool_core::privacy::plaintext_size(sealed) {
            Some(plain) if fits.contains(&plain) => {}
            Some(plain) => {
                return Err(PoolError::BadRequest(format!(
                    "checkpoint: it seals {plain} bytes, and a checkpoint of this job's model \
                     takes {} to {}",
                    fits.start(),
                    fits.end()
                )))
            }
            None => {
                return Err(PoolError::BadRequest(format!(
                "checkpoint: {sealed} bytes is not the size of a sealed file (truncated or padded)"
            )))
            }
        }
        let mut head = Vec::new();
        file.take(gradpool_core::privacy::HEADER as u64)
            .read_to_end(&mut head)
            .await?;
        if !gradpool_core::privacy::looks_sealed(&head) {
            return Err(PoolError::BadRequest(
                "checkpoint: a confidential job's checkpoint must be sealed under its data key"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The blob `sha`, which `provider` must have uploaded: committing to
    /// someone else's blob by its digest would grant read access to it.
    async fn uploaded(
        &self,
        provider: &ProviderId,
        what: &str,
        sha: &Sha256Hex,
    ) -> Result<std::path::PathBuf, PoolError> {
        let uploaded: bool = sqlx::query_scalar::<_, crate::db::Flag>(
            "SELECT EXISTS (SELECT 1 FROM blob_uploads WHERE sha256 = $1 AND principal = $2)",
        )
        .bind(sha.as_str())
        .bind(provider.as_str())
        .fetch_one(&self.inner.db)
        .await?
        .0;
        // Only then fetched (from object storage): naming someone else's
        // blob costs the pool nothing.
        let path = match uploaded {
            true => self.inner.blobs.local(sha).await?,
            false => std::path::PathBuf::new(),
        };
        if !uploaded || !tokio::fs::try_exists(&path).await? {
            return Err(PoolError::BadRequest(format!(
                "{what} blob {sha} not found among this provider's uploads; upload it before committing"
            )));
        }
        Ok(path)
    }

    /// A parallel job's inner segment sends its pseudo-gradient, not its
    /// checkpoint: the file must be this provider's upload, of the round,
    /// step and compression of the job, with exactly the model's
    /// parameters, every value finite. Whether it is the one the segment
    /// computes is for the audits, as for any checkpoint.
    async fn check_pseudo_gradient(
        &self,
        provider: &ProviderId,
        job: &JobRow,
        round: i64,
        cm: &gradpool_core::Commitment,
        model: gradpool_core::model::ModelMeta,
    ) -> Result<(), PoolError> {
        let sha = cm.pseudo_gradient_sha256.as_ref().ok_or_else(|| {
            PoolError::BadRequest(
                "commitment.pseudo_gradient_sha256: required for a parallel job's segment".into(),
            )
        })?;
        let path = self.uploaded(provider, "pseudo-gradient", sha).await?;
        let spec = gradpool_core::spec::JobSpec::from_toml_str(&job.spec_toml)
            .map_err(|e| PoolError::Internal(format!("job {}: stored spec: {e}", job.id)))?;
        let compression = spec.parallel.map(|p| p.compression).unwrap_or_default();
        let want = (to_u64(round), cm.end_step, compression);
        let params = self.parallel_shapes(&job.id, &model).await?;
        tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path)?;
            let bad = |reason: String| PoolError::BadRequest(format!("pseudo-gradient: {reason}"));
            let d =
                delta::decode(&bytes, DeltaKind::PseudoGradient).map_err(|e| bad(e.to_string()))?;
            if (d.round, d.step, d.compression) != want {
                return Err(bad(format!(
                    "it is round {} at step {} ({}), the segment is round {} to step {} ({})",
                    d.round,
                    d.step,
                    d.compression.as_str(),
                    want.0,
                    want.1,
                    want.2.as_str()
                )));
            }
            if d.values.len() != params.len()
                || params
                    .iter()
                    .any(|(name, shape)| d.values.get(name).map(|(s, _)| s) != Some(shape))
            {
                return Err(bad("its tensors are not the model's parameters".into()));
            }
            Ok(())
        })
        .await?
    }
}
