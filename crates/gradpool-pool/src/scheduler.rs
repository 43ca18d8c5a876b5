//! Jobs, the task queue, leases and commits.
//!
//! A job of `S` steps with `checkpoint_every = K` has `ceil(S/K)` segments,
//! done one after the other. A *task* is one lease of one segment: the pool
//! queues a task for segment 0 on submit, leases queued tasks to providers
//! that heart-beat with spare capacity (oldest job first, device permitting),
//! and queues the next segment when a commitment is accepted. A lease that
//! is not renewed by heartbeats expires: the reaper marks the task
//! `expired` and queues a new task for the same segment, which resumes from
//! the job's last accepted checkpoint.
//!
//! Task statuses: `queued`, `leased`, `committed`, `expired`, `released`
//! (handed back by a pausing provider), `failed`,
//! `cancelled`.

use crate::auth::{new_session_token, secret_hash};
use crate::error::PoolError;
use crate::escrow::WorkDone;
use crate::store::{self, to_u32, to_u64, JobRow, TaskRow, TASK_COLUMNS};
use crate::Pool;
use crate::{escrow, ledger};
use gradpool_core::commitment::{genesis, loss_trace_hash, registration_message};
use gradpool_core::spec::DeviceRequest;
use gradpool_core::state::{ProviderChange, TaskStatus};
use gradpool_core::wire::{
    Assignment, Commit, CommitReply, Heartbeat, HeartbeatReply, JobEvent, JobEventKind, JobStatus,
    JobView, Progress, Register, Registered, ReplayTarget, SubmitJob, TaskFailed, TaskKind,
};
use gradpool_core::{AccountId, JobId, JobSpec, Piconero, ProviderId, SignedCommitment, TaskId};
use sqlx::SqliteConnection;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A segment that failed on this many different providers fails its job.
/// A provider never gets a segment it failed again, so one broken rig cannot
/// fail a job alone.
pub const MAX_SEGMENT_FAILURES: i64 = 3;
/// The longest a heartbeat is held waiting for work.
pub const MAX_WAIT_SECONDS: u32 = 30;
/// How far a registration's timestamp may be from the pool's clock.
pub const REGISTRATION_SKEW_SECONDS: i64 = 300;

/// A write transaction: holds the pool's write lock, collects the events it
/// appends and publishes them (and wakes waiting providers if it queued
/// work) only once it has committed.
pub(crate) struct Write<'a> {
    pool: &'a Pool,
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    events: Vec<JobEvent>,
    queued_work: bool,
    pub(crate) now: i64,
    _lock: tokio::sync::MutexGuard<'a, ()>,
}

impl<'a> Write<'a> {
    pub(crate) fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }

    pub(crate) fn pool(&self) -> &'a Pool {
        self.pool
    }

    /// The ledger account of `kind` owned by `owner`, created in this
    /// transaction if missing.
    pub(crate) async fn account(
        &mut self,
        kind: ledger::AccountKind,
        owner: &str,
    ) -> Result<ledger::LedgerAccountId, PoolError> {
        Ok(ledger::account_in(&mut self.tx, self.now, kind, owner).await?)
    }

    /// Posts a journal entry in this transaction (see [`ledger::post_in`]).
    pub(crate) async fn post(
        &mut self,
        key: &str,
        memo: &str,
        postings: &[(ledger::LedgerAccountId, i64)],
    ) -> Result<ledger::EntryId, PoolError> {
        Ok(ledger::post_in(&mut self.tx, self.now, key, memo, postings).await?)
    }

    /// Moves `amount` between two ledger accounts in this transaction.
    pub(crate) async fn transfer(
        &mut self,
        from: &ledger::LedgerAccountId,
        to: &ledger::LedgerAccountId,
        amount: Piconero,
        key: &str,
        memo: &str,
    ) -> Result<ledger::EntryId, PoolError> {
        Ok(ledger::transfer_in(&mut self.tx, self.now, from, to, amount, key, memo).await?)
    }

    /// Wakes long-polling providers once this transaction commits.
    pub(crate) fn wake_providers(&mut self) {
        self.queued_work = true;
    }

    pub(crate) async fn event(
        &mut self,
        job_id: &str,
        kind: JobEventKind,
    ) -> Result<(), PoolError> {
        let now = self.now;
        let event = store::insert_event(&mut self.tx, job_id, kind, now).await?;
        self.events.push(event);
        Ok(())
    }

    /// Puts the work of a task that ended unfinished (lease lost, handed
    /// back) in the queue again: a replay goes to another validator, a
    /// training segment is queued unless its job has ended.
    pub(crate) async fn requeue(&mut self, task: &TaskRow) -> Result<(), PoolError> {
        if let Some(audit_id) = task.audit_id.as_deref() {
            return self.requeue_replay(audit_id).await;
        }
        let job = job_of(self.conn(), task).await?;
        if !job.status.is_final() {
            self.queue_segment(&job, to_u32(task.segment)).await?;
        }
        Ok(())
    }

    /// Queues a new task for a segment of a job.
    pub(crate) async fn queue_segment(
        &mut self,
        job: &JobRow,
        segment: u32,
    ) -> Result<TaskId, PoolError> {
        let k = job.checkpoint_every;
        let start = i64::from(segment) * k;
        let end = (start + k).min(job.steps);
        let id = TaskId::random();
        sqlx::query(
            "INSERT INTO tasks (id, job_id, segment, start_step, end_step, status, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
        )
        .bind(id.as_str())
        .bind(&job.id)
        .bind(i64::from(segment))
        .bind(start)
        .bind(end)
        .bind(self.now)
        .bind(self.now)
        .execute(&mut *self.tx)
        .await?;
        self.queued_work = true;
        Ok(id)
    }

    /// Sets a job's status (and error) and logs the change. A job that ends
    /// takes its open audits with it.
    pub(crate) async fn set_job_status(
        &mut self,
        job_id: &str,
        status: JobStatus,
        reason: Option<String>,
    ) -> Result<(), PoolError> {
        if status.is_final() {
            self.void_audits(job_id).await?;
        }
        sqlx::query(
            "UPDATE jobs SET status = ?, error = COALESCE(?, error), updated_at = ? WHERE id = ?",
        )
        .bind(status.as_str())
        .bind(reason.as_deref())
        .bind(self.now)
        .bind(job_id)
        .execute(&mut *self.tx)
        .await?;
        self.event(job_id, JobEventKind::Status { status, reason })
            .await
    }

    pub(crate) async fn commit(self) -> Result<(), PoolError> {
        self.tx.commit().await?;
        self.pool.publish(self.events);
        if self.queued_work {
            self.pool.inner.work.notify_waiters();
        }
        Ok(())
    }
}

fn device_str(d: DeviceRequest) -> &'static str {
    match d {
        DeviceRequest::Any => "any",
        DeviceRequest::Cpu => "cpu",
        DeviceRequest::Cuda => "cuda",
    }
}

/// The assignment a provider gets for a leased task: a segment to train
/// from the job's last accepted checkpoint, or one to replay for an audit.
async fn assignment(
    conn: &mut SqliteConnection,
    job: &JobRow,
    task: &TaskRow,
    lease_seconds: u32,
) -> Result<Assignment, PoolError> {
    let parse = |s: &str| {
        s.parse()
            .map_err(|e| PoolError::Internal(format!("stored digest: {e}")))
    };
    let mut out = Assignment {
        task_id: TaskId::from(task.id.as_str()),
        job_id: JobId::from(job.id.as_str()),
        segment: to_u32(task.segment),
        start_step: to_u64(task.start_step),
        end_step: to_u64(task.end_step),
        spec_toml: job.spec_toml.clone(),
        data_sha256: parse(&job.data_sha256)?,
        start_checkpoint_sha256: job.checkpoint_sha256.as_deref().map(parse).transpose()?,
        prev_commitment: job.chain_head()?,
        lease_seconds,
        kind: TaskKind::Train,
        replay: None,
        model: crate::model::stored_model(&job.id, job.model.as_deref())?,
    };
    if task.kind == TaskKind::Replay {
        let audit_id = task
            .audit_id
            .as_deref()
            .ok_or_else(|| PoolError::Internal(format!("replay task {} has no audit", task.id)))?;
        let a = crate::audit::audit(conn, audit_id).await?;
        let signed: SignedCommitment = serde_json::from_str(&a.signed)?;
        out.start_checkpoint_sha256 = a
            .start_checkpoint_sha256
            .as_deref()
            .map(parse)
            .transpose()?;
        out.prev_commitment = signed.commitment.prev;
        out.kind = TaskKind::Replay;
        out.replay = Some(ReplayTarget {
            claimed_checkpoint_sha256: parse(&a.claimed_checkpoint_sha256)?,
            claimed_class: a.class,
        });
    }
    Ok(out)
}

async fn job_of(conn: &mut SqliteConnection, task: &TaskRow) -> Result<JobRow, PoolError> {
    store::job(conn, &task.job_id)
        .await?
        .ok_or_else(|| PoolError::Internal(format!("task {} has no job", task.id)))
}

/// A task the caller must hold: it exists and is leased to `provider`.
pub(crate) async fn leased_task(
    conn: &mut SqliteConnection,
    provider: &ProviderId,
    task_id: &str,
) -> Result<TaskRow, PoolError> {
    let task = store::task(conn, task_id)
        .await?
        .ok_or_else(|| PoolError::not_found(format!("task {task_id}")))?;
    if task.status != TaskStatus::Leased || task.provider_id.as_deref() != Some(provider.as_str()) {
        return Err(PoolError::Conflict(format!(
            "task {task_id} is not leased to you (it is {})",
            task.status
        )));
    }
    Ok(task)
}

/// Counts a heartbeat waiting for work while it lives.
struct LongPoll<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> LongPoll<'a> {
    fn start(count: &'a std::sync::atomic::AtomicUsize) -> LongPoll<'a> {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        LongPoll(count)
    }
}

impl Drop for LongPoll<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Pool {
    /// How many heartbeats are waiting for work now (long-polls).
    pub fn long_polls(&self) -> usize {
        self.inner
            .long_polls
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Starts a write transaction (taking the write lock).
    pub(crate) async fn write(&self) -> Result<Write<'_>, PoolError> {
        let lock = self.inner.write_lock.lock().await;
        // IMMEDIATE: take SQLite's write lock now, waiting (busy timeout) for a
        // writer outside this lock (a blob upload, another process) instead
        // of failing when a read snapshot turns out stale at the first write.
        let tx = self.inner.db.begin_with("BEGIN IMMEDIATE").await?;
        Ok(Write {
            pool: self,
            tx,
            events: Vec::new(),
            queued_work: false,
            now: self.now(),
            _lock: lock,
        })
    }

    /// The fees taken from every segment's price.
    pub(crate) fn fees(&self) -> escrow::Fees {
        escrow::Fees {
            pool_bps: self.inner.config.money.pool_fee_bps,
            validator_bps: self.inner.config.money.validator_fee_bps,
        }
    }

    fn lease_ms(&self) -> i64 {
        i64::from(self.inner.config.lease_seconds) * 1000
    }

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
        let known: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM blobs WHERE sha256 = ?)")
                .bind(req.data_sha256.as_str())
                .fetch_one(&self.inner.db)
                .await?;
        if !known
            || !self.can_read_blob(&caller, &req.data_sha256).await?
            || !self.inner.blobs.exists(&req.data_sha256).await?
        {
            return Err(PoolError::BadRequest(format!(
                "data_sha256: blob {} not found; upload the data first",
                req.data_sha256
            )));
        }
        let (model, memory) = self.size_job(&spec, &req.data_sha256).await?;
        let id = JobId::random();
        let min_memory = (i64::from(spec.resources.min_memory_gib) << 30)
            .max(i64::try_from(memory.total_bytes).unwrap_or(i64::MAX));
        let steps = i64::try_from(spec.train.steps)
            .map_err(|_| PoolError::InvalidSpec("train.steps: too large".into()))?;
        let every = i64::try_from(spec.train.checkpoint_every)
            .map_err(|_| PoolError::InvalidSpec("train.checkpoint_every: too large".into()))?;
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
             max_price_per_hour, flops_per_step, verification, model, memory_bytes) \
             VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id.as_str())
        .bind(account.as_str())
        .bind(&spec.name)
        .bind(&req.spec_toml)
        .bind(req.data_sha256.as_str())
        .bind(device_str(spec.resources.device))
        .bind(min_memory)
        .bind(steps)
        .bind(every)
        .bind(i64::from(spec.segment_count()))
        .bind(genesis(&id).to_string())
        .bind(now)
        .bind(now)
        .bind(budget_i64)
        .bind(max_price)
        .bind(spec.flops_per_step())
        .bind(spec.verification.as_str())
        .bind(serde_json::to_string(&model)?)
        .bind(i64::try_from(memory.total_bytes).unwrap_or(i64::MAX))
        .execute(w.conn())
        .await?;
        w.hold_budget(account.as_str(), id.as_str(), budget).await?;
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
        w.queue_segment(&job, 0).await?;
        let view = store::job(w.conn(), id.as_str())
            .await?
            .ok_or_else(|| PoolError::Internal("job vanished".into()))?
            .view()?;
        w.commit().await?;
        tracing::info!(job = %id, account = %account, name = %spec.name, steps = spec.train.steps,
            segments = spec.segment_count(), "job submitted");
        Ok(view)
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
            "UPDATE tasks SET status = 'cancelled', updated_at = ? \
             WHERE job_id = ? AND kind = 'train' AND status IN ('queued', 'leased')",
        )
        .bind(now)
        .bind(job_id)
        .execute(w.conn())
        .await?;
        // Settled first: a job's event stream ends with its final status.
        w.settle_job(&job).await?;
        w.set_job_status(
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

    /// Registers (or re-registers) a provider that proved it holds its node
    /// key; issues a new session token and sorts the tasks it was resuming.
    pub async fn register_provider(&self, req: Register) -> Result<Registered, PoolError> {
        let now_s = self.now() / 1000;
        if (req.time - now_s).abs() > REGISTRATION_SKEW_SECONDS {
            return Err(PoolError::Unauthorized(format!(
                "registration time {} is more than {REGISTRATION_SKEW_SECONDS} s from the pool's clock ({now_s})",
                req.time
            )));
        }
        req.public_key
            .verifying_key()
            .map_err(|e| PoolError::BadRequest(format!("public_key: {e}")))?;
        let message = registration_message(&req.public_key, req.time, &req.nonce);
        if !req.public_key.verifies(&message, &req.signature) {
            return Err(PoolError::Unauthorized(
                "registration signature does not verify".into(),
            ));
        }
        gradpool_core::wire::check_task_count("resuming", req.resuming.len())
            .map_err(PoolError::BadRequest)?;
        // Only after the signature: a forged request must not burn a nonce.
        self.inner.challenges.take(&req.nonce, self.now())?;
        let name = req.name.trim();
        if name.is_empty() || name.len() > 128 {
            return Err(PoolError::BadRequest(
                "name: a non-empty provider name of at most 128 characters".into(),
            ));
        }
        crate::money::check_payout(self, &req.payout)?;
        let price = i64::try_from(req.price_per_hour.0)
            .map_err(|_| PoolError::BadRequest("price_per_hour: too large".into()))?;
        let gflops = req
            .benchmark_gflops
            .filter(|g| g.is_finite() && *g > 0.0 && *g < 1e9);
        let provider = ProviderId::from_public_key(&req.public_key.0);
        let token = new_session_token();
        let hardware = serde_json::to_string(&req.hardware)?;
        let memory = i64::try_from(req.hardware.memory_bytes).unwrap_or(i64::MAX);
        let lease_seconds = self.inner.config.lease_seconds;
        let mut w = self.write().await?;
        let now = w.now;
        sqlx::query(
            "INSERT INTO providers (id, public_key, name, hardware, device, memory_bytes, class, token_hash, \
             registered_at, last_seen, price_per_hour, benchmark_gflops, validate, trains) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11, ?12, ?13) \
             ON CONFLICT (id) DO UPDATE SET name = ?3, hardware = ?4, device = ?5, memory_bytes = ?6, \
             class = ?7, token_hash = ?8, last_seen = ?9, price_per_hour = ?10, benchmark_gflops = ?11, \
             validate = ?12, trains = ?13",
        )
        .bind(provider.as_str())
        .bind(req.public_key.to_string())
        .bind(name)
        .bind(hardware)
        .bind(req.hardware.device.to_string())
        .bind(memory)
        .bind(req.hardware.class())
        .bind(secret_hash(&token))
        .bind(now)
        .bind(price)
        .bind(gflops)
        .bind(req.validate)
        .bind(req.train)
        .execute(w.conn())
        .await?;
        sqlx::query("DELETE FROM payout_splits WHERE provider_id = ?")
            .bind(provider.as_str())
            .execute(w.conn())
            .await?;
        for split in &req.payout {
            sqlx::query("INSERT INTO payout_splits (provider_id, address, share) VALUES (?, ?, ?)")
                .bind(provider.as_str())
                .bind(&split.address)
                .bind(i64::from(split.share))
                .execute(w.conn())
                .await?;
        }
        w.seen(provider.as_str()).await?;
        w.record_status(provider.as_str(), ProviderChange::Registered, None)
            .await?;
        w.check_gpu_claim(&provider, req.hardware.uuid.as_deref(), self.lease_ms())
            .await?;
        if self.inner.config.hardware_proof {
            w.plan_next_proof(provider.as_str(), self.inner.config.proof_interval_seconds)
                .await?;
        }
        let mut resume = Vec::new();
        let mut dropped = Vec::new();
        for task_id in req.resuming {
            let renewed = sqlx::query(
                "UPDATE tasks SET lease_expires_at = ?, updated_at = ? \
                 WHERE id = ? AND provider_id = ? AND status = 'leased' AND lease_expires_at >= ?",
            )
            .bind(now + self.lease_ms())
            .bind(now)
            .bind(task_id.as_str())
            .bind(provider.as_str())
            .bind(now)
            .execute(w.conn())
            .await?
            .rows_affected();
            let task = match store::task(w.conn(), task_id.as_str()).await? {
                Some(task) if renewed == 1 => task,
                _ => {
                    dropped.push(task_id);
                    continue;
                }
            };
            let job = job_of(w.conn(), &task).await?;
            resume.push(assignment(w.conn(), &job, &task, lease_seconds).await?);
        }
        // Leases the provider did not claim were granted after its last
        // record of work (it died between the pool's reply and writing the
        // task down): nobody works on them, so they end now, not when the
        // lease runs out.
        let proof = if self.inner.config.hardware_proof {
            Some(
                w.issue_proof(&provider, gflops, req.hardware.memory_bytes)
                    .await?,
            )
        } else {
            None
        };
        let kept: Vec<&str> = resume.iter().map(|a| a.task_id.as_str()).collect();
        let abandoned = sqlx::query(
            "UPDATE tasks SET lease_expires_at = 0, updated_at = ?1 \
             WHERE provider_id = ?2 AND status = 'leased' \
               AND id NOT IN (SELECT value FROM json_each(?3))",
        )
        .bind(now)
        .bind(provider.as_str())
        .bind(serde_json::to_string(&kept)?)
        .execute(w.conn())
        .await?
        .rows_affected();
        w.commit().await?;
        if abandoned > 0 {
            self.reap_expired_leases().await?;
        }
        tracing::info!(provider = %provider, name, class = %req.hardware.class(),
            resumed = resume.len(), dropped = dropped.len(), "provider registered");
        Ok(Registered {
            provider_id: provider,
            token,
            heartbeat_seconds: self.inner.config.heartbeat_seconds,
            lease_seconds,
            resume,
            dropped,
            proof,
        })
    }

    /// A heartbeat: renews the leases of the running tasks, names those the
    /// provider must stop, and leases it up to `capacity` queued tasks,
    /// waiting up to `wait_seconds` for work if there is none.
    pub async fn heartbeat(
        &self,
        provider: &ProviderId,
        hb: Heartbeat,
    ) -> Result<HeartbeatReply, PoolError> {
        // Enabled before looking for work, so a task queued between the
        // look and the wait still wakes us.
        let mut notified = Box::pin(self.inner.work.notified());
        notified.as_mut().enable();

        hb.check().map_err(PoolError::BadRequest)?;
        let telemetry = serde_json::to_string(&hb.telemetry)?;
        let mut w = self.write().await?;
        let now = w.now;
        let was_paused: Option<String> =
            sqlx::query_scalar::<_, Option<String>>("SELECT paused FROM providers WHERE id = ?")
                .bind(provider.as_str())
                .fetch_optional(w.conn())
                .await?
                .ok_or_else(|| {
                    PoolError::Unauthorized("unknown provider; register again".into())
                })?;
        let paused = hb
            .paused
            .as_deref()
            .map(|r| r.chars().take(64).collect::<String>());
        let (device, memory): (String, i64) = sqlx::query_as(
            "UPDATE providers SET last_seen = ?, telemetry = ?, paused = ? WHERE id = ? RETURNING device, memory_bytes",
        )
        .bind(now)
        .bind(telemetry)
        .bind(paused.as_deref())
        .bind(provider.as_str())
        .fetch_one(w.conn())
        .await?;
        if paused != was_paused {
            w.record_status(
                provider.as_str(),
                if paused.is_some() {
                    ProviderChange::Paused
                } else {
                    ProviderChange::Resumed
                },
                paused.as_deref().or(was_paused.as_deref()),
            )
            .await?;
            tracing::info!(provider = %provider, paused = ?paused, "provider pause changed");
        }
        w.seen(provider.as_str()).await?;
        w.release_duplicate_if_gone(provider.as_str(), self.lease_ms())
            .await?;
        let proof = if self.inner.config.hardware_proof {
            w.proof_if_due(provider, self.inner.config.proof_interval_seconds)
                .await?
        } else {
            None
        };
        let mut cancel = Vec::new();
        for running in &hb.running {
            let renewed = sqlx::query(
                "UPDATE tasks SET lease_expires_at = ?, step = ?, updated_at = ? \
                 WHERE id = ? AND provider_id = ? AND status = 'leased' AND lease_expires_at >= ?",
            )
            .bind(now + self.lease_ms())
            .bind(i64::try_from(running.step).unwrap_or(i64::MAX))
            .bind(now)
            .bind(running.task_id.as_str())
            .bind(provider.as_str())
            .bind(now)
            .execute(w.conn())
            .await?
            .rows_affected();
            if renewed == 0 {
                // A task this provider already committed is done, not lost.
                let done = store::task(w.conn(), running.task_id.as_str())
                    .await?
                    .is_some_and(|t| {
                        t.status == TaskStatus::Committed
                            && t.provider_id.as_deref() == Some(provider.as_str())
                    });
                if !done {
                    cancel.push(running.task_id.clone());
                }
            }
        }
        let mut assignments = self
            .claim(&mut w, provider, &device, memory, hb.capacity)
            .await?;
        w.commit().await?;
        tracing::debug!(provider = %provider, running = hb.running.len(), capacity = hb.capacity,
            assigned = assignments.len(), cancelled = cancel.len(), "heartbeat");

        let mut wait = hb.wait_seconds.min(MAX_WAIT_SECONDS);
        if !hb.running.is_empty() {
            // Never hold a reply so long that the running leases lapse.
            wait = wait.min((self.inner.config.lease_seconds / 2).max(1));
        }
        if assignments.is_empty() && hb.capacity > 0 && wait > 0 {
            let _waiting = LongPoll::start(&self.inner.long_polls);
            // Wait for work that fits this provider, re-checking whenever any
            // task is queued, until the deadline.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(wait));
            let stop = self.inner.stop.clone();
            loop {
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = stop.cancelled() => {}
                }
                notified = Box::pin(self.inner.work.notified());
                notified.as_mut().enable();
                let mut w = self.write().await?;
                let now = w.now;
                sqlx::query("UPDATE providers SET last_seen = ? WHERE id = ?")
                    .bind(now)
                    .bind(provider.as_str())
                    .execute(w.conn())
                    .await?;
                assignments = self
                    .claim(&mut w, provider, &device, memory, hb.capacity)
                    .await?;
                w.commit().await?;
                if !assignments.is_empty()
                    || stop.is_cancelled()
                    || tokio::time::Instant::now() >= deadline
                {
                    break;
                }
            }
        }
        Ok(HeartbeatReply {
            assignments,
            cancel,
            proof,
        })
    }

    /// Leases up to `capacity` queued tasks to a provider, oldest first.
    /// Each claim is one `UPDATE … WHERE status = 'queued'` under the write
    /// lock, so no task is ever leased twice.
    async fn claim(
        &self,
        w: &mut Write<'_>,
        provider: &ProviderId,
        device: &str,
        memory: i64,
        capacity: u32,
    ) -> Result<Vec<Assignment>, PoolError> {
        let mut out = Vec::new();
        let now = w.now;
        let (price, unstaking, validates, trains, held): (i64, Option<i64>, bool, bool, Option<String>) = sqlx::query_as(
            "SELECT price_per_hour, unstake_requested_at, validate = 1 AND validator_barred = 0, trains = 1, \
             COALESCE(held, CASE WHEN duplicate_of IS NOT NULL THEN 'gpu claimed twice' END, paused) \
             FROM providers WHERE id = ?",
        )
        .bind(provider.as_str())
        .fetch_one(w.conn())
        .await?;
        let stake = ledger::balance_of(w.conn(), &escrow::stake_account(provider.as_str())).await?;
        let money = &self.inner.config.money;
        let staked = unstaking.is_none() && u64::try_from(stake).unwrap_or(0) >= money.min_stake.0;
        let stake_free_budget = i64::try_from(money.stake_required_above.0).unwrap_or(i64::MAX);
        // Replays first: an open audit holds its job's completion.
        let replay_sql = format!(
            "UPDATE tasks SET status = 'leased', provider_id = ?1, lease_expires_at = ?2, assigned_at = ?3, \
             updated_at = ?3, price_per_hour = ?6 \
             WHERE id = (SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id JOIN audits a ON a.id = t.audit_id \
                         WHERE t.status = 'queued' AND t.kind = 'replay' AND a.status = 'open' \
                           AND a.provider_id != ?1 \
                           AND (j.device = 'any' OR j.device = ?4) AND j.min_memory_bytes <= ?5 \
                           AND (j.max_price_per_hour IS NULL OR j.max_price_per_hour >= ?6) \
                           AND NOT EXISTS (SELECT 1 FROM tasks r WHERE r.audit_id = t.audit_id AND r.provider_id = ?1) \
                           AND NOT EXISTS (SELECT 1 FROM payout_splits x JOIN payout_splits y ON x.address = y.address \
                                           WHERE x.provider_id = ?1 AND y.provider_id = a.provider_id) \
                         ORDER BY t.created_at, t.rowid LIMIT 1) \
               AND status = 'queued' \
             RETURNING {TASK_COLUMNS}"
        );
        let train_sql = format!(
            "UPDATE tasks SET status = 'leased', provider_id = ?1, lease_expires_at = ?2, assigned_at = ?3, \
             updated_at = ?3, price_per_hour = ?6 \
             WHERE id = (SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id \
                         WHERE t.status = 'queued' AND t.kind = 'train' AND j.status IN ('queued', 'running') \
                           AND (j.device = 'any' OR j.device = ?4) AND j.min_memory_bytes <= ?5 \
                           AND (j.max_price_per_hour IS NULL OR j.max_price_per_hour >= ?6) \
                           AND (j.budget > 0 OR ?6 = 0) \
                           AND (?7 OR j.budget <= ?8) \
                           AND NOT EXISTS (SELECT 1 FROM tasks f WHERE f.job_id = t.job_id \
                               AND f.segment = t.segment AND f.status = 'failed' AND f.kind = 'train' \
                               AND f.provider_id = ?1) \
                           AND NOT EXISTS (SELECT 1 FROM job_bars b WHERE b.job_id = t.job_id AND b.provider_id = ?1) \
                           AND NOT EXISTS (SELECT 1 FROM booking_providers bp JOIN bookings bk ON bk.id = bp.booking_id \
                               WHERE bp.provider_id = ?1 AND bk.status = 'reserved' AND bk.starts_at <= ?3 \
                                 AND bk.ends_at > ?3 AND bk.account_id != j.account_id) \
                         ORDER BY j.created_at, j.rowid, t.created_at, t.rowid LIMIT 1) \
               AND status = 'queued' \
             RETURNING {TASK_COLUMNS}"
        );
        // A provider whose hardware is unproven, whose GPU another provider
        // claims too, or that is paused gets nothing.
        let capacity = if held.is_some() { 0 } else { capacity };
        for _ in 0..capacity {
            let mut task: Option<TaskRow> = None;
            if validates {
                task = sqlx::query_as(&replay_sql)
                    .bind(provider.as_str())
                    .bind(now + self.lease_ms())
                    .bind(now)
                    .bind(device)
                    .bind(memory)
                    .bind(price)
                    .fetch_optional(w.conn())
                    .await?;
            }
            if task.is_none() && trains {
                task = sqlx::query_as(&train_sql)
                    .bind(provider.as_str())
                    .bind(now + self.lease_ms())
                    .bind(now)
                    .bind(device)
                    .bind(memory)
                    .bind(price)
                    .bind(staked)
                    .bind(stake_free_budget)
                    .fetch_optional(w.conn())
                    .await?;
            }
            let Some(task) = task else { break };
            let job = job_of(w.conn(), &task).await?;
            if task.kind == TaskKind::Replay {
                tracing::info!(job = %job.id, task = %task.id, validator = %provider, segment = task.segment, "replay assigned");
                out.push(assignment(w.conn(), &job, &task, self.inner.config.lease_seconds).await?);
                continue;
            }
            if job.status == JobStatus::Queued {
                w.set_job_status(&job.id, JobStatus::Running, None).await?;
            }
            w.event(
                &job.id,
                JobEventKind::Assigned {
                    task_id: TaskId::from(task.id.as_str()),
                    provider: provider.clone(),
                    segment: to_u32(task.segment),
                    start_step: to_u64(task.start_step),
                    end_step: to_u64(task.end_step),
                },
            )
            .await?;
            tracing::info!(job = %job.id, task = %task.id, provider = %provider, segment = task.segment, "segment assigned");
            out.push(assignment(w.conn(), &job, &task, self.inner.config.lease_seconds).await?);
        }
        Ok(out)
    }

    /// Records training progress of a leased task.
    pub async fn progress(
        &self,
        provider: &ProviderId,
        task_id: &str,
        p: Progress,
    ) -> Result<(), PoolError> {
        p.check().map_err(PoolError::BadRequest)?;
        let mut w = self.write().await?;
        let task = leased_task(w.conn(), provider, task_id).await?;
        let now = w.now;
        sqlx::query("UPDATE tasks SET step = ?, updated_at = ? WHERE id = ?")
            .bind(i64::try_from(p.step).unwrap_or(i64::MAX))
            .bind(now)
            .bind(task_id)
            .execute(w.conn())
            .await?;
        sqlx::query("UPDATE jobs SET last_loss = ?, updated_at = ? WHERE id = ?")
            .bind(f64::from(p.loss))
            .bind(now)
            .bind(&task.job_id)
            .execute(w.conn())
            .await?;
        w.event(
            &task.job_id,
            JobEventKind::Progress {
                provider: provider.clone(),
                step: p.step,
                loss: p.loss,
                tokens_per_sec: p.tokens_per_sec,
            },
        )
        .await?;
        w.commit().await
    }

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
                sqlx::query_scalar("SELECT signed FROM commitments WHERE task_id = ?")
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
             prev, hash, signed, loss_trace, committed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        .execute(w.conn())
        .await?;
        sqlx::query(
            "UPDATE tasks SET status = 'committed', step = ?, lease_expires_at = NULL, updated_at = ?, \
             share = ?, foreign_processes = ? WHERE id = ?",
        )
        .bind(end)
        .bind(now)
        .bind(c.dedication.map(|d| d.share))
        .bind(c.dedication.map(|d| i64::from(d.foreign_processes)))
        .bind(task_id)
        .execute(w.conn())
        .await?;
        let loss = c.loss_trace.last().copied().unwrap_or(0.0);
        sqlx::query(
            "UPDATE jobs SET step = ?, segments_done = segments_done + 1, checkpoint_sha256 = ?, commitment = ?, \
             last_loss = ?, updated_at = ? WHERE id = ?",
        )
        .bind(end)
        .bind(cm.checkpoint_sha256.as_str())
        .bind(cm.hash.to_string())
        .bind(f64::from(loss))
        .bind(now)
        .bind(&job.id)
        .execute(w.conn())
        .await?;
        w.event(
            &job.id,
            JobEventKind::Checkpoint {
                provider: provider.clone(),
                segment: cm.segment,
                step: cm.end_step,
                checkpoint_sha256: cm.checkpoint_sha256.clone(),
                commitment: cm.hash,
                loss,
            },
        )
        .await?;
        w.pay_segment(
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
        w.draw_audit(&job.id, job.verification, cm.segment, provider)
            .await?;
        let job_done = end >= job.steps;
        let left = ledger::balance_of(w.conn(), &escrow::escrow_account(&job.id)).await?;
        if job_done {
            if !w.finish_if_done(&job.id).await? {
                tracing::info!(job = %job.id, "last segment committed; the job succeeds once its audits are decided");
            }
        } else if job.budget > 0 && left == 0 {
            let why = format!(
                "budget exhausted after segment {} (step {}): submit again with a larger budget.total_xmr",
                cm.segment, cm.end_step
            );
            w.settle_job(&job).await?;
            w.set_job_status(&job.id, JobStatus::Failed, Some(why))
                .await?;
        } else {
            w.queue_segment(&job, cm.segment + 1).await?;
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
        if task.kind != TaskKind::Train {
            return Err(PoolError::BadRequest(format!(
                "task {} is a replay: report it with POST /v1/tasks/{}/replay",
                task.id, task.id
            )));
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
        let class: String = sqlx::query_scalar("SELECT class FROM providers WHERE id = ?")
            .bind(provider.as_str())
            .fetch_one(&self.inner.db)
            .await?;
        if cm.class != class {
            return Err(PoolError::BadRequest(format!(
                "commitment.class {} is not the class you registered ({class})",
                cm.class
            )));
        }
        // Every segment moves the weights: a checkpoint the job already has
        // (or its start) is an old one submitted again.
        let earlier: Option<i64> = sqlx::query_scalar(
            "SELECT segment FROM commitments WHERE job_id = ? AND checkpoint_sha256 = ?",
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
        let path = self.inner.blobs.path_of(&cm.checkpoint_sha256);
        // The checkpoint must be a blob this provider uploaded: committing
        // to someone else's blob by its digest would grant read access to it.
        let uploaded: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM blob_uploads WHERE sha256 = ? AND principal = ?)",
        )
        .bind(cm.checkpoint_sha256.as_str())
        .bind(provider.as_str())
        .fetch_one(&self.inner.db)
        .await?;
        if !uploaded || !tokio::fs::try_exists(&path).await? {
            return Err(PoolError::BadRequest(format!(
                "checkpoint blob {} not found among this provider's uploads; upload it before committing",
                cm.checkpoint_sha256
            )));
        }
        let model = crate::model::stored_model(&job.id, job.model.as_deref())?;
        let hash = crate::model::inspect_checkpoint(path, model, cm.end_step, cm.prev).await?;
        if hash != cm.hash {
            return Err(PoolError::BadRequest(format!(
                "commitment.hash {} is not BLAKE3(checkpoint ‖ prev)",
                cm.hash
            )));
        }
        Ok(())
    }

    /// A provider gave up on a task: the segment is queued again (for other
    /// providers), or the job fails once [`MAX_SEGMENT_FAILURES`] providers
    /// failed the segment.
    pub async fn fail_task(
        &self,
        provider: &ProviderId,
        task_id: &str,
        f: TaskFailed,
    ) -> Result<(), PoolError> {
        let reason: String = f.reason.chars().take(2000).collect();
        let mut w = self.write().await?;
        let task = leased_task(w.conn(), provider, task_id).await?;
        let now = w.now;
        sqlx::query(
            "UPDATE tasks SET status = 'failed', reason = ?, lease_expires_at = NULL, updated_at = ? WHERE id = ?",
        )
        .bind(&reason)
        .bind(now)
        .bind(task_id)
        .execute(w.conn())
        .await?;
        w.event(
            &task.job_id,
            JobEventKind::TaskFailed {
                task_id: TaskId::from(task_id),
                provider: provider.clone(),
                segment: to_u32(task.segment),
                reason: reason.clone(),
            },
        )
        .await?;
        if let Some(audit_id) = task.audit_id.as_deref() {
            // A replay that failed on one validator goes to another.
            w.requeue_replay(audit_id).await?;
            w.commit().await?;
            tracing::info!(task = %task_id, validator = %provider, reason = %reason, "replay failed; requeued");
            return Ok(());
        }
        let failures: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT provider_id) FROM tasks WHERE job_id = ? AND segment = ? AND status = 'failed' \
             AND kind = 'train'",
        )
        .bind(&task.job_id)
        .bind(task.segment)
        .fetch_one(w.conn())
        .await?;
        let job = job_of(w.conn(), &task).await?;
        if failures >= MAX_SEGMENT_FAILURES {
            let why = format!(
                "segment {} failed {failures} times; last: {reason}",
                task.segment
            );
            w.settle_job(&job).await?;
            w.set_job_status(&job.id, JobStatus::Failed, Some(why.clone()))
                .await?;
            w.commit().await?;
            tracing::info!(job = %job.id, reason = %why, "job failed");
        } else {
            w.queue_segment(&job, to_u32(task.segment)).await?;
            w.commit().await?;
            tracing::info!(job = %job.id, task = %task_id, provider = %provider, reason = %reason, "task failed; segment requeued");
        }
        Ok(())
    }

    /// A provider hands a leased task back because it pauses (its owner's
    /// limits): the segment goes back to the queue at once, from the job's
    /// last accepted checkpoint, and does not count as a failure.
    pub async fn release_task(
        &self,
        provider: &ProviderId,
        task_id: &str,
        f: TaskFailed,
    ) -> Result<(), PoolError> {
        let reason: String = f.reason.chars().take(200).collect();
        let mut w = self.write().await?;
        let task = leased_task(w.conn(), provider, task_id).await?;
        sqlx::query(
            "UPDATE tasks SET status = 'released', reason = ?, lease_expires_at = NULL, updated_at = ? WHERE id = ?",
        )
        .bind(&reason)
        .bind(w.now)
        .bind(task_id)
        .execute(w.conn())
        .await?;
        w.event(
            &task.job_id,
            JobEventKind::Released {
                task_id: TaskId::from(task_id),
                provider: provider.clone(),
                segment: to_u32(task.segment),
                reason: reason.clone(),
            },
        )
        .await?;
        w.requeue(&task).await?;
        w.commit().await?;
        tracing::info!(task = %task_id, provider = %provider, reason = %reason, "task released; segment requeued");
        Ok(())
    }

    /// Expires every lease past its time and queues its segment again.
    /// Returns how many leases expired.
    pub async fn reap_expired_leases(&self) -> Result<usize, PoolError> {
        let mut w = self.write().await?;
        let now = w.now;
        let expired: Vec<TaskRow> = sqlx::query_as(&format!(
            "UPDATE tasks SET status = 'expired', updated_at = ?1 \
             WHERE status = 'leased' AND lease_expires_at < ?1 \
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(now)
        .fetch_all(w.conn())
        .await?;
        for task in &expired {
            let provider = ProviderId::from(task.provider_id.as_deref().unwrap_or_default());
            w.event(
                &task.job_id,
                JobEventKind::LeaseExpired {
                    task_id: TaskId::from(task.id.as_str()),
                    provider: provider.clone(),
                    segment: to_u32(task.segment),
                },
            )
            .await?;
            w.requeue(task).await?;
            tracing::info!(job = %task.job_id, task = %task.id, provider = %provider, segment = task.segment,
                "lease expired; segment requeued");
        }
        w.commit().await?;
        Ok(expired.len())
    }

    /// Runs [`Pool::reap_expired_leases`] and [`Pool::mark_absent`]
    /// periodically until `stop`.
    pub(crate) async fn run_reaper(self, stop: CancellationToken) {
        let lease_ms = u64::from(self.inner.config.lease_seconds) * 1000;
        let period = Duration::from_millis((lease_ms / 4).clamp(100, 1000));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            if let Err(e) = self.reap_expired_leases().await {
                tracing::warn!(error = %e, "lease reaper failed");
            }
            if let Err(e) = self.mark_absent().await {
                tracing::warn!(error = %e, "marking absent providers failed");
            }
            if let Err(e) = self.end_bookings().await {
                tracing::warn!(error = %e, "ending bookings failed");
            }
            self.inner.throttle.prune();
        }
    }
}
