//! The database: connection setup, rows and the views built from them.
//!
//! Schema (see `migrations/`): `accounts`, `providers`, `blobs`,
//! `blob_uploads`, `jobs`, `tasks`, `commitments`, `job_events`. Times are
//! stored as unix milliseconds and rendered as RFC 3339 UTC.

use crate::error::PoolError;
use crate::sighting::Sightings;
use gradpool_core::hardware::Hardware;
use gradpool_core::spec::VerificationLevel;
use gradpool_core::state::{
    CommitmentStatus, JobStatus, ProviderStatus, Runtime, TaskKind, TaskStatus,
};
use gradpool_core::verification::{audit_probability, reputation, Sampling};
use gradpool_core::wire::{JobEvent, JobEventKind, JobView, ProviderView, SegmentView};
use gradpool_core::{JobId, Piconero, ProviderId, Sha256Hex, SignedCommitment};
use sqlx::AnyConnection;

/// Unix milliseconds as RFC 3339 UTC (`2026-01-01T00:00:00.123Z`).
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// A count or step stored as SQLite's signed integer (never negative).
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A segment index stored as SQLite's signed integer (never negative).
pub(crate) fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// A job as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub spec_toml: String,
    pub data_sha256: String,
    pub device: String,
    #[sqlx(try_from = "String")]
    pub status: JobStatus,
    pub steps: i64,
    pub checkpoint_every: i64,
    pub segments_total: i64,
    pub step: i64,
    pub segments_done: i64,
    pub last_loss: Option<f64>,
    /// The held-out loss at the last accepted checkpoint.
    pub eval_loss: Option<f64>,
    pub checkpoint_sha256: Option<String>,
    pub commitment: String,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The provider holding the job's current lease, if any.
    pub provider: Option<String>,
    pub budget: i64,
    pub max_price_per_hour: Option<i64>,
    pub flops_per_step: Option<f64>,
    /// What the paid segments cost so far.
    pub spent: i64,
    /// What is left in the job's escrow.
    pub escrow: i64,
    #[sqlx(try_from = "String")]
    pub verification: VerificationLevel,
    /// JSON of the model the job trains (NULL only for jobs from before
    /// the pool recorded it).
    pub model: Option<String>,
    /// The memory a training step takes, in bytes.
    pub memory_bytes: Option<i64>,
    /// The device memory a provider must have to get the job.
    pub min_memory_bytes: i64,
    /// The customer's booking the job trains in, if it was submitted into
    /// one: only the booking's providers take it, inside its window.
    pub booking_id: Option<String>,
    /// A parallel job's worker slots (`None`: the job trains one segment
    /// after another).
    pub workers: Option<i64>,
    /// The fewest workers a round of a parallel job may close with.
    pub min_workers: Option<i64>,
    /// The region the job trains in (`resources.region`), if it names one.
    pub region: Option<String>,
    /// A parallel job's current round.
    pub round: i64,
    /// What runs its segments: gradpool's trainer or the customer's
    /// container.
    #[sqlx(try_from = "String")]
    pub runtime: Runtime,
    /// Its dataset and checkpoints are sealed; only key holders get it.
    #[sqlx(try_from = "crate::db::Flag")]
    pub confidential: bool,
}

const JOB_COLUMNS: &str = "id, account_id, name, spec_toml, data_sha256, device, status, steps, \
    checkpoint_every, segments_total, step, segments_done, last_loss, eval_loss, checkpoint_sha256, \
    commitment, error, created_at, updated_at, \
    (SELECT t.provider_id FROM tasks t WHERE t.job_id = jobs.id AND t.status = 'leased' AND t.kind = 'train' \
     ORDER BY t.assigned_at DESC LIMIT 1) AS provider, budget, max_price_per_hour, flops_per_step, \
    (SELECT COALESCE(CAST(SUM(t.price) AS BIGINT), 0) FROM tasks t WHERE t.job_id = jobs.id) AS spent, \
    (SELECT COALESCE(CAST(SUM(p.amount) AS BIGINT), 0) FROM postings p WHERE p.account_id = 'escrow:' || jobs.id) AS escrow, verification, model, memory_bytes, min_memory_bytes, booking_id, workers, min_workers, region, round, runtime, confidential = 1 AS confidential";

impl JobRow {
    /// The head of the job's commitment chain: its last accepted
    /// commitment's hash, or its genesis.
    pub fn chain_head(&self) -> Result<gradpool_core::commitment::ChainHash, PoolError> {
        self.commitment
            .parse()
            .map_err(|e| PoolError::Internal(format!("job {}: stored {e}", self.id)))
    }

    /// The job as its owner sees it.
    pub fn view(&self) -> Result<JobView, PoolError> {
        Ok(JobView {
            id: JobId::from(self.id.as_str()),
            name: self.name.clone(),
            status: self.status,
            spec_toml: self.spec_toml.clone(),
            steps: to_u64(self.steps),
            checkpoint_every: to_u64(self.checkpoint_every),
            step: to_u64(self.step),
            segments_done: to_u32(self.segments_done),
            segments_total: to_u32(self.segments_total),
            last_loss: self.last_loss.map(|l| l as f32),
            eval_loss: self.eval_loss.map(|l| l as f32),
            provider: self.provider.as_deref().map(ProviderId::from),
            data_sha256: parse_sha(&self.data_sha256)?,
            checkpoint_sha256: self
                .checkpoint_sha256
                .as_deref()
                .map(parse_sha)
                .transpose()?,
            error: self.error.clone(),
            budget: pico(self.budget),
            spent: pico(self.spent),
            escrow: pico(self.escrow),
            parameters: self
                .model
                .as_deref()
                .and_then(|m| serde_json::from_str::<gradpool_core::model::ModelMeta>(m).ok())
                // A container job's script alone knows its model.
                .filter(|m| !matches!(m, gradpool_core::model::ModelMeta::Container { .. }))
                .map(|m| m.parameter_count()),
            memory_bytes: self.memory_bytes.and_then(|m| u64::try_from(m).ok()),
            waiting: None,
            booking: self.booking_id.clone(),
            audits_waiting: 0,
            audits_unserved: 0,
            providers: 0,
            parallel: self.workers.filter(|n| *n > 0).map(|n| {
                let every = self.checkpoint_every.max(1);
                gradpool_core::wire::ParallelProgress {
                    workers: to_u32(n),
                    round: to_u64(self.round),
                    rounds: to_u64((self.steps + every - 1) / every),
                }
            }),
            created_at: rfc3339(self.created_at),
            updated_at: rfc3339(self.updated_at),
        })
    }
}

/// A stored amount (never negative) as piconero.
pub(crate) fn pico(v: i64) -> Piconero {
    Piconero(u64::try_from(v).unwrap_or(0))
}

fn parse_sha(s: &str) -> Result<Sha256Hex, PoolError> {
    s.parse()
        .map_err(|e| PoolError::Internal(format!("stored digest: {e}")))
}

/// A job by id, whoever owns it.
pub async fn job(conn: &mut AnyConnection, id: &str) -> Result<Option<JobRow>, PoolError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
    Ok(sqlx::query_as::<_, JobRow>(&sql)
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

/// A job by id if `account` owns it; `NotFound` otherwise (a job of another
/// account is never revealed).
pub async fn owned_job(
    conn: &mut AnyConnection,
    account: &str,
    id: &str,
) -> Result<JobRow, PoolError> {
    match job(conn, id).await? {
        Some(job) if job.account_id == account => Ok(job),
        _ => Err(PoolError::not_found(format!("job {id}"))),
    }
}

/// The jobs of an account, newest first.
pub async fn jobs_of(conn: &mut AnyConnection, account: &str) -> Result<Vec<JobRow>, PoolError> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE account_id = $1 ORDER BY created_at DESC, rowid DESC"
    );
    Ok(sqlx::query_as::<_, JobRow>(&sql)
        .bind(account)
        .fetch_all(conn)
        .await?)
}

/// A task as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskRow {
    pub id: String,
    pub job_id: String,
    pub segment: i64,
    pub start_step: i64,
    pub end_step: i64,
    #[sqlx(try_from = "String")]
    pub status: TaskStatus,
    pub provider_id: Option<String>,
    pub lease_expires_at: Option<i64>,
    #[sqlx(try_from = "String")]
    pub kind: TaskKind,
    /// The audit a replay task belongs to.
    pub audit_id: Option<String>,
    /// A parallel job's round (`None` for other jobs).
    pub round: Option<i64>,
    /// A parallel job's worker slot (`None` for the outer step).
    pub worker: Option<i64>,
    /// The slot's checkpoint a parallel job's segment continues.
    pub slot_sha256: Option<String>,
}

/// The columns of a [`TaskRow`], for `SELECT` and `RETURNING`.
pub(crate) const TASK_COLUMNS: &str =
    "id, job_id, segment, start_step, end_step, status, provider_id, lease_expires_at, kind, audit_id, \
     round, worker, slot_sha256";

/// A task by id.
pub async fn task(conn: &mut AnyConnection, id: &str) -> Result<Option<TaskRow>, PoolError> {
    Ok(
        sqlx::query_as::<_, TaskRow>(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"))
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Appends an event to a job's log. The caller publishes it once its
/// transaction has committed.
pub async fn insert_event(
    conn: &mut AnyConnection,
    job_id: &str,
    kind: JobEventKind,
    at: i64,
) -> Result<JobEvent, PoolError> {
    let body = serde_json::to_string(&kind)?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO job_events (job_id, at, body) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(job_id)
    .bind(at)
    .bind(body)
    .fetch_one(conn)
    .await?;
    Ok(JobEvent {
        id,
        job_id: JobId::from(job_id),
        at: rfc3339(at),
        kind,
    })
}

/// Up to `limit` events of any job with id greater than `after`, in
/// order, and the id of the last row read (`after` when none): an
/// unreadable row is skipped, not read again.
pub async fn events_since(
    conn: &mut AnyConnection,
    after: i64,
    limit: u32,
) -> Result<(Vec<JobEvent>, i64), PoolError> {
    let rows: Vec<(i64, String, i64, String)> = sqlx::query_as(
        "SELECT id, job_id, at, body FROM job_events WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    let last = rows.last().map_or(after, |r| r.0);
    let events = rows
        .into_iter()
        .filter_map(|(id, job_id, at, body)| stored_event(id, &job_id, at, &body))
        .collect();
    Ok((events, last))
}

/// The newest event's id (0 with none).
pub async fn last_event_id(conn: &mut AnyConnection) -> Result<i64, PoolError> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM job_events")
            .fetch_one(conn)
            .await?,
    )
}

/// A stored event. A read never fails on a row: an event that does not
/// parse (written by an older pool) is skipped, with a warning.
fn stored_event(id: i64, job_id: &str, at: i64, body: &str) -> Option<JobEvent> {
    match serde_json::from_str(body) {
        Ok(kind) => Some(JobEvent {
            id,
            job_id: JobId::from(job_id),
            at: rfc3339(at),
            kind,
        }),
        Err(e) => {
            tracing::warn!(job = %job_id, event = id, error = %e, "unreadable stored event; skipped");
            None
        }
    }
}

/// Up to `limit` of a job's events with id greater than `after`, in order.
pub async fn events_after(
    conn: &mut AnyConnection,
    job_id: &str,
    after: i64,
    limit: u32,
) -> Result<Vec<JobEvent>, PoolError> {
    let rows: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT id, at, body FROM job_events WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(job_id)
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, at, body)| stored_event(id, job_id, at, &body))
        .collect())
}

/// A stored loss trace. Writers store only finite losses, but a read never
/// fails on a row: one that does not parse (written by an older pool)
/// reads as an empty trace, with a warning.
fn stored_loss_trace(job_id: &str, segment: i64, text: &str) -> Vec<f32> {
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::warn!(job = %job_id, segment, error = %e, "unreadable stored loss trace; shown empty");
        Vec::new()
    })
}

#[derive(sqlx::FromRow)]
struct SegmentRow {
    segment: i64,
    start_step: i64,
    end_step: i64,
    provider_id: String,
    checkpoint_sha256: String,
    signed: String,
    loss_trace: String,
    eval_loss: Option<f64>,
    committed_at: i64,
    #[sqlx(try_from = "String")]
    status: CommitmentStatus,
    share: Option<f64>,
    foreign_processes: Option<i64>,
}

/// The accepted commitments of a job, in segment order.
pub async fn segments(
    conn: &mut AnyConnection,
    job_id: &str,
) -> Result<Vec<SegmentView>, PoolError> {
    let rows: Vec<SegmentRow> = sqlx::query_as(
        "SELECT c.segment, c.start_step, c.end_step, c.provider_id, c.checkpoint_sha256, c.signed, c.loss_trace, \
         c.eval_loss, c.committed_at, c.status, t.share, t.foreign_processes \
         FROM commitments c LEFT JOIN tasks t ON t.id = c.task_id WHERE c.job_id = $1 ORDER BY c.segment",
    )
    .bind(job_id)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(SegmentView {
                segment: to_u32(r.segment),
                start_step: to_u64(r.start_step),
                end_step: to_u64(r.end_step),
                provider: ProviderId::from(r.provider_id.as_str()),
                checkpoint_sha256: parse_sha(&r.checkpoint_sha256)?,
                commitment: serde_json::from_str::<SignedCommitment>(&r.signed)?,
                loss_trace: stored_loss_trace(job_id, r.segment, &r.loss_trace),
                eval_loss: r.eval_loss.map(|l| l as f32),
                committed_at: rfc3339(r.committed_at),
                status: r.status,
                dedication: r.share.map(|share| gradpool_core::wire::Dedication {
                    share,
                    foreign_processes: r
                        .foreign_processes
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(0),
                }),
            })
        })
        .collect()
}

#[derive(sqlx::FromRow)]
struct OuterRow {
    round: i64,
    provider_id: String,
    global_sha256: String,
    signed: String,
    loss: Option<f64>,
    eval_loss: Option<f64>,
    committed_at: i64,
    update_sha256: Option<String>,
}

/// Each accepted worker segment of a parallel job with `n` slots: what its
/// provider moved for it (its pseudo-gradient up; the round's outer
/// update or global checkpoint down) and its milliseconds from lease to
/// commitment.
async fn worker_figures(
    conn: &mut AnyConnection,
    job_id: &str,
    n: i64,
) -> Result<std::collections::BTreeMap<i64, (i64, i64)>, PoolError> {
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT c.segment, COALESCE(c.committed_at - t.assigned_at, 0), \
           COALESCE((SELECT CAST(SUM(b.bytes) AS BIGINT) FROM blob_transfers b WHERE b.principal = c.provider_id \
                     AND b.direction = 'upload' AND b.sha256 = c.pseudo_gradient_sha256), 0) \
           + COALESCE((SELECT CAST(SUM(b.bytes) AS BIGINT) FROM blob_transfers b JOIN outer_steps o \
                       ON o.job_id = c.job_id AND o.round = c.segment / $2 - 1 AND o.discarded_at IS NULL \
                       WHERE b.principal = c.provider_id AND b.direction = 'download' \
                         AND (b.sha256 = o.update_sha256 OR b.sha256 = o.global_sha256)), 0) \
         FROM commitments c JOIN tasks t ON t.id = c.task_id WHERE c.job_id = $1",
    )
    .bind(job_id)
    .bind(n)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(segment, ms, bytes)| (segment, (bytes, ms)))
        .collect())
}

/// A parallel job's rounds so far, from its accepted segments and outer
/// steps (none for other jobs).
pub async fn rounds(
    conn: &mut AnyConnection,
    job: &JobRow,
) -> Result<Vec<gradpool_core::wire::RoundView>, PoolError> {
    use gradpool_core::wire::{OuterView, RoundView, RoundWorker};
    let Some(n) = job.workers.filter(|n| *n > 0) else {
        return Ok(Vec::new());
    };
    let segments = segments(&mut *conn, &job.id).await?;
    let committed: std::collections::BTreeMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>(
        "SELECT segment, committed_at FROM commitments WHERE job_id = $1",
    )
    .bind(&job.id)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let outers: Vec<OuterRow> = sqlx::query_as(
        "SELECT round, provider_id, global_sha256, signed, loss, eval_loss, committed_at, update_sha256 FROM outer_steps \
         WHERE job_id = $1 AND discarded_at IS NULL ORDER BY round",
    )
    .bind(&job.id)
    .fetch_all(&mut *conn)
    .await?;
    let moved: std::collections::BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT sha256, CAST(SUM(bytes) AS BIGINT) FROM blob_transfers WHERE sha256 IN \
         (SELECT checkpoint_sha256 FROM commitments WHERE job_id = $1 \
          UNION SELECT pseudo_gradient_sha256 FROM commitments WHERE job_id = $1 \
          UNION SELECT global_sha256 FROM outer_steps WHERE job_id = $1 AND discarded_at IS NULL \
          UNION SELECT update_sha256 FROM outer_steps WHERE job_id = $1 AND discarded_at IS NULL) \
         GROUP BY sha256",
    )
    .bind(&job.id)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let bytes_of = |sha: &str| to_u64(moved.get(sha).copied().unwrap_or(0));
    let figures = worker_figures(&mut *conn, &job.id, n).await?;
    let mut out: Vec<RoundView> = Vec::new();
    let mut times: Vec<Vec<i64>> = Vec::new();
    // Each round's first lease.
    let mut starts: Vec<Option<i64>> = Vec::new();
    for s in segments {
        let round = i64::from(s.segment) / n;
        while out.len() as i64 <= round {
            let r = out.len() as i64;
            out.push(RoundView {
                round: to_u64(r),
                start_step: to_u64(r * job.checkpoint_every),
                end_step: to_u64(((r + 1) * job.checkpoint_every).min(job.steps)),
                workers: Vec::new(),
                wait_seconds: 0.0,
                bytes: 0,
                seconds: 0.0,
                outer: None,
            });
            times.push(Vec::new());
            starts.push(None);
        }
        let at = committed.get(&i64::from(s.segment)).copied().unwrap_or(0);
        let index = usize::try_from(round).unwrap_or(0);
        times[index].push(at);
        let leased = at - figures.get(&i64::from(s.segment)).map_or(0, |f| f.1);
        starts[index] = Some(starts[index].map_or(leased, |t: i64| t.min(leased)));
        out[index].bytes += bytes_of(s.checkpoint_sha256.as_str());
        if let Some(sent) = &s.commitment.commitment.pseudo_gradient_sha256 {
            out[index].bytes += bytes_of(sent.as_str());
        }
        let (bytes, ms) = figures
            .get(&i64::from(s.segment))
            .copied()
            .unwrap_or_default();
        out[index].workers.push(RoundWorker {
            worker: u32::try_from(i64::from(s.segment) % n).unwrap_or(0),
            segment: s.segment,
            provider: s.provider,
            checkpoint_sha256: s.checkpoint_sha256,
            loss: s.loss_trace.last().copied(),
            eval_loss: s.eval_loss,
            bytes: to_u64(bytes),
            seconds: ms.max(0) as f64 / 1000.0,
        });
    }
    for (view, t) in out.iter_mut().zip(&times) {
        let (first, last) = (t.iter().min(), t.iter().max());
        if let (Some(first), Some(last)) = (first, last) {
            view.wait_seconds = (last - first) as f64 / 1000.0;
        }
    }
    for o in outers {
        if let Some(view) = out.get_mut(usize::try_from(o.round).unwrap_or(usize::MAX)) {
            view.bytes += bytes_of(&o.global_sha256);
            if let Some(start) = starts
                .get(usize::try_from(o.round).unwrap_or(usize::MAX))
                .copied()
                .flatten()
            {
                view.seconds = (o.committed_at - start).max(0) as f64 / 1000.0;
            }
            if let Some(update) = &o.update_sha256 {
                view.bytes += bytes_of(update);
            }
            view.outer = Some(OuterView {
                provider: ProviderId::from(o.provider_id.as_str()),
                global_sha256: parse_sha(&o.global_sha256)?,
                commitment: serde_json::from_str(&o.signed)?,
                loss: o.loss.map(|l| l as f32),
                eval_loss: o.eval_loss.map(|l| l as f32),
                committed_at: rfc3339(o.committed_at),
            });
        }
    }
    Ok(out)
}

/// What a provider's status follows from.
pub(crate) struct StatusFacts {
    /// When it was last heard from (ms).
    pub last_seen: i64,
    /// It holds a lease.
    pub leased: bool,
    /// A hardware proof is pending or failed, or its GPU is claimed twice.
    pub held: bool,
    /// Its owner paused it.
    pub paused: bool,
    /// A booking reserves it now.
    pub booked: bool,
}

impl StatusFacts {
    /// `disconnected` when not heard from for a lease period, else
    /// `sharing` with a lease, else `held`, `paused`, `reserved` or `idle`.
    pub(crate) fn status(&self, now: i64, lease_seconds: u32) -> ProviderStatus {
        if now - self.last_seen > i64::from(lease_seconds) * 1000 {
            ProviderStatus::Disconnected
        } else if self.leased {
            ProviderStatus::Sharing
        } else if self.held {
            ProviderStatus::Held
        } else if self.paused {
            ProviderStatus::Paused
        } else if self.booked {
            ProviderStatus::Reserved
        } else {
            ProviderStatus::Idle
        }
    }
}

#[derive(sqlx::FromRow)]
struct ProviderRow {
    id: String,
    name: String,
    hardware: String,
    class: String,
    last_seen: i64,
    price_per_hour: i64,
    leased: i64,
    committed: i64,
    booked: i64,
    #[sqlx(try_from = "crate::db::Flag")]
    validate: bool,
    #[sqlx(try_from = "crate::db::Flag")]
    trains: bool,
    #[sqlx(try_from = "crate::db::Flag")]
    containers: bool,
    encryption_key: Option<String>,
    compliance: Option<String>,
    certified: Option<String>,
    certified_until: Option<i64>,
    paused: Option<String>,
    held: Option<String>,
    duplicate_of: Option<String>,
    gpu_uuid: Option<String>,
    telemetry: Option<String>,
    proven_gflops: Option<f64>,
    streak: i64,
    faults: i64,
    transfer_bytes: Option<i64>,
    transfer_ms: Option<i64>,
}

/// Each principal's measured transfers, a derived table `(principal,
/// bytes, ms)`: the sums over its latest 32 blob transfers of at least
/// 64 KiB with a measured time (smaller ones say more about latency than
/// about the rate). Its rate is `bytes / ms`.
pub(crate) const TRANSFER_RATES: &str = "(SELECT principal, CAST(SUM(bytes) AS BIGINT) AS bytes, CAST(SUM(ms) AS BIGINT) AS ms FROM \
    (SELECT principal, bytes, ms, ROW_NUMBER() OVER (PARTITION BY principal ORDER BY at DESC, id DESC) AS n \
     FROM blob_transfers WHERE ms IS NOT NULL AND bytes >= 65536) AS latest WHERE n <= 32 GROUP BY principal)";

/// All providers, as anyone sees them: `disconnected` when not seen for a
/// lease period, `sharing` when holding a lease, else `idle`.
pub(crate) async fn providers(
    conn: &mut AnyConnection,
    now: i64,
    lease_seconds: u32,
    sampling: Sampling,
    sightings: &Sightings,
) -> Result<Vec<ProviderView>, PoolError> {
    let rows: Vec<ProviderRow> = sqlx::query_as(&format!(
        "SELECT p.id, p.name, p.hardware, p.class, p.last_seen, p.price_per_hour, p.validate, p.trains, p.containers, p.encryption_key, p.compliance, p.paused, p.held, p.duplicate_of, p.gpu_uuid, p.telemetry, p.proven_gflops, p.streak, p.faults, \
           (SELECT COUNT(*) FROM tasks t WHERE t.provider_id = p.id AND t.status = 'leased') AS leased, \
           (SELECT tier FROM certifications c WHERE c.provider_id = p.id AND c.revoked_at IS NULL \
              AND c.expires_at > $1 ORDER BY c.expires_at DESC LIMIT 1) AS certified, \
           (SELECT MAX(expires_at) FROM certifications c WHERE c.provider_id = p.id AND c.revoked_at IS NULL \
              AND c.expires_at > $1) AS certified_until, \
           (SELECT COUNT(*) FROM commitments c WHERE c.provider_id = p.id) AS committed, \
           (SELECT COUNT(*) FROM booking_providers bp JOIN bookings b ON b.id = bp.booking_id \
              WHERE bp.provider_id = p.id AND b.status = 'reserved' AND b.ends_at > $1) AS booked, \
           s.bytes AS transfer_bytes, s.ms AS transfer_ms \
         FROM providers p LEFT JOIN {TRANSFER_RATES} s ON s.principal = p.id ORDER BY p.registered_at, p.id",
    ))
    .bind(now)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|mut r| {
            if let Some(s) = sightings.get(&r.id).filter(|s| s.at > r.last_seen) {
                r.last_seen = s.at;
                r.telemetry = Some(s.telemetry);
            }
            // A proof pending or failed first; then a GPU claimed twice.
            let held = r.held.clone().or_else(|| {
                r.duplicate_of.as_deref().map(|other| {
                    crate::store::duplicate_reason(r.gpu_uuid.as_deref().unwrap_or("?"), other)
                })
            });
            let status = StatusFacts {
                last_seen: r.last_seen,
                leased: r.leased > 0,
                held: held.is_some(),
                paused: r.paused.is_some(),
                booked: r.booked > 0,
            }
            .status(now, lease_seconds);
            Ok(ProviderView {
                id: ProviderId::from(r.id.as_str()),
                name: r.name,
                status,
                held,
                proven_gflops: r.proven_gflops,
                transfer_rate: match (r.transfer_bytes, r.transfer_ms) {
                    (Some(b), Some(ms)) => Some(b as f64 * 1000.0 / ms.max(1) as f64),
                    _ => None,
                },
                paused_reason: if status == ProviderStatus::Disconnected {
                    None
                } else {
                    r.paused.clone()
                },
                hardware: serde_json::from_str::<Hardware>(&r.hardware)?,
                class: r.class,
                last_seen: rfc3339(r.last_seen),
                segments_committed: to_u64(r.committed),
                price_per_hour: pico(r.price_per_hour),
                validate: r.validate,
                train: r.trains,
                containers: r.containers,
                // Written by the pool from a checked registration.
                encryption_key: r
                    .encryption_key
                    .as_deref()
                    .and_then(|k| serde_json::from_str(k).ok()),
                compliance: r
                    .compliance
                    .as_deref()
                    .and_then(|c| serde_json::from_str(c).ok()),
                tier: match (r.certified.as_deref(), r.certified_until) {
                    (Some(tier), Some(until)) => Some(gradpool_core::wire::CertifiedTier {
                        tier: tier
                            .parse()
                            .map_err(|e| PoolError::Internal(format!("stored tier: {e}")))?,
                        expires_at: rfc3339(until),
                    }),
                    _ => None,
                },
                streak: to_u64(r.streak),
                faults: to_u64(r.faults),
                reputation: reputation(to_u64(r.streak)),
                audit_probability: audit_probability(
                    VerificationLevel::Standard,
                    to_u64(r.streak),
                    sampling,
                ),
                // Written by the pool from a parsed heartbeat.
                telemetry: r
                    .telemetry
                    .as_deref()
                    .and_then(|t| serde_json::from_str(t).ok()),
            })
        })
        .collect()
}

/// The `held` text of a provider whose GPU another provider also claims.
pub(crate) fn duplicate_reason(uuid: &str, other: &str) -> String {
    format!("GPU {uuid} is also claimed by provider {other}")
}
