//! Leases: heartbeats, the claim that hands queued tasks to providers,
//! progress, failures, hand-backs and the reaper.
//!
//! The pool leases queued tasks to providers that heart-beat with spare
//! capacity (oldest job first, device permitting). A lease that is not
//! renewed by heartbeats expires: the reaper marks the task `expired` and
//! queues a new task for the same segment, which resumes from the job's
//! last accepted checkpoint.
//!
//! Task statuses: `queued`, `leased`, `committed`, `expired`, `released`
//! (handed back by a pausing provider), `failed`, `cancelled`.

use crate::certification::HOLDS_TIER;
use crate::error::PoolError;
use crate::queue::{job_of, leased_task};
use crate::sighting::Sighting;
use crate::store::{self, to_u32, to_u64, JobRow, TaskRow, TASK_COLUMNS};
use crate::tx::Write;
use crate::Pool;
use crate::{escrow, ledger};
use gradpool_core::state::{ProviderChange, TaskStatus};
use gradpool_core::wire::{
    Assignment, Heartbeat, HeartbeatReply, JobEventKind, JobStatus, Progress, ReplayTarget,
    RoundTask, RoundUpdate, TaskFailed, TaskKind,
};
use gradpool_core::{JobId, ProviderId, SignedCommitment, TaskId};
use sqlx::AnyConnection;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A segment that failed on this many different providers fails its job.
/// A provider never gets a segment it failed again, so one broken rig cannot
/// fail a job alone.
pub const MAX_SEGMENT_FAILURES: i64 = 3;

/// The longest a heartbeat is held waiting for work.
pub const MAX_WAIT_SECONDS: u32 = 30;

/// How round `round`'s weights came from the round before's: its outer
/// step's update, for a provider that holds the earlier weights.
async fn round_update(
    conn: &mut AnyConnection,
    job_id: &str,
    round: i64,
) -> Result<Option<RoundUpdate>, PoolError> {
    let row: Option<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT from_global_sha256, update_sha256, weights_sha256 FROM outer_steps \
         WHERE job_id = $1 AND round = $2 AND discarded_at IS NULL",
    )
    .bind(job_id)
    .bind(round - 1)
    .fetch_optional(conn)
    .await?;
    let Some((Some(from), Some(update), Some(weights))) = row else {
        return Ok(None);
    };
    let parse = |s: String| {
        s.parse::<gradpool_core::Sha256Hex>()
            .map_err(|e| PoolError::Internal(format!("stored digest: {e}")))
    };
    Ok(Some(RoundUpdate {
        from_global_sha256: parse(from)?,
        update_sha256: parse(update)?,
        weights_sha256: parse(weights)?,
    }))
}

/// The assignment a provider gets for a leased task: a segment to train
/// from the job's last accepted checkpoint, or one to replay for an audit.
pub(crate) async fn assignment(
    conn: &mut AnyConnection,
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
        round: None,
        sealed_key: None,
    };
    if job.confidential {
        // Leased only to key holders (the claim's rule): its own key.
        let sealed: Option<String> = sqlx::query_scalar(
            "SELECT sealed_key FROM job_keys WHERE job_id = $1 AND provider_id = $2",
        )
        .bind(&job.id)
        .bind(task.provider_id.as_deref())
        .fetch_optional(&mut *conn)
        .await?;
        let sealed = sealed.ok_or_else(|| {
            PoolError::Internal(format!(
                "task {} leased to a provider without the key",
                task.id
            ))
        })?;
        out.sealed_key = Some(sealed.try_into().map_err(PoolError::Internal)?);
    }
    if let Some(round) = task.round {
        let slot = task.slot_sha256.as_deref().map(parse).transpose()?;
        out.round = Some(RoundTask {
            round: to_u64(round),
            worker: task.worker.map(to_u32),
            slot_checkpoint_sha256: slot,
            inputs: Vec::new(),
            update: round_update(conn, &job.id, round).await?,
        });
    }
    if task.kind == TaskKind::Outer {
        let round = task.round.unwrap_or(job.round);
        out.kind = TaskKind::Outer;
        out.round = Some(RoundTask {
            round: to_u64(round),
            worker: None,
            slot_checkpoint_sha256: None,
            inputs: crate::queue::round_inputs(conn, job, round).await?,
            update: None,
        });
    }
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

/// A heartbeat counted in `count` while it lives: waiting for work
/// ([`Pool::long_polls`]), or on its way to claim ([`MAX_CLAIMERS`]).
struct Counted<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Counted<'a> {
    fn start(count: &'a std::sync::atomic::AtomicUsize) -> Counted<'a> {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Counted(count)
    }

    /// Counts one more, unless `max` are counted already.
    fn start_below(count: &'a std::sync::atomic::AtomicUsize, max: usize) -> Option<Counted<'a>> {
        use std::sync::atomic::Ordering;
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Counted(count))
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What a heartbeat carries that it may write.
struct Beat {
    telemetry: String,
    /// Why the owner paused the provider (at most 64 characters).
    paused: Option<String>,
}

/// What a heartbeat's write gave.
#[derive(Default)]
struct Written {
    assignments: Vec<Assignment>,
    held_back: Vec<String>,
    cancel: Vec<TaskId>,
    proof: Option<gradpool_core::proof::ProofChallenge>,
    compliance_due: bool,
}

/// Where a provider stands when it heart-beats: what decides whether the
/// heartbeat must write. `?1` the provider, `?2` now.
const STANDING: &str = "SELECT p.paused, p.held IS NOT NULL AS held, \
     p.disconnected_at IS NOT NULL AS disconnected, p.duplicate_of IS NOT NULL AS duplicate, \
     p.next_proof_at, p.next_compliance_at, p.compliance_asked_at, \
     EXISTS (SELECT 1 FROM certifications c WHERE c.provider_id = p.id AND c.revoked_at IS NULL \
             AND c.expires_at > $2) AS certified, \
     EXISTS (SELECT 1 FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.status = 'queued' \
             AND (t.kind = 'replay' OR NOT EXISTS (SELECT 1 FROM job_bars b \
                  WHERE b.job_id = t.job_id AND b.provider_id = p.id)) \
             AND CASE t.kind \
                 WHEN 'replay' THEN p.validate = 1 AND p.validator_barred = 0 \
                 ELSE p.trains = 1 AND j.status IN ('queued', 'running') END \
             AND (t.kind = 'outer' OR ((j.device = 'any' OR j.device = p.device) \
                  AND j.min_memory_bytes <= CASE WHEN j.runtime = 'container' \
                      THEN COALESCE(p.host_memory_bytes, 0) ELSE p.memory_bytes END \
                  AND (j.runtime = 'native' OR p.containers = 1) \
                  AND (j.max_price_per_hour IS NULL OR j.max_price_per_hour >= p.price_per_hour) \
                  AND (t.kind = 'replay' OR j.region IS NULL OR j.region = p.region)))) AS work \
     FROM providers p WHERE p.id = $1";

/// Where a provider stands when it heart-beats ([`STANDING`]).
#[derive(sqlx::FromRow)]
struct Standing {
    paused: Option<String>,
    #[sqlx(try_from = "crate::db::Flag")]
    held: bool,
    #[sqlx(try_from = "crate::db::Flag")]
    disconnected: bool,
    /// Held for a GPU another provider claims too.
    #[sqlx(try_from = "crate::db::Flag")]
    duplicate: bool,
    next_proof_at: Option<i64>,
    next_compliance_at: Option<i64>,
    compliance_asked_at: Option<i64>,
    /// Holds a tier now.
    #[sqlx(try_from = "crate::db::Flag")]
    certified: bool,
    /// A queued task exists that it could take as far as one read tells
    /// (its role, device, memory, runtime, price, region, bars; the claim
    /// checks the rest under the lock).
    #[sqlx(try_from = "crate::db::Flag")]
    work: bool,
}

impl Standing {
    /// Whether a heartbeat `hb` asks for a claim worth making: capacity,
    /// not held or paused, and a queued task it could fit.
    fn claims(&self, hb: &Heartbeat, beat: &Beat) -> bool {
        hb.capacity > 0 && !self.held && beat.paused.is_none() && self.work
    }

    /// What a heartbeat `hb` must write besides its sighting.
    fn need(&self, pool: &Pool, hb: &Heartbeat, beat: &Beat) -> Need {
        let now = pool.now();
        let config = &pool.inner.config;
        let proof_due =
            config.hardware_proof && !self.held && self.next_proof_at.is_some_and(|at| at <= now);
        let compliance_due = config.compliance_interval_seconds > 0
            && self.certified
            && !crate::certification::compliance_quiet(
                self.next_compliance_at,
                self.compliance_asked_at,
                now,
            );
        if !hb.running.is_empty()
            || beat.paused != self.paused
            || self.disconnected
            || self.duplicate
            || proof_due
            || compliance_due
        {
            Need::Write
        } else if self.claims(hb, beat) {
            Need::Claim
        } else {
            Need::Nothing
        }
    }
}

/// What a heartbeat must write besides its sighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Nothing: it is a sighting.
    Nothing,
    /// Only the claim of a queued task that could fit.
    Claim,
    /// A renewal, a pause, a reconnection, a proof or check due.
    Write,
}

/// The most heartbeats that take the write lock only to claim at once.
/// When a task is queued, every idle provider it could fit sees it; the
/// first few claim it, the others are sightings instead of a queue of
/// writes that would find the task gone.
pub const MAX_CLAIMERS: usize = 4;

/// What the claim asks of the provider it leases to.
#[derive(sqlx::FromRow)]
struct Claimant {
    price: i64,
    unstaking: Option<i64>,
    #[sqlx(try_from = "crate::db::Flag")]
    validates: bool,
    #[sqlx(try_from = "crate::db::Flag")]
    trains: bool,
    /// Why it gets nothing: a proof pending, a GPU claimed twice, a pause.
    held: Option<String>,
    region: Option<String>,
    #[sqlx(try_from = "crate::db::Flag")]
    containers: bool,
    /// Its RAM, against which container jobs are matched.
    host_memory: i64,
    /// Its device kind and memory, against which native jobs are matched.
    device: String,
    memory: i64,
}

impl Pool {
    /// How many heartbeats are waiting for work now (long-polls).
    pub fn long_polls(&self) -> usize {
        self.inner
            .long_polls
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A heartbeat: renews the leases of the running tasks, names those the
    /// provider must stop, and leases it up to `capacity` queued tasks,
    /// waiting up to `wait_seconds` for work if there is none.
    ///
    /// It first reads where the provider stands; a heartbeat that would
    /// change nothing but `last_seen` and the telemetry (nothing running,
    /// no pause or reconnection to record, no proof or compliance check
    /// due, no queued task that could fit it) is a [`Sighting`], written
    /// with the next batch, and takes no write lock.
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
        let beat = Beat {
            telemetry: serde_json::to_string(&hb.telemetry)?,
            paused: hb
                .paused
                .as_deref()
                .map(|r| r.chars().take(64).collect::<String>()),
        };
        let standing = self.standing(provider).await?;
        let need = standing.need(self, &hb, &beat);
        let claiming = match need {
            Need::Claim => Counted::start_below(&self.inner.claimers, MAX_CLAIMERS),
            Need::Nothing | Need::Write => None,
        };
        let written = if need == Need::Write || claiming.is_some() {
            match self.heartbeat_write(provider, &hb, &beat).await {
                Ok(written) => written,
                // Refused while the pool runs behind: still heard from. A
                // heartbeat that only wanted work waits for it instead.
                Err(PoolError::Busy(_)) if need == Need::Claim => {
                    self.sighted(provider, &beat);
                    Written::default()
                }
                Err(e @ PoolError::Busy(_)) => {
                    self.sighted(provider, &beat);
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        } else {
            self.sighted(provider, &beat);
            Written::default()
        };
        drop(claiming);
        let Written {
            mut assignments,
            mut held_back,
            cancel,
            proof,
            compliance_due,
        } = written;
        tracing::debug!(provider = %provider, running = hb.running.len(), capacity = hb.capacity,
            assigned = assignments.len(), cancelled = cancel.len(), "heartbeat");

        let mut wait = hb.wait_seconds.min(MAX_WAIT_SECONDS);
        if !hb.running.is_empty() {
            // Never hold a reply so long that the running leases lapse.
            wait = wait.min((self.inner.config.lease_seconds / 2).max(1));
        }
        if assignments.is_empty() && hb.capacity > 0 && wait > 0 {
            let _waiting = Counted::start(&self.inner.long_polls);
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
                let standing = self.standing(provider).await?;
                let claiming = standing
                    .claims(&hb, &beat)
                    .then(|| Counted::start_below(&self.inner.claimers, MAX_CLAIMERS))
                    .flatten();
                if claiming.is_some() {
                    let mut w = self.write().await?;
                    (assignments, held_back) = self.claim(&mut w, provider, hb.capacity).await?;
                    w.commit().await?;
                }
                self.sighted(provider, &beat);
                if !assignments.is_empty()
                    || stop.is_cancelled()
                    || tokio::time::Instant::now() >= deadline
                {
                    break;
                }
            }
        }
        let queued_before = self.now() - self.lease_ms() / 2;
        let wanted =
            crate::queue::wanted(&self.inner.db, provider, queued_before, &held_back).await?;
        Ok(HeartbeatReply {
            assignments,
            cancel,
            proof,
            wanted,
            compliance_due,
        })
    }

    /// Records that `provider` was heard from now, to be written with the
    /// next batch.
    fn sighted(&self, provider: &ProviderId, beat: &Beat) {
        self.inner.sightings.record(
            provider.as_str(),
            Sighting {
                at: self.now(),
                telemetry: beat.telemetry.clone(),
            },
        );
    }

    /// Where `provider` stands, read without the write lock.
    async fn standing(&self, provider: &ProviderId) -> Result<Standing, PoolError> {
        sqlx::query_as(STANDING)
            .bind(provider.as_str())
            .bind(self.now())
            .fetch_optional(&self.inner.db)
            .await?
            .ok_or_else(|| PoolError::Unauthorized("unknown provider; register again".into()))
    }

    /// The heartbeat that writes: the pause, the reconnection, duplicate
    /// GPUs, proofs and compliance checks due, lease renewals and the claim.
    async fn heartbeat_write(
        &self,
        provider: &ProviderId,
        hb: &Heartbeat,
        beat: &Beat,
    ) -> Result<Written, PoolError> {
        let mut w = if hb.running.is_empty() {
            self.write_unless_behind().await?
        } else {
            self.write().await?
        };
        let now = w.now;
        let was_paused: Option<String> =
            sqlx::query_scalar::<_, Option<String>>("SELECT paused FROM providers WHERE id = $1")
                .bind(provider.as_str())
                .fetch_optional(w.conn())
                .await?
                .ok_or_else(|| {
                    PoolError::Unauthorized("unknown provider; register again".into())
                })?;
        let paused = beat.paused.as_deref();
        sqlx::query(
            "UPDATE providers SET last_seen = $1, telemetry = $2, paused = $3 WHERE id = $4",
        )
        .bind(now)
        .bind(&beat.telemetry)
        .bind(paused)
        .bind(provider.as_str())
        .execute(w.conn())
        .await?;
        if paused != was_paused.as_deref() {
            crate::presence::record_status(
                &mut w,
                provider.as_str(),
                if paused.is_some() {
                    ProviderChange::Paused
                } else {
                    ProviderChange::Resumed
                },
                paused.or(was_paused.as_deref()),
            )
            .await?;
            tracing::info!(provider = %provider, paused = ?paused, "provider pause changed");
        }
        crate::presence::seen(&mut w, provider.as_str()).await?;
        crate::presence::release_duplicate_if_gone(&mut w, provider.as_str(), self.lease_ms())
            .await?;
        let proof = if self.inner.config.hardware_proof {
            crate::proof::proof_if_due(&mut w, provider, self.inner.config.proof_interval_seconds)
                .await?
        } else {
            None
        };
        let compliance_due = crate::certification::compliance_if_due(
            &mut w,
            provider.as_str(),
            self.inner.config.compliance_interval_seconds,
        )
        .await?;
        let cancel = self.renew(&mut w, provider, &hb.running).await?;
        let (assignments, held_back) = self.claim(&mut w, provider, hb.capacity).await?;
        w.commit().await?;
        Ok(Written {
            assignments,
            held_back,
            cancel,
            proof,
            compliance_due,
        })
    }

    /// Renews the leases of the tasks `provider` runs; the tasks it must
    /// stop (no longer leased to it, and not committed by it).
    async fn renew(
        &self,
        w: &mut Write<'_>,
        provider: &ProviderId,
        running: &[gradpool_core::wire::RunningTask],
    ) -> Result<Vec<TaskId>, PoolError> {
        let now = w.now;
        let mut cancel = Vec::new();
        for running in running {
            let renewed = sqlx::query(
                "UPDATE tasks SET lease_expires_at = $1, step = $2, updated_at = $3 \
                 WHERE id = $4 AND provider_id = $5 AND status = 'leased' AND lease_expires_at >= $6",
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
        Ok(cancel)
    }
    /// Leases up to `capacity` queued tasks to a provider, oldest first,
    /// and names the parallel jobs it is held back from
    /// ([`crate::placement::held_back`]). Each claim is one `UPDATE …
    /// WHERE status = 'queued'` under the write lock, so no task is ever
    /// leased twice.
    async fn claim(
        &self,
        w: &mut Write<'_>,
        provider: &ProviderId,
        capacity: u32,
    ) -> Result<(Vec<Assignment>, Vec<String>), PoolError> {
        let mut out = Vec::new();
        let now = w.now;
        let Claimant {
            price,
            unstaking,
            validates,
            trains,
            held,
            region,
            containers,
            host_memory,
            device,
            memory,
        } = sqlx::query_as(
            "SELECT price_per_hour AS price, unstake_requested_at AS unstaking, \
             validate = 1 AND validator_barred = 0 AS validates, trains = 1 AS trains, \
             COALESCE(held, CASE WHEN duplicate_of IS NOT NULL THEN 'gpu claimed twice' END, paused) AS held, \
             region, containers = 1 AS containers, COALESCE(host_memory_bytes, 0) AS host_memory, \
             device, memory_bytes AS memory \
             FROM providers WHERE id = $1",
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
            "UPDATE tasks SET status = 'leased', provider_id = $1, lease_expires_at = $2, assigned_at = $3, \
             updated_at = $3, price_per_hour = $6 \
             WHERE id = (SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id JOIN audits a ON a.id = t.audit_id \
                         WHERE t.status = 'queued' AND t.kind = 'replay' AND a.status = 'open' \
                           AND a.provider_id != $1 \
                           AND (j.device = 'any' OR j.device = $4) \
                           AND j.min_memory_bytes <= CASE WHEN j.runtime = 'container' THEN $8 ELSE $5 END \
                           AND (j.max_price_per_hour IS NULL OR j.max_price_per_hour >= $6) \
                           AND (j.runtime = 'native' OR $7) \
                           AND (j.confidential = 0 OR EXISTS (SELECT 1 FROM job_keys k WHERE k.job_id = t.job_id AND k.provider_id = $1)) \
                           AND {HOLDS_TIER} \
                           AND NOT EXISTS (SELECT 1 FROM tasks r WHERE r.audit_id = t.audit_id AND r.provider_id = $1) \
                           AND NOT EXISTS (SELECT 1 FROM payout_splits x JOIN payout_splits y ON x.address = y.address \
                                           WHERE x.provider_id = $1 AND y.provider_id = a.provider_id) \
                           AND EXISTS (SELECT 1 FROM blobs b WHERE b.sha256 = a.claimed_checkpoint_sha256) \
                           AND (t.slot_sha256 IS NULL OR EXISTS (SELECT 1 FROM blobs b WHERE b.sha256 = t.slot_sha256)) \
                         ORDER BY t.created_at, t.rowid LIMIT 1) \
               AND status = 'queued' \
             RETURNING {TASK_COLUMNS}"
        );
        let held_back_jobs = self.dialect().json_text_elements("$10");
        let train_sql = format!(
            "UPDATE tasks SET status = 'leased', provider_id = $1, lease_expires_at = $2, assigned_at = $3, \
             updated_at = $3, price_per_hour = $6 \
             WHERE id = (SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id \
                         WHERE t.status = 'queued' AND t.kind = 'train' AND j.status IN ('queued', 'running') \
                           AND (j.device = 'any' OR j.device = $4) \
                           AND j.min_memory_bytes <= CASE WHEN j.runtime = 'container' THEN $13 ELSE $5 END \
                           AND (j.max_price_per_hour IS NULL OR j.max_price_per_hour >= $6) \
                           AND (j.budget > 0 OR $6 = 0) \
                           AND ($7 OR j.budget <= $8) \
                           AND NOT EXISTS (SELECT 1 FROM tasks f WHERE f.job_id = t.job_id \
                               AND f.segment = t.segment AND f.status = 'failed' AND f.kind = 'train' \
                               AND f.provider_id = $1) \
                           AND NOT EXISTS (SELECT 1 FROM job_bars b WHERE b.job_id = t.job_id AND b.provider_id = $1) \
                           AND (j.region IS NULL OR j.region = $9) \
                           AND (j.runtime = 'native' OR $12) \
                           AND (j.confidential = 0 OR EXISTS (SELECT 1 FROM job_keys k WHERE k.job_id = t.job_id AND k.provider_id = $1)) \
                           AND {HOLDS_TIER} \
                           AND NOT (t.round IS NOT NULL AND t.updated_at > $11 \
                               AND t.job_id IN ({held_back_jobs})) \
                           AND (t.round IS NULL OR NOT EXISTS (SELECT 1 FROM tasks o WHERE o.job_id = t.job_id \
                               AND o.status = 'leased' AND o.kind = 'train' AND o.provider_id = $1)) \
                           AND (t.slot_sha256 IS NULL OR EXISTS (SELECT 1 FROM blobs b WHERE b.sha256 = t.slot_sha256) \
                               OR EXISTS (SELECT 1 FROM commitments h WHERE h.job_id = t.job_id \
                                   AND h.checkpoint_sha256 = t.slot_sha256 AND h.provider_id = $1)) \
                           AND NOT EXISTS (SELECT 1 FROM booking_providers bp JOIN bookings bk ON bk.id = bp.booking_id \
                               WHERE bp.provider_id = $1 AND bk.status = 'reserved' AND bk.starts_at <= $3 \
                                 AND bk.ends_at > $3 AND bk.account_id != j.account_id) \
                           AND (j.booking_id IS NULL OR EXISTS (SELECT 1 FROM booking_providers bp \
                               JOIN bookings bk ON bk.id = bp.booking_id \
                               WHERE bk.id = j.booking_id AND bp.provider_id = $1 AND bk.status = 'reserved' \
                                 AND bk.starts_at <= $3 AND bk.ends_at > $3)) \
                         ORDER BY j.created_at, j.rowid, \
                           NOT EXISTS (SELECT 1 FROM commitments h WHERE h.job_id = t.job_id \
                               AND h.checkpoint_sha256 = t.slot_sha256 AND h.provider_id = $1), \
                           t.created_at, t.rowid LIMIT 1) \
               AND status = 'queued' \
             RETURNING {TASK_COLUMNS}"
        );
        // A parallel job's outer step, to any provider that trains and was
        // neither barred from the job nor failed this round's step before;
        // it holds up the whole round, so it goes before new segments. The
        // provider that computed the round before's holds the global
        // checkpoint it starts from: it gets it first, others once it is
        // gone (unseen for a lease) or the step has waited half a lease.
        let outer_sql = format!(
            "UPDATE tasks SET status = 'leased', provider_id = $1, lease_expires_at = $2, assigned_at = $3, \
             updated_at = $3 \
             WHERE id = (SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id \
                         WHERE t.status = 'queued' AND t.kind = 'outer' AND j.status IN ('queued', 'running') \
                           AND NOT EXISTS (SELECT 1 FROM tasks f WHERE f.job_id = t.job_id AND f.kind = 'outer' \
                               AND f.round = t.round AND f.status = 'failed' AND f.provider_id = $1) \
                           AND NOT EXISTS (SELECT 1 FROM job_bars b WHERE b.job_id = t.job_id AND b.provider_id = $1) \
                           AND (j.confidential = 0 OR EXISTS (SELECT 1 FROM job_keys k WHERE k.job_id = t.job_id AND k.provider_id = $1)) \
                           AND {HOLDS_TIER} \
                           AND (t.updated_at <= $5 OR NOT EXISTS (SELECT 1 FROM outer_steps p \
                               JOIN providers q ON q.id = p.provider_id \
                               WHERE p.job_id = t.job_id AND p.round = t.round - 1 AND p.discarded_at IS NULL \
                                 AND p.provider_id != $1 AND q.last_seen >= $4 \
                                 AND NOT EXISTS (SELECT 1 FROM job_bars x WHERE x.job_id = t.job_id \
                                                 AND x.provider_id = p.provider_id))) \
                         ORDER BY j.created_at, j.rowid, t.created_at, t.rowid LIMIT 1) \
               AND status = 'queued' \
             RETURNING {TASK_COLUMNS}"
        );
        // A provider whose hardware is unproven, whose GPU another provider
        // claims too, or that is paused gets nothing.
        let capacity = if held.is_some() { 0 } else { capacity };
        // Nor a young worker segment of a round that enough faster
        // providers can fill.
        let held_back = if trains && capacity > 0 {
            let money = &self.inner.config.money;
            crate::placement::held_back(w.conn(), provider.as_str(), now, self.lease_ms(), money)
                .await?
        } else {
            Vec::new()
        };
        let held_back_json = serde_json::to_string(&held_back)?;
        for _ in 0..capacity {
            let mut task: Option<TaskRow> = None;
            if validates {
                task = sqlx::query_as(&replay_sql)
                    .bind(provider.as_str())
                    .bind(now + self.lease_ms())
                    .bind(now)
                    .bind(&device)
                    .bind(memory)
                    .bind(price)
                    .bind(containers)
                    .bind(host_memory)
                    .fetch_optional(w.conn())
                    .await?;
            }
            if task.is_none() && trains {
                task = sqlx::query_as(&outer_sql)
                    .bind(provider.as_str())
                    .bind(now + self.lease_ms())
                    .bind(now)
                    .bind(now - self.lease_ms())
                    .bind(now - self.lease_ms() / 2)
                    .fetch_optional(w.conn())
                    .await?;
            }
            if task.is_none() && trains {
                task = sqlx::query_as(&train_sql)
                    .bind(provider.as_str())
                    .bind(now + self.lease_ms())
                    .bind(now)
                    .bind(&device)
                    .bind(memory)
                    .bind(price)
                    .bind(staked)
                    .bind(stake_free_budget)
                    .bind(region.as_deref())
                    .bind(&held_back_json)
                    .bind(now - self.lease_ms() / 2)
                    .bind(containers)
                    .bind(host_memory)
                    .fetch_optional(w.conn())
                    .await?;
            }
            let Some(task) = task else { break };
            let job = job_of(w.conn(), &task).await?;
            if task.kind == TaskKind::Outer {
                tracing::info!(job = %job.id, task = %task.id, provider = %provider, round = task.round, "outer step assigned");
                out.push(assignment(w.conn(), &job, &task, self.inner.config.lease_seconds).await?);
                continue;
            }
            if task.kind == TaskKind::Replay {
                tracing::info!(job = %job.id, task = %task.id, validator = %provider, segment = task.segment, "replay assigned");
                out.push(assignment(w.conn(), &job, &task, self.inner.config.lease_seconds).await?);
                continue;
            }
            if job.status == JobStatus::Queued {
                crate::queue::set_status(w, &job.id, JobStatus::Running, None).await?;
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
        Ok((out, held_back))
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
        sqlx::query("UPDATE tasks SET step = $1, updated_at = $2 WHERE id = $3")
            .bind(i64::try_from(p.step).unwrap_or(i64::MAX))
            .bind(now)
            .bind(task_id)
            .execute(w.conn())
            .await?;
        // The job's `last_loss` stays that of its last accepted checkpoint:
        // a segment in progress may yet be lost. Its live loss is the event.
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
            "UPDATE tasks SET status = 'failed', reason = $1, lease_expires_at = NULL, updated_at = $2 WHERE id = $3",
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
            crate::audit::requeue_replay(&mut w, audit_id).await?;
            w.commit().await?;
            tracing::info!(task = %task_id, validator = %provider, reason = %reason, "replay failed; requeued");
            return Ok(());
        }
        // A segment counts the failures of its training, an outer step those
        // of its round's step.
        let failures: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT provider_id) FROM tasks WHERE job_id = $1 AND segment = $2 AND status = 'failed' \
             AND kind = $3",
        )
        .bind(&task.job_id)
        .bind(task.segment)
        .bind(task.kind.as_str())
        .fetch_one(w.conn())
        .await?;
        let job = job_of(w.conn(), &task).await?;
        if failures >= MAX_SEGMENT_FAILURES {
            let what = match (task.kind, task.round) {
                (TaskKind::Outer, Some(round)) => format!("the outer step of round {round}"),
                _ => format!("segment {}", task.segment),
            };
            let why = format!("{what} failed {failures} times; last: {reason}");
            crate::escrow::settle_job(&mut w, &job).await?;
            crate::audit::end_job(&mut w, &job.id, JobStatus::Failed, Some(why.clone())).await?;
            w.commit().await?;
            tracing::info!(job = %job.id, reason = %why, "job failed");
        } else {
            crate::job::requeue(&mut w, &task).await?;
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
            "UPDATE tasks SET status = 'released', reason = $1, lease_expires_at = NULL, updated_at = $2 WHERE id = $3",
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
        crate::job::requeue(&mut w, &task).await?;
        w.commit().await?;
        tracing::info!(task = %task_id, provider = %provider, reason = %reason, "task released; segment requeued");
        Ok(())
    }

    /// Expires every lease past its time and queues its segment again.
    /// Returns how many leases expired. A lease gets as much longer as the
    /// pool runs behind (see [`Pool::mark_absent`]): the heartbeat that
    /// would renew it may be waiting in the pool's own queue.
    pub async fn reap_expired_leases(&self) -> Result<usize, PoolError> {
        let mut w = self.write().await?;
        let now = w.now;
        let behind = self.inner.backlog.delay_ms(now);
        let expired: Vec<TaskRow> = sqlx::query_as(&format!(
            "UPDATE tasks SET status = 'expired', updated_at = $1 \
             WHERE status = 'leased' AND lease_expires_at < $2 \
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(now)
        .bind(now - behind)
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
            crate::job::requeue(&mut w, task).await?;
            tracing::info!(job = %task.job_id, task = %task.id, provider = %provider, segment = task.segment,
                "lease expired; segment requeued");
        }
        w.commit().await?;
        Ok(expired.len())
    }

    /// Writes the sightings no write transaction has taken yet.
    async fn write_sightings(&self) -> Result<(), PoolError> {
        if self.inner.sightings.is_empty() {
            return Ok(());
        }
        self.write().await?.commit().await
    }

    /// Runs [`Pool::reap_expired_leases`], [`Pool::mark_absent`],
    /// [`Pool::expire_unserved_audits`], [`Pool::end_bookings`],
    /// [`Pool::reset_lost_slots`] and [`Pool::close_late_rounds`]
    /// periodically until `stop`, and [`Pool::sample_telemetry`] once a
    /// minute.
    pub(crate) async fn run_reaper(self, stop: CancellationToken) {
        let lease_ms = u64::from(self.inner.config.lease_seconds) * 1000;
        let period = Duration::from_millis((lease_ms / 4).clamp(100, 1000));
        let mut sampled = i64::MIN;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            // One process runs the loops (see `db::Leadership`); the
            // others write their sightings, which no other writer would.
            if !self.inner.leadership.lead().await {
                if let Err(e) = self.write_sightings().await {
                    tracing::warn!(error = %e, "writing sightings failed");
                }
                self.inner.throttle.prune();
                continue;
            }
            if let Err(e) = self.reap_expired_leases().await {
                tracing::warn!(error = %e, "lease reaper failed");
            }
            if let Err(e) = self.mark_absent().await {
                tracing::warn!(error = %e, "marking absent providers failed");
            }
            if let Err(e) = self.expire_unserved_audits().await {
                tracing::warn!(error = %e, "expiring unserved audits failed");
            }
            if let Err(e) = self.end_bookings().await {
                tracing::warn!(error = %e, "ending bookings failed");
            }
            if let Err(e) = self.reset_lost_slots().await {
                tracing::warn!(error = %e, "resetting lost worker slots failed");
            }
            if let Err(e) = self.close_late_rounds().await {
                tracing::warn!(error = %e, "closing late rounds failed");
            }
            let minute = self.now().div_euclid(crate::presence::TELEMETRY_EVERY_MS);
            if minute > sampled {
                match self.sample_telemetry().await {
                    Ok(_) => sampled = minute,
                    Err(e) => tracing::warn!(error = %e, "sampling telemetry failed"),
                }
            }
            self.inner.throttle.prune();
        }
    }
}
