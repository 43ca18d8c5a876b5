//! Jobs: submit, cancel, and the queue of their segments.
//!
//! A job of `S` steps with `checkpoint_every = K` has `ceil(S/K)` segments,
//! done one after the other. A *task* is one lease of one segment: the pool
//! queues a task for segment 0 on submit and the next segment when a
//! commitment is accepted (see [`crate::lease`] and [`crate::commit`]).

use crate::error::PoolError;
use crate::store::{self, to_u32, TaskRow};
use crate::tx::Write;
use crate::Pool;
use gradpool_core::commitment::genesis;
use gradpool_core::model::human_bytes;
use gradpool_core::state::JobBlobRole;
use gradpool_core::wire::{JobEventKind, JobStatus, JobView, SubmitJob, TaskKind};
use gradpool_core::{AccountId, JobId, JobSpec, Piconero, Sha256Hex};

/// Puts the work of a task that ended unfinished (lease lost, handed
/// back) in the queue again: a replay goes to another validator, a
/// training segment is queued unless its job has ended.
pub(crate) async fn requeue(w: &mut Write<'_>, task: &TaskRow) -> Result<(), PoolError> {
    if let Some(audit_id) = task.audit_id.as_deref() {
        return crate::audit::requeue_replay(w, audit_id).await;
    }
    let job = crate::queue::job_of(w.conn(), task).await?;
    if job.status.is_final() {
        return Ok(());
    }
    if task.kind == TaskKind::Outer {
        crate::queue::queue_outer(w, &job, task.round.unwrap_or(job.round)).await?;
    } else {
        crate::queue::queue_segment(w, &job, to_u32(task.segment)).await?;
    }
    Ok(())
}

impl Pool {
    /// Submits a job: validates the spec and the data, creates the job and
    /// queues its first segment.
    pub async fn submit_job(
        &self,
        account: &AccountId,
        req: SubmitJob,
    ) -> Result<JobView, PoolError> {
        let spec = JobSpec::from_toml_str(&req.spec_toml)
            .map_err(|e| PoolError::InvalidSpec(e.to_string()))?;
        if let Some(want) = &spec.data.sha256 {
            if want != &req.data_sha256 {
                return Err(PoolError::BadRequest(format!(
                    "data.sha256: the spec wants data {want}, but data_sha256 is {}",
                    req.data_sha256
                )));
            }
        }
        let caller = crate::auth::Caller::Customer(account.clone());
        self.uploaded_blob(&caller, &req.data_sha256, "data_sha256", "the data")
            .await?;
        let job_blobs = self.container_blobs(&caller, &spec).await?;
        let sealed_keys = self.check_confidential(&spec, &req).await?;
        let (model, memory) = self
            .size_job(&spec, &req.data_sha256, req.data_shape)
            .await?;
        if let Some(booking) = &req.booking {
            let mut conn = self.inner.db.acquire().await?;
            check_booking(&mut conn, account.as_str(), booking, self.now()).await?;
        }
        let id = JobId::random();
        let min_memory = (i64::from(spec.resources.min_memory_gib) << 30)
            .max(i64::try_from(memory.total_bytes).unwrap_or(i64::MAX));
        let steps = i64::try_from(spec.train.steps)
            .map_err(|_| PoolError::InvalidSpec("train.steps: too large".into()))?;
        let every = i64::try_from(spec.train.checkpoint_every)
            .map_err(|_| PoolError::InvalidSpec("train.checkpoint_every: too large".into()))?;
        // A parallel job's segments are its workers' inner segments, round
        // after round (see `queue::queue_segment`).
        let (workers, min_workers, segments) = match &spec.parallel {
            Some(p) => {
                let rounds = p.rounds(spec.train.steps);
                let segments = rounds
                    .checked_mul(u64::from(p.workers))
                    .and_then(|s| i64::try_from(s).ok())
                    .ok_or_else(|| {
                        PoolError::InvalidSpec("parallel.workers: too many segments".into())
                    })?;
                (
                    Some(i64::from(p.workers)),
                    Some(i64::from(p.min_workers)),
                    segments,
                )
            }
            None => (None, None, i64::from(spec.segment_count())),
        };
        let budget = spec.budget.total.unwrap_or(Piconero::ZERO);
        let budget_i64 = i64::try_from(budget.0)
            .map_err(|_| PoolError::InvalidSpec("budget.total_xmr: too large".into()))?;
        let max_price = spec
            .budget
            .max_price_per_hour
            .map(|p| {
                i64::try_from(p.0).map_err(|_| {
                    PoolError::InvalidSpec("budget.max_price_xmr_per_hour: too large".into())
                })
            })
            .transpose()?;
        let mut w = self.write().await?;
        let now = w.now;
        sqlx::query(
            "INSERT INTO jobs (id, account_id, name, spec_toml, data_sha256, device, min_memory_bytes, status, \
             steps, checkpoint_every, segments_total, commitment, created_at, updated_at, budget, \
             max_price_per_hour, flops_per_step, verification, model, memory_bytes, booking_id, workers, \
             min_workers, region, runtime, confidential, tier) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26)",
        )
        .bind(id.as_str())
        .bind(account.as_str())
        .bind(&spec.name)
        .bind(&req.spec_toml)
        .bind(req.data_sha256.as_str())
        .bind(spec.resources.device.as_str())
        .bind(min_memory)
        .bind(steps)
        .bind(every)
        .bind(segments)
        .bind(genesis(&id).to_string())
        .bind(now)
        .bind(now)
        .bind(budget_i64)
        .bind(max_price)
        .bind(spec.flops_per_step())
        .bind(spec.verification.as_str())
        .bind(serde_json::to_string(&model)?)
        .bind(i64::try_from(memory.total_bytes).unwrap_or(i64::MAX))
        .bind(req.booking.as_deref())
        .bind(workers)
        .bind(min_workers)
        .bind(spec.resources.region.as_deref())
        .bind(spec.runtime().as_str())
        .bind(i64::from(spec.privacy.is_some()))
        .bind(crate::privacy::tier_of(&spec).map(|t| t.as_str()))
        .execute(w.conn())
        .await?;
        crate::privacy::store_keys(w.conn(), id.as_str(), &sealed_keys).await?;
        for (sha, role) in &job_blobs {
            sqlx::query("INSERT INTO job_blobs (job_id, sha256, role) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(id.as_str())
                .bind(sha.as_str())
                .bind(role.as_str())
                .execute(w.conn())
                .await?;
        }
        crate::escrow::hold_budget(&mut w, account.as_str(), id.as_str(), budget).await?;
        w.event(
            id.as_str(),
            JobEventKind::Status {
                status: JobStatus::Queued,
                reason: None,
            },
        )
        .await?;
        let job = store::job(w.conn(), id.as_str())
            .await?
            .ok_or_else(|| PoolError::Internal("job vanished".into()))?;
        if job.workers.is_some() {
            crate::queue::queue_round(&mut w, &job, 0).await?;
        } else {
            crate::queue::queue_segment(&mut w, &job, 0).await?;
        }
        let view = store::job(w.conn(), id.as_str())
            .await?
            .ok_or_else(|| PoolError::Internal("job vanished".into()))?
            .view()?;
        w.commit().await?;
        tracing::info!(job = %id, account = %account, name = %spec.name, steps = spec.train.steps,
            segments, workers, "job submitted");
        Ok(view)
    }

    /// Refuses a blob the caller cannot read or the pool does not hold
    /// (`field` names it, `what` says what it should be).
    async fn uploaded_blob(
        &self,
        caller: &crate::auth::Caller,
        sha: &Sha256Hex,
        field: &str,
        what: &str,
    ) -> Result<u64, PoolError> {
        let size: Option<i64> = sqlx::query_scalar("SELECT size FROM blobs WHERE sha256 = $1")
            .bind(sha.as_str())
            .fetch_optional(&self.inner.db)
            .await?;
        match size {
            Some(size)
                if self.can_read_blob(caller, sha).await?
                    && self.inner.blobs.exists(sha).await? =>
            {
                Ok(u64::try_from(size).unwrap_or(0))
            }
            _ => Err(PoolError::BadRequest(format!(
                "{field}: blob {sha} not found; upload {what} first"
            ))),
        }
    }

    /// A container job's image and files, each uploaded by the customer
    /// and pinned by the spec; the image no larger than this pool allows.
    /// Nothing for a native job.
    async fn container_blobs(
        &self,
        caller: &crate::auth::Caller,
        spec: &JobSpec,
    ) -> Result<Vec<(Sha256Hex, JobBlobRole)>, PoolError> {
        let Some(c) = spec.container() else {
            return Ok(Vec::new());
        };
        if let Some(field) = c.unpinned() {
            return Err(PoolError::InvalidSpec(format!(
                "{field}: required by a pool (`gradpool job submit` uploads the file and sets it)"
            )));
        }
        let mut out = Vec::new();
        if let Some(image) = &c.image_sha256 {
            let size = self
                .uploaded_blob(caller, image, "container.image_sha256", "the image")
                .await?;
            let cap = self.inner.config.max_image_bytes;
            if size > cap {
                return Err(PoolError::InvalidSpec(format!(
                    "container.image: {}, more than this pool's limit of {} for an image; \
                     build it from a smaller base or with fewer packages",
                    human_bytes(size),
                    human_bytes(cap)
                )));
            }
            out.push((image.clone(), JobBlobRole::Image));
        }
        for f in &c.files {
            if let Some(sha) = &f.sha256 {
                let field = format!("container.file_sha256.{}", f.name);
                self.uploaded_blob(caller, sha, &field, &f.name).await?;
                out.push((sha.clone(), JobBlobRole::File));
            }
        }
        match (&c.initial_sha256, &spec.parallel) {
            (Some(initial), _) => {
                self.uploaded_blob(
                    caller,
                    initial,
                    "container.initial_sha256",
                    "the initial checkpoint",
                )
                .await?;
                let cap = (u64::from(c.memory_gib) << 30).saturating_add(1 << 30);
                crate::model::check_initial(self.inner.blobs.local(initial).await?, cap).await?;
                out.push((initial.clone(), JobBlobRole::Initial));
            }
            (None, Some(_)) => {
                return Err(PoolError::InvalidSpec(
                    "container.initial_sha256: required for a parallel container job: the \
                     weights every worker of round 0 starts from (`gradpool job submit` makes \
                     and uploads it)"
                        .into(),
                ))
            }
            (None, None) => {}
        }
        Ok(out)
    }

    /// Cancels a job of `account` and every task of it that is queued or
    /// leased.
    pub async fn cancel_job(
        &self,
        account: &AccountId,
        job_id: &str,
    ) -> Result<JobView, PoolError> {
        let mut w = self.write().await?;
        let job = store::owned_job(w.conn(), account.as_str(), job_id).await?;
        match job.status {
            JobStatus::Cancelled => return job.view(),
            s if s.is_final() => {
                return Err(PoolError::Conflict(format!(
                    "job {job_id} already {}",
                    s.as_str()
                )));
            }
            _ => {}
        }
        let now = w.now;
        sqlx::query(
            "UPDATE tasks SET status = 'cancelled', updated_at = $1 \
             WHERE job_id = $2 AND kind IN ('train', 'outer') AND status IN ('queued', 'leased')",
        )
        .bind(now)
        .bind(job_id)
        .execute(w.conn())
        .await?;
        // Settled first: a job's event stream ends with its final status.
        crate::escrow::settle_job(&mut w, &job).await?;
        crate::audit::end_job(
            &mut w,
            job_id,
            JobStatus::Cancelled,
            Some("cancelled by the customer".into()),
        )
        .await?;
        let view = store::owned_job(w.conn(), account.as_str(), job_id)
            .await?
            .view()?;
        w.commit().await?;
        tracing::info!(job = %job_id, "job cancelled");
        Ok(view)
    }
}

/// A booking a job may be submitted into: the customer's own, and not
/// over or cancelled.
async fn check_booking(
    conn: &mut sqlx::AnyConnection,
    account: &str,
    booking: &str,
    now: i64,
) -> Result<(), PoolError> {
    let row: Option<(String, String, i64)> =
        sqlx::query_as("SELECT account_id, status, ends_at FROM bookings WHERE id = $1")
            .bind(booking)
            .fetch_optional(conn)
            .await?;
    match row {
        Some((owner, status, ends_at)) if owner == account => {
            let status: gradpool_core::state::BookingStatus = status.parse()?;
            if status != gradpool_core::state::BookingStatus::Reserved || ends_at <= now {
                return Err(PoolError::BadRequest(format!(
                    "booking: {booking} is over (or cancelled); book again (gradpool book)"
                )));
            }
            Ok(())
        }
        _ => Err(PoolError::BadRequest(format!(
            "booking: you have no booking {booking} (gradpool book list shows yours)"
        ))),
    }
}
