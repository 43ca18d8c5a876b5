//! Audits: validators replay sampled segments, verdicts follow, cheaters
//! are slashed and their jobs rolled back.
//!
//! ```text
//! commit accepted ──draw p──▶ audit open ──replay task──▶ validator 1
//!                                │                        match ─▶ verified
//!                                │                        mismatch ─▶ replay task ─▶ validator 2
//!                                │                             agrees with the trainer ─▶ validator 1 at fault
//!                                │                             agrees with validator 1 ─▶ trainer at fault
//!                                └─ now and then: a planted audit (a verified segment, a wrong claim)
//! ```
//!
//! The draw happens after the commitment is accepted, from the operating
//! system's random source, with the probability of
//! [`gradpool_core::verification::audit_probability`]. Training goes on
//! while a segment is audited; a job succeeds only once its last audit is
//! decided.
//!
//! A trainer at fault: its stake is slashed (to the customer, a share to
//! the validator that caught it), its pending earnings from the job are
//! forfeited into the escrow, its streak resets, it is barred from the job,
//! the job rolls back to the checkpoint before the bad segment (the bad
//! commitment and every one built on it move to `discarded_commitments`),
//! and every other segment it trained for the job that was not replayed is
//! audited (`follow_up`).
//!
//! A validator at fault (outvoted in a dispute, or wrong on a planted
//! audit): its stake goes to the validator fund, its streak resets, and it
//! gets no more replays.
//!
//! Validators never replay their own segments nor those of a provider
//! sharing a payout address with them. A drawn audit with no eligible
//! validator connected stays open and waits for one (the job shows it); a
//! dispute waits for a second one. An audit no validator served within
//! [`VerificationConfig::audit_deadline_seconds`](crate::VerificationConfig)
//! of being drawn (and that none is replaying now) becomes `unserved`: its
//! segment stays merely accepted, and a job that trained to the end with
//! such an audit ends `unverified` instead of `succeeded`. Until then the
//! job does not end, so the trainer's earnings from it stay pending.

use crate::error::PoolError;
use crate::escrow::WorkDone;
use crate::store::{self, to_u32, to_u64};
use crate::tx::Write;
use crate::Pool;
use gradpool_core::commitment::genesis;
use gradpool_core::spec::VerificationLevel;
use gradpool_core::state::{AuditReason, AuditStatus, CommitmentStatus};
use gradpool_core::verification::{audit_probability, CROSS_CLASS_TOLERANCE};
use gradpool_core::wire::{JobEventKind, JobStatus, ReplayView, TaskKind, VerdictView};
use gradpool_core::{JobId, ProviderId, SignedCommitment, SignedReplay};
use sqlx::AnyConnection;

/// An audit as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct AuditRow {
    pub id: String,
    pub job_id: String,
    pub segment: i64,
    pub provider_id: String,
    pub signed: String,
    pub start_checkpoint_sha256: Option<String>,
    pub claimed_checkpoint_sha256: String,
    pub class: String,
    #[sqlx(try_from = "String")]
    pub reason: AuditReason,
    pub truth_sha256: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: AuditStatus,
    pub at_fault: Option<String>,
    pub created_at: i64,
    pub decided_at: Option<i64>,
}

const AUDIT_COLUMNS: &str = "id, job_id, segment, provider_id, signed, start_checkpoint_sha256, \
    claimed_checkpoint_sha256, class, reason, truth_sha256, status, at_fault, created_at, decided_at";

pub(crate) async fn audit(conn: &mut AnyConnection, id: &str) -> Result<AuditRow, PoolError> {
    sqlx::query_as::<_, AuditRow>(&format!("SELECT {AUDIT_COLUMNS} FROM audits WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| PoolError::Internal(format!("audit {id} vanished")))
}

/// A uniform draw in `[0, 1)` from the operating system's random source.
fn draw() -> f64 {
    let bits = u64::from_str_radix(&gradpool_core::id::random_hex(8), 16).unwrap_or(0);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// One validator's stored answer.
#[derive(sqlx::FromRow)]
struct ReplayRow {
    validator_id: String,
    signed: String,
    #[sqlx(try_from = "crate::db::Flag")]
    matches: bool,
}

/// Draws whether the segment just committed is audited, and opens the
/// audit if so. Returns whether it did.
pub(crate) async fn draw_audit(
    w: &mut Write<'_>,
    job_id: &str,
    level: VerificationLevel,
    segment: u32,
    provider: &ProviderId,
) -> Result<bool, PoolError> {
    let config = w.pool().inner.config.verification;
    let streak: i64 = sqlx::query_scalar("SELECT streak FROM providers WHERE id = $1")
        .bind(provider.as_str())
        .fetch_one(w.conn())
        .await?;
    let p = audit_probability(level, to_u64(streak), config.sampling);
    if p <= 0.0 || draw() >= p {
        return Ok(false);
    }
    if !crate::audit::validator_available(w, provider.as_str(), None).await? {
        // The audit is open all the same: it waits, visible on the job, for
        // an eligible validator until its deadline.
        tracing::warn!(job = %job_id, segment,
            "audit drawn, but no eligible validator is connected (the trainer's own and those \
             sharing its payout address are not); it waits for one");
    }
    let reason = match level {
        VerificationLevel::Paranoid => AuditReason::Paranoid,
        _ => AuditReason::Sampled,
    };
    crate::audit::open_audit(w, job_id, segment, reason).await?;
    if config.plant_rate > 0.0 && draw() < config.plant_rate {
        crate::audit::plant_audit(w).await?;
    }
    Ok(true)
}

/// Whether a connected validator other than `trainer` (and `besides`)
/// could take a replay of `trainer`'s work.
pub(crate) async fn validator_available(
    w: &mut Write<'_>,
    trainer: &str,
    besides: Option<&str>,
) -> Result<bool, PoolError> {
    let (now, lease_ms) = (w.now, w.pool().lease_ms());
    crate::placement::validator_available(w.conn(), now, lease_ms, trainer, besides).await
}

/// Opens an audit of a committed segment and queues its first replay.
/// Does nothing if the segment is already verified or under audit.
pub(crate) async fn open_audit(
    w: &mut Write<'_>,
    job_id: &str,
    segment: u32,
    reason: AuditReason,
) -> Result<(), PoolError> {
    let Some((provider, signed, claimed, status)): Option<(String, String, String, String)> =
        sqlx::query_as(
            "SELECT provider_id, signed, checkpoint_sha256, status FROM commitments \
             WHERE job_id = $1 AND segment = $2",
        )
        .bind(job_id)
        .bind(i64::from(segment))
        .fetch_optional(w.conn())
        .await?
    else {
        return Ok(());
    };
    if status.parse::<CommitmentStatus>()? != CommitmentStatus::Accepted {
        return Ok(());
    }
    let start = crate::audit::checkpoint_before(w, job_id, segment).await?;
    let class = serde_json::from_str::<SignedCommitment>(&signed)?
        .commitment
        .class;
    let id = format!("aud_{}", gradpool_core::id::random_hex(8));
    let now = w.now;
    sqlx::query(
        "INSERT INTO audits (id, job_id, segment, provider_id, signed, start_checkpoint_sha256, \
         claimed_checkpoint_sha256, class, reason, status, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'open', $10)",
    )
    .bind(&id)
    .bind(job_id)
    .bind(i64::from(segment))
    .bind(&provider)
    .bind(&signed)
    .bind(start.as_deref())
    .bind(&claimed)
    .bind(&class)
    .bind(reason.as_str())
    .bind(now)
    .execute(w.conn())
    .await?;
    sqlx::query("UPDATE commitments SET status = 'auditing' WHERE job_id = $1 AND segment = $2")
        .bind(job_id)
        .bind(i64::from(segment))
        .execute(w.conn())
        .await?;
    crate::audit::queue_replay(w, &id).await?;
    w.event(
        job_id,
        JobEventKind::Audit {
            segment,
            provider: ProviderId::from(provider.as_str()),
            reason: reason.to_string(),
        },
    )
    .await?;
    tracing::info!(job = %job_id, segment, provider = %provider, reason = %reason, audit = %id, "segment audit opened");
    Ok(())
}

/// The checkpoint a segment starts from (`None` for the first): the
/// previous segment's, or for a parallel job's segment its round's global
/// checkpoint (`None` in round 0).
pub(crate) async fn checkpoint_before(
    w: &mut Write<'_>,
    job_id: &str,
    segment: u32,
) -> Result<Option<String>, PoolError> {
    let workers: Option<i64> = sqlx::query_scalar("SELECT workers FROM jobs WHERE id = $1")
        .bind(job_id)
        .fetch_one(w.conn())
        .await?;
    if let Some(n) = workers.filter(|n| *n > 0) {
        let round = i64::from(segment) / n;
        return Ok(crate::queue::global_of_round(w.conn(), job_id, round)
            .await?
            .0);
    }
    if segment == 0 {
        return Ok(None);
    }
    let sha: Option<String> = sqlx::query_scalar(
        "SELECT checkpoint_sha256 FROM commitments WHERE job_id = $1 AND segment = $2",
    )
    .bind(job_id)
    .bind(i64::from(segment) - 1)
    .fetch_optional(w.conn())
    .await?;
    sha.map(Some).ok_or_else(|| {
        PoolError::Internal(format!(
            "job {job_id} has segment {segment} but not the one before"
        ))
    })
}

/// Queues a replay again after one failed or its lease expired, if its
/// audit is still open.
pub(crate) async fn requeue_replay(w: &mut Write<'_>, audit_id: &str) -> Result<(), PoolError> {
    if audit(w.conn(), audit_id).await?.status == AuditStatus::Open {
        crate::audit::queue_replay(w, audit_id).await?;
    }
    Ok(())
}

/// Queues a replay task for an open audit.
pub(crate) async fn queue_replay(w: &mut Write<'_>, audit_id: &str) -> Result<(), PoolError> {
    let a = audit(w.conn(), audit_id).await?;
    // The trained task: its steps and, for a parallel job, its round,
    // slot and the slot's checkpoint it continued.
    let (start, end, round, worker, slot): (i64, i64, Option<i64>, Option<i64>, Option<String>) =
        sqlx::query_as(
            "SELECT t.start_step, t.end_step, t.round, t.worker, t.slot_sha256 FROM tasks t \
             JOIN commitments c ON c.task_id = t.id WHERE c.job_id = $1 AND c.segment = $2 \
             UNION ALL \
             SELECT t.start_step, t.end_step, t.round, t.worker, t.slot_sha256 FROM tasks t \
             JOIN discarded_commitments d ON d.task_id = t.id WHERE d.job_id = $3 AND d.segment = $4 \
             LIMIT 1",
        )
        .bind(&a.job_id)
        .bind(a.segment)
        .bind(&a.job_id)
        .bind(a.segment)
        .fetch_one(w.conn())
        .await?;
    let id = gradpool_core::TaskId::random();
    let now = w.now;
    sqlx::query(
        "INSERT INTO tasks (id, job_id, segment, start_step, end_step, status, created_at, updated_at, kind, audit_id, \
         round, worker, slot_sha256) VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, 'replay', $8, $9, $10, $11)",
    )
    .bind(id.as_str())
    .bind(&a.job_id)
    .bind(a.segment)
    .bind(start)
    .bind(end)
    .bind(now)
    .bind(now)
    .bind(audit_id)
    .bind(round)
    .bind(worker)
    .bind(slot)
    .execute(w.conn())
    .await?;
    w.wake_providers();
    Ok(())
}

/// Plants a known-bad claim: a verified segment presented with another
/// checkpoint of its job as the claimed end. A validator that answers
/// without computing agrees with the claim and is caught.
pub(crate) async fn plant_audit(w: &mut Write<'_>) -> Result<(), PoolError> {
    let row: Option<(String, i64, String, String, String)> = sqlx::query_as(
        "SELECT job_id, segment, provider_id, signed, checkpoint_sha256 FROM commitments \
         WHERE status = 'verified' ORDER BY random() LIMIT 1",
    )
    .fetch_optional(w.conn())
    .await?;
    let Some((job_id, segment, provider, signed, truth)) = row else {
        return Ok(());
    };
    let wrong: Option<String> = sqlx::query_scalar(
        "SELECT checkpoint_sha256 FROM commitments WHERE job_id = $1 AND checkpoint_sha256 != $2 \
         ORDER BY random() LIMIT 1",
    )
    .bind(&job_id)
    .bind(&truth)
    .fetch_optional(w.conn())
    .await?;
    let Some(wrong) = wrong else { return Ok(()) };
    let start = crate::audit::checkpoint_before(w, &job_id, to_u32(segment)).await?;
    let class = serde_json::from_str::<SignedCommitment>(&signed)?
        .commitment
        .class;
    let id = format!("aud_{}", gradpool_core::id::random_hex(8));
    let now = w.now;
    sqlx::query(
        "INSERT INTO audits (id, job_id, segment, provider_id, signed, start_checkpoint_sha256, \
         claimed_checkpoint_sha256, class, reason, truth_sha256, status, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'planted', $9, 'open', $10)",
    )
    .bind(&id)
    .bind(&job_id)
    .bind(segment)
    .bind(&provider)
    .bind(&signed)
    .bind(start.as_deref())
    .bind(&wrong)
    .bind(&class)
    .bind(&truth)
    .bind(now)
    .execute(w.conn())
    .await?;
    crate::audit::queue_replay(w, &id).await?;
    tracing::debug!(job = %job_id, segment, audit = %id, "planted audit");
    Ok(())
}

/// Ends a job: its open audits are voided (their replays cancelled), then
/// its status set. Every end of a job goes through here.
pub(crate) async fn end_job(
    w: &mut Write<'_>,
    job_id: &str,
    status: JobStatus,
    reason: Option<String>,
) -> Result<(), PoolError> {
    void_audits(w, job_id).await?;
    crate::queue::set_status(w, job_id, status, reason).await
}

/// Voids the open audits of a job that ended and cancels their replays.
/// Planted audits stay: they test validators, not the job.
pub(crate) async fn void_audits(w: &mut Write<'_>, job_id: &str) -> Result<(), PoolError> {
    let now = w.now;
    sqlx::query(
        "UPDATE tasks SET status = 'cancelled', lease_expires_at = NULL, updated_at = $1 \
         WHERE kind = 'replay' AND status IN ('queued', 'leased') \
           AND audit_id IN (SELECT id FROM audits WHERE job_id = $2 AND status = 'open' \
                            AND reason != 'planted')",
    )
    .bind(now)
    .bind(job_id)
    .execute(w.conn())
    .await?;
    sqlx::query(
        "UPDATE audits SET status = 'void', decided_at = $1 \
         WHERE job_id = $2 AND status = 'open' AND reason != 'planted'",
    )
    .bind(now)
    .bind(job_id)
    .execute(w.conn())
    .await?;
    Ok(())
}

/// Ends a job whose last segment is committed once no audit of it is
/// open: `succeeded`, or `unverified` when some audit went unserved.
pub(crate) async fn finish_if_done(w: &mut Write<'_>, job_id: &str) -> Result<bool, PoolError> {
    let Some(job) = store::job(w.conn(), job_id).await? else {
        return Ok(false);
    };
    if job.status.is_final() || job.step < job.steps {
        return Ok(false);
    }
    let (open, unserved): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(CAST(SUM(CASE WHEN status = 'open' THEN 1 ELSE 0 END) AS BIGINT), 0), COALESCE(CAST(SUM(CASE WHEN status = 'unserved' THEN 1 ELSE 0 END) AS BIGINT), 0) \
         FROM audits WHERE job_id = $1 AND reason != 'planted'",
    )
    .bind(job_id)
    .fetch_one(w.conn())
    .await?;
    if open > 0 {
        return Ok(false);
    }
    crate::escrow::settle_job(w, &job).await?;
    if unserved > 0 {
        let why = format!(
            "{unserved} drawn audit{} found no eligible validator before the deadline; \
             those segments were not checked: run `gradpool job verify {job_id}` to check them yourself",
            if unserved == 1 { "" } else { "s" }
        );
        end_job(w, job_id, JobStatus::Unverified, Some(why)).await?;
        tracing::warn!(job = %job_id, unserved, "job trained to the end, unverified");
    } else {
        end_job(w, job_id, JobStatus::Succeeded, None).await?;
        tracing::info!(job = %job_id, "job succeeded");
    }
    Ok(true)
}

/// Decides an audit from the replays reported so far.
pub(crate) async fn decide(w: &mut Write<'_>, audit_id: &str) -> Result<(), PoolError> {
    let a = audit(w.conn(), audit_id).await?;
    if a.status != AuditStatus::Open {
        return Ok(());
    }
    let replays: Vec<ReplayRow> = sqlx::query_as(
        "SELECT validator_id, signed, matches FROM replays WHERE audit_id = $1 ORDER BY reported_at, rowid",
    )
    .bind(audit_id)
    .fetch_all(w.conn())
    .await?;
    if a.reason == AuditReason::Planted {
        let Some(r) = replays.last() else {
            return Ok(());
        };
        let report = serde_json::from_str::<SignedReplay>(&r.signed)?.report;
        // Inside the class the replay must reproduce the truth exactly;
        // across classes it must at least reject the wrong claim.
        let right = if report.class == a.class {
            Some(report.end_checkpoint_sha256.as_str()) == a.truth_sha256.as_deref()
        } else {
            !r.matches
        };
        if right {
            crate::audit::close_audit(w, &a, "verified", None).await?;
            crate::audit::add_streak(w, &r.validator_id).await?;
        } else {
            crate::audit::close_audit(w, &a, "validator_fault", Some(&r.validator_id)).await?;
            crate::audit::punish_validator(w, &r.validator_id, &a).await?;
        }
        return Ok(());
    }
    let validators: Vec<ProviderId> = replays
        .iter()
        .map(|r| ProviderId::from(r.validator_id.as_str()))
        .collect();
    match replays.as_slice() {
        [first] if first.matches => {
            crate::audit::verified(w, &a, &validators, None).await?;
            crate::audit::add_streak(w, &first.validator_id).await?;
        }
        [first] => {
            tracing::warn!(job = %a.job_id, segment = a.segment, validator = %first.validator_id,
                "replay disagrees with the commitment; asking a second validator");
            crate::audit::queue_replay(w, &a.id).await?;
            w.event(
                &a.job_id,
                JobEventKind::Audit {
                    segment: to_u32(a.segment),
                    provider: ProviderId::from(a.provider_id.as_str()),
                    reason: "dispute".into(),
                },
            )
            .await?;
        }
        [first, second, ..] if second.matches => {
            // The trainer and the second validator against the first.
            let v1 = first.validator_id.clone();
            crate::audit::verified(w, &a, &validators, Some(&v1)).await?;
            crate::audit::add_streak(w, &second.validator_id).await?;
            crate::audit::punish_validator(w, &v1, &a).await?;
        }
        [first, second, ..] => {
            if let Some(why) = irreproducible(w, &a, first, second).await? {
                return nondeterministic(w, &a, &validators, why).await;
            }
            crate::audit::provider_fault(w, &a, &validators, &first.validator_id).await?;
            crate::audit::add_streak(w, &first.validator_id).await?;
            crate::audit::add_streak(w, &second.validator_id).await?;
        }
        [] => {}
    }
    Ok(())
}

/// Why two replays that both disagree with a container job's claim show
/// the job's own script to be irreproducible: in one class they disagree
/// with each other too. The native trainer is gradpool's own and
/// reproduces itself; a customer's script may not (a clock, the host
/// name), and then nobody can be found at fault for a mismatch.
async fn irreproducible(
    w: &mut Write<'_>,
    a: &AuditRow,
    first: &ReplayRow,
    second: &ReplayRow,
) -> Result<Option<String>, PoolError> {
    let container = store::job(w.conn(), &a.job_id)
        .await?
        .is_some_and(|job| job.runtime == gradpool_core::state::Runtime::Container);
    if !container {
        return Ok(None);
    }
    let one = serde_json::from_str::<SignedReplay>(&first.signed)?.report;
    let two = serde_json::from_str::<SignedReplay>(&second.signed)?.report;
    Ok(
        (one.class == two.class && one.end_checkpoint_sha256 != two.end_checkpoint_sha256).then(
            || {
                format!(
                    "the job's script does not reproduce itself: two replays of segment {} in one \
                 class ({}) gave different checkpoints; make every step depend on the segment \
                 contract alone (gradpool.segment's determinism and step seeds)",
                    a.segment, one.class
                )
            },
        ),
    )
}

/// A container job whose script does not reproduce itself: the audit is
/// void, nobody is at fault, and the job fails with the reason (it cannot
/// be verified, so it cannot go on).
async fn nondeterministic(
    w: &mut Write<'_>,
    a: &AuditRow,
    validators: &[ProviderId],
    why: String,
) -> Result<(), PoolError> {
    crate::audit::close_audit(w, a, AuditStatus::Void.as_str(), None).await?;
    w.event(
        &a.job_id,
        JobEventKind::Verdict {
            segment: to_u32(a.segment),
            provider: ProviderId::from(a.provider_id.as_str()),
            outcome: AuditStatus::Void.as_str().to_owned(),
            at_fault: None,
            validators: validators.to_vec(),
        },
    )
    .await?;
    if let Some(job) = store::job(w.conn(), &a.job_id).await? {
        if !job.status.is_final() {
            crate::escrow::settle_job(w, &job).await?;
            end_job(w, &a.job_id, JobStatus::Failed, Some(why.clone())).await?;
        }
    }
    tracing::warn!(job = %a.job_id, segment = a.segment, reason = %why, "irreproducible container job failed");
    Ok(())
}

/// An audit just marked unserved: its replays are cancelled, its segment
/// stays accepted (not verified), and the job's log says so.
async fn unserved(
    w: &mut Write<'_>,
    audit_id: &str,
    job_id: &str,
    segment: i64,
    provider: &str,
) -> Result<(), PoolError> {
    let now = w.now;
    sqlx::query(
        "UPDATE tasks SET status = 'cancelled', lease_expires_at = NULL, updated_at = $1 \
         WHERE audit_id = $2 AND status = 'queued'",
    )
    .bind(now)
    .bind(audit_id)
    .execute(w.conn())
    .await?;
    sqlx::query(
        "UPDATE commitments SET status = 'accepted' \
         WHERE job_id = $1 AND segment = $2 AND status = 'auditing'",
    )
    .bind(job_id)
    .bind(segment)
    .execute(w.conn())
    .await?;
    w.event(
        job_id,
        JobEventKind::Verdict {
            segment: to_u32(segment),
            provider: ProviderId::from(provider),
            outcome: AuditStatus::Unserved.as_str().to_owned(),
            at_fault: None,
            validators: Vec::new(),
        },
    )
    .await?;
    tracing::warn!(job = %job_id, segment, audit = %audit_id,
        "no eligible validator served the audit before its deadline; the segment stays unverified");
    Ok(())
}

pub(crate) async fn close_audit(
    w: &mut Write<'_>,
    a: &AuditRow,
    status: &str,
    at_fault: Option<&str>,
) -> Result<(), PoolError> {
    let now = w.now;
    sqlx::query("UPDATE audits SET status = $1, at_fault = $2, decided_at = $3 WHERE id = $4")
        .bind(status)
        .bind(at_fault)
        .bind(now)
        .bind(&a.id)
        .execute(w.conn())
        .await?;
    Ok(())
}

pub(crate) async fn add_streak(w: &mut Write<'_>, provider: &str) -> Result<(), PoolError> {
    sqlx::query("UPDATE providers SET streak = streak + 1 WHERE id = $1")
        .bind(provider)
        .execute(w.conn())
        .await?;
    Ok(())
}

/// The segment holds: it is verified, the trainer's streak grows.
pub(crate) async fn verified(
    w: &mut Write<'_>,
    a: &AuditRow,
    validators: &[ProviderId],
    outvoted: Option<&str>,
) -> Result<(), PoolError> {
    let outcome = if outvoted.is_some() {
        "validator_fault"
    } else {
        "verified"
    };
    crate::audit::close_audit(w, a, outcome, outvoted).await?;
    let hash = serde_json::from_str::<SignedCommitment>(&a.signed)?
        .commitment
        .hash
        .to_string();
    sqlx::query(
        "UPDATE commitments SET status = 'verified' WHERE job_id = $1 AND segment = $2 AND hash = $3",
    )
    .bind(&a.job_id)
    .bind(a.segment)
    .bind(&hash)
    .execute(w.conn())
    .await?;
    crate::audit::add_streak(w, &a.provider_id).await?;
    w.event(
        &a.job_id,
        JobEventKind::Verdict {
            segment: to_u32(a.segment),
            provider: ProviderId::from(a.provider_id.as_str()),
            outcome: outcome.to_owned(),
            at_fault: outvoted.map(ProviderId::from),
            validators: validators.to_vec(),
        },
    )
    .await?;
    tracing::info!(job = %a.job_id, segment = a.segment, provider = %a.provider_id, outcome, "audit decided");
    crate::audit::finish_if_done(w, &a.job_id).await?;
    Ok(())
}

/// The trainer cheated: slash, bar, roll back, audit its other work.
pub(crate) async fn provider_fault(
    w: &mut Write<'_>,
    a: &AuditRow,
    validators: &[ProviderId],
    caught_by: &str,
) -> Result<(), PoolError> {
    let cheater = a.provider_id.clone();
    crate::audit::close_audit(w, a, "provider_fault", Some(&cheater)).await?;
    let customer: String = sqlx::query_scalar("SELECT account_id FROM jobs WHERE id = $1")
        .bind(&a.job_id)
        .fetch_one(w.conn())
        .await?;
    let bps = w.pool().inner.config.money.slash_validator_bps;
    let (forfeited, slashed) =
        crate::money::slash(w, &cheater, &a.job_id, &customer, Some(caught_by), bps).await?;
    bar(w, &a.job_id, &cheater, Evidence::Audit(&a.id)).await?;
    w.event(
        &a.job_id,
        JobEventKind::Verdict {
            segment: to_u32(a.segment),
            provider: ProviderId::from(cheater.as_str()),
            outcome: "provider_fault".into(),
            at_fault: Some(ProviderId::from(cheater.as_str())),
            validators: validators.to_vec(),
        },
    )
    .await?;
    tracing::warn!(job = %a.job_id, segment = a.segment, provider = %cheater,
        forfeited = %forfeited, slashed = %slashed, "provider caught cheating");
    crate::audit::roll_back(w, &a.job_id, to_u32(a.segment), &a.id, &cheater).await?;
    // Everything else the cheater trained for this job is suspect.
    let others: Vec<i64> = sqlx::query_scalar(
        "SELECT segment FROM commitments WHERE job_id = $1 AND provider_id = $2 AND status = 'accepted' \
         ORDER BY segment",
    )
    .bind(&a.job_id)
    .bind(&cheater)
    .fetch_all(w.conn())
    .await?;
    for segment in others {
        crate::audit::open_audit(w, &a.job_id, to_u32(segment), AuditReason::FollowUp).await?;
    }
    Ok(())
}

/// What proved a provider at fault on a job.
pub(crate) enum Evidence<'a> {
    /// The audit whose verdict found its segment faked.
    Audit(&'a str),
    /// The outer step task whose commitment the pool's own computation
    /// refuted.
    Task(&'a str),
}

/// What a provider at fault on a job loses besides its money: its streak
/// (its reputation), a fault on its record, and the job, for good.
pub(crate) async fn bar(
    w: &mut Write<'_>,
    job_id: &str,
    provider: &str,
    evidence: Evidence<'_>,
) -> Result<(), PoolError> {
    sqlx::query("UPDATE providers SET streak = 0, faults = faults + 1 WHERE id = $1")
        .bind(provider)
        .execute(w.conn())
        .await?;
    let (audit, task) = match evidence {
        Evidence::Audit(id) => (Some(id), None),
        Evidence::Task(id) => (None, Some(id)),
    };
    let now = w.now;
    sqlx::query(
        "INSERT INTO job_bars (job_id, provider_id, audit_id, task_id, at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(job_id)
    .bind(provider)
    .bind(audit)
    .bind(task)
    .bind(now)
    .execute(w.conn())
    .await?;
    Ok(())
}

/// Takes a job back to the checkpoint before `segment`: the commitments
/// from `segment` on are discarded, their tasks and audits cancelled,
/// and the segment is queued again.
pub(crate) async fn roll_back(
    w: &mut Write<'_>,
    job_id: &str,
    segment: u32,
    audit_id: &str,
    cheater: &str,
) -> Result<(), PoolError> {
    let now = w.now;
    let workers: Option<i64> = sqlx::query_scalar("SELECT workers FROM jobs WHERE id = $1")
        .bind(job_id)
        .fetch_one(w.conn())
        .await?;
    // A parallel job goes back to the start of the faulty segment's round:
    // every segment of that round on is trained again.
    let (seg, round) = match workers.filter(|n| *n > 0) {
        Some(n) => {
            let round = i64::from(segment) / n;
            (round * n, Some(round))
        }
        None => (i64::from(segment), None),
    };
    // Audits of the faulty segment's successors are void (for a parallel
    // job, of its whole round too).
    let void_from = if round.is_some() { seg } else { seg + 1 };
    sqlx::query(
        "INSERT INTO discarded_commitments (job_id, segment, provider_id, task_id, checkpoint_sha256, hash, \
         signed, status, committed_at, audit_id, discarded_at) \
         SELECT job_id, segment, provider_id, task_id, checkpoint_sha256, hash, signed, status, committed_at, $1, $2 \
         FROM commitments WHERE job_id = $3 AND segment >= $4",
    )
    .bind(audit_id)
    .bind(now)
    .bind(job_id)
    .bind(seg)
    .execute(w.conn())
    .await?;
    sqlx::query("DELETE FROM commitments WHERE job_id = $1 AND segment >= $2")
        .bind(job_id)
        .bind(seg)
        .execute(w.conn())
        .await?;
    sqlx::query(
        "UPDATE tasks SET status = 'cancelled', lease_expires_at = NULL, updated_at = $1 \
         WHERE job_id = $2 AND status IN ('queued', 'leased') \
           AND (kind IN ('train', 'outer') OR audit_id IN (SELECT id FROM audits WHERE job_id = $2 AND segment >= $3 \
                                               AND status = 'open' AND reason != 'planted'))",
    )
    .bind(now)
    .bind(job_id)
    .bind(void_from)
    .execute(w.conn())
    .await?;
    sqlx::query(
        "UPDATE audits SET status = 'void', decided_at = $1 \
         WHERE job_id = $2 AND segment >= $3 AND status = 'open' AND reason != 'planted'",
    )
    .bind(now)
    .bind(job_id)
    .bind(void_from)
    .execute(w.conn())
    .await?;
    if let Some(round) = round {
        return roll_back_round(w, job_id, round, seg, cheater).await;
    }
    let before: Option<(String, String, i64, String, Option<f64>)> = if segment == 0 {
        None
    } else {
        sqlx::query_as(
            "SELECT checkpoint_sha256, hash, end_step, loss_trace, eval_loss FROM commitments \
             WHERE job_id = $1 AND segment = $2",
        )
        .bind(job_id)
        .bind(seg - 1)
        .fetch_optional(w.conn())
        .await?
    };
    let (checkpoint, hash, step, loss, eval_loss) = match before {
        Some((c, h, s, trace, eval)) => {
            let loss = serde_json::from_str::<Vec<f32>>(&trace)?.last().copied();
            (Some(c), h, s, loss, eval)
        }
        None => (
            None,
            genesis(&JobId::from(job_id)).to_string(),
            0,
            None,
            None,
        ),
    };
    sqlx::query(
        "UPDATE jobs SET step = $1, segments_done = $2, checkpoint_sha256 = $3, commitment = $4, \
         last_loss = $5, eval_loss = $6, updated_at = $7 WHERE id = $8",
    )
    .bind(step)
    .bind(seg)
    .bind(checkpoint.as_deref())
    .bind(&hash)
    .bind(loss.map(f64::from))
    .bind(eval_loss)
    .bind(now)
    .bind(job_id)
    .execute(w.conn())
    .await?;
    let job = store::job(w.conn(), job_id)
        .await?
        .ok_or_else(|| PoolError::Internal(format!("job {job_id} vanished")))?;
    crate::queue::queue_segment(w, &job, segment).await?;
    w.event(
        job_id,
        JobEventKind::RolledBack {
            segment,
            step: to_u64(step),
            provider: ProviderId::from(cheater),
        },
    )
    .await?;
    tracing::warn!(job = %job_id, segment, step, "job rolled back to the last good checkpoint");
    Ok(())
}

/// The rest of a parallel job's rollback to the start of `round` (its
/// commitments from segment `first` on already discarded): the outer
/// steps from that round on are marked discarded, the job goes back to
/// the round's global checkpoint, and the round is queued again.
async fn roll_back_round(
    w: &mut Write<'_>,
    job_id: &str,
    round: i64,
    first: i64,
    cheater: &str,
) -> Result<(), PoolError> {
    let now = w.now;
    sqlx::query(
        "UPDATE outer_steps SET discarded_at = $1 WHERE job_id = $2 AND round >= $3 AND discarded_at IS NULL",
    )
    .bind(now)
    .bind(job_id)
    .bind(round)
    .execute(w.conn())
    .await?;
    let (global, hash) = crate::queue::global_of_round(w.conn(), job_id, round).await?;
    let (loss, eval_loss): (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT loss, eval_loss FROM outer_steps WHERE job_id = $1 AND round = $2 AND discarded_at IS NULL",
    )
    .bind(job_id)
    .bind(round - 1)
    .fetch_optional(w.conn())
    .await?
    .unwrap_or((None, None));
    let job = store::job(w.conn(), job_id)
        .await?
        .ok_or_else(|| PoolError::Internal(format!("job {job_id} vanished")))?;
    let step = round * job.checkpoint_every;
    sqlx::query(
        "UPDATE jobs SET step = $1, round = $2, segments_done = $3, checkpoint_sha256 = $4, commitment = $5, \
         last_loss = $6, eval_loss = $7, updated_at = $8 WHERE id = $9",
    )
    .bind(step)
    .bind(round)
    .bind(first)
    .bind(global.as_deref())
    .bind(&hash)
    .bind(loss)
    .bind(eval_loss)
    .bind(now)
    .bind(job_id)
    .execute(w.conn())
    .await?;
    let job = store::job(w.conn(), job_id)
        .await?
        .ok_or_else(|| PoolError::Internal(format!("job {job_id} vanished")))?;
    let next = u32::try_from(round)
        .map_err(|_| PoolError::Internal(format!("job {job_id}: round overflows")))?;
    crate::queue::queue_round(w, &job, next).await?;
    w.event(
        job_id,
        JobEventKind::RolledBack {
            segment: to_u32(first),
            step: to_u64(step),
            provider: ProviderId::from(cheater),
        },
    )
    .await?;
    tracing::warn!(job = %job_id, round, step, "parallel job rolled back to the start of the faulty round");
    Ok(())
}

/// A validator answered wrongly: its stake goes to the validator fund,
/// its streak resets, it replays no more.
pub(crate) async fn punish_validator(
    w: &mut Write<'_>,
    validator: &str,
    a: &AuditRow,
) -> Result<(), PoolError> {
    sqlx::query(
        "UPDATE providers SET streak = 0, faults = faults + 1, validator_barred = 1 WHERE id = $1",
    )
    .bind(validator)
    .execute(w.conn())
    .await?;
    let slashed = crate::money::slash_validator(w, validator, &a.id).await?;
    tracing::warn!(validator, audit = %a.id, reason = %a.reason, slashed = %slashed,
        "validator answered a replay wrongly; it gets no more replays");
    Ok(())
}

/// One provider's record in [`Pool::audit_stats`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderAuditStats {
    pub provider: ProviderId,
    /// The training tasks it committed (rolled-back ones included).
    pub train_tasks: Vec<gradpool_core::TaskId>,
    /// Their billed compute time, in milliseconds.
    pub train_ms: u64,
    /// Replays it reported (planted audits included).
    pub replays: u64,
    /// Their reported compute time, in milliseconds.
    pub replay_ms: u64,
    /// Decided audits of its own segments (not planted ones).
    pub audited: u64,
    /// Of those, how many found it cheating.
    pub provider_faults: u64,
    /// Audits in which it, as a validator, was found answering wrongly.
    pub validator_faults: u64,
}

impl Pool {
    /// Marks `unserved` every open audit drawn longer ago than the audit
    /// deadline that no validator is replaying now, and ends the jobs that
    /// were waiting only for them. Returns how many audits it marked.
    pub async fn expire_unserved_audits(&self) -> Result<usize, PoolError> {
        let mut w = self.write().await?;
        let now = w.now;
        let deadline_ms = i64::try_from(self.inner.config.verification.audit_deadline_seconds)
            .unwrap_or(i64::MAX / 2)
            .saturating_mul(1000);
        let expired: Vec<(String, String, i64, String)> = sqlx::query_as(
            "UPDATE audits SET status = 'unserved', decided_at = $1 \
             WHERE status = 'open' AND reason != 'planted' AND created_at < $1 - $2 \
               AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.audit_id = audits.id AND t.status = 'leased') \
             RETURNING id, job_id, segment, provider_id",
        )
        .bind(now)
        .bind(deadline_ms)
        .fetch_all(w.conn())
        .await?;
        for (audit_id, job_id, segment, provider) in &expired {
            crate::audit::unserved(&mut w, audit_id, job_id, *segment, provider).await?;
        }
        let jobs: std::collections::BTreeSet<&String> = expired.iter().map(|e| &e.1).collect();
        for job_id in jobs {
            crate::audit::finish_if_done(&mut w, job_id).await?;
        }
        w.commit().await?;
        Ok(expired.len())
    }

    /// A validator's answer to a replay task it holds.
    pub async fn replay(
        &self,
        provider: &ProviderId,
        task_id: &str,
        r: SignedReplay,
    ) -> Result<(), PoolError> {
        r.verify()
            .map_err(|e| PoolError::BadRequest(format!("replay signature: {e}")))?;
        r.report.check().map_err(PoolError::BadRequest)?;
        let signer = r.signer();
        if &signer != provider {
            return Err(PoolError::BadRequest(format!(
                "the replay is signed by {signer}, not by you ({provider})"
            )));
        }
        if r.report.task_id.as_str() != task_id {
            return Err(PoolError::BadRequest(format!(
                "the replay report is for task {}, not {task_id}",
                r.report.task_id
            )));
        }
        let mut w = self.write().await?;
        let task = crate::queue::leased_task(w.conn(), provider, task_id).await?;
        let Some(audit_id) = task
            .audit_id
            .clone()
            .filter(|_| task.kind == TaskKind::Replay)
        else {
            return Err(PoolError::BadRequest(format!(
                "task {task_id} is a training task: commit it instead"
            )));
        };
        let a = audit(w.conn(), &audit_id).await?;
        if r.report.job_id.as_str() != a.job_id || i64::from(r.report.segment) != a.segment {
            return Err(PoolError::BadRequest(format!(
                "the replay report is for job {} segment {}, the task is job {} segment {}",
                r.report.job_id, r.report.segment, a.job_id, a.segment
            )));
        }
        let job = store::job(w.conn(), &a.job_id)
            .await?
            .ok_or_else(|| PoolError::Internal(format!("audit {audit_id}: no job")))?;
        let class = crate::model::class_for(w.conn(), provider.as_str(), &job).await?;
        if r.report.class != class {
            return Err(PoolError::BadRequest(format!(
                "class: the replay says {}, your class for this job is {class}",
                r.report.class
            )));
        }
        // A parallel job's segment is also judged on what it sent: the
        // pseudo-gradient the outer step used.
        let claimed: SignedCommitment = serde_json::from_str(&a.signed)?;
        let sent = claimed.commitment.pseudo_gradient_sha256;
        let matches = if class == a.class {
            r.report.end_checkpoint_sha256.as_str() == a.claimed_checkpoint_sha256
                && r.report.pseudo_gradient_sha256 == sent
        } else {
            let tolerance = gradpool_core::JobSpec::from_toml_str(&job.spec_toml)
                .map_or(CROSS_CLASS_TOLERANCE, |s| s.cross_class_tolerance());
            match r.report.distance {
                Some(d) => d <= tolerance,
                None => {
                    return Err(PoolError::BadRequest(format!(
                        "distance: required, your class {class} differs from the trainer's {}",
                        a.class
                    )))
                }
            }
        };
        let now = w.now;
        sqlx::query(
            "INSERT INTO replays (task_id, audit_id, validator_id, signed, matches, reported_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(task_id)
        .bind(&audit_id)
        .bind(provider.as_str())
        .bind(serde_json::to_string(&r)?)
        .bind(i64::from(matches))
        .bind(now)
        .execute(w.conn())
        .await?;
        sqlx::query(
            "UPDATE tasks SET status = 'committed', step = end_step, lease_expires_at = NULL, updated_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(task_id)
        .execute(w.conn())
        .await?;
        if a.reason == AuditReason::Planted {
            crate::escrow::pay_planted_replay(&mut w, task_id, provider, r.report.compute_ms)
                .await?;
        } else if let Some(job) = store::job(w.conn(), &a.job_id).await? {
            crate::escrow::pay_segment(
                &mut w,
                &job,
                WorkDone {
                    task_id,
                    segment: to_u32(a.segment),
                    provider,
                    reported_ms: r.report.compute_ms,
                    kind: TaskKind::Replay,
                },
                self.fees(),
            )
            .await?;
        }
        crate::audit::decide(&mut w, &audit_id).await?;
        w.commit().await?;
        tracing::info!(task = %task_id, validator = %provider, audit = %audit_id, matches, "replay reported");
        Ok(())
    }

    /// The audits of a job of `account`, with their evidence (planted
    /// audits are the pool's own and not shown).
    pub async fn verdicts(
        &self,
        account: &gradpool_core::AccountId,
        job_id: &str,
    ) -> Result<Vec<VerdictView>, PoolError> {
        let mut conn = self.inner.db.acquire().await?;
        store::owned_job(&mut conn, account.as_str(), job_id).await?;
        let rows: Vec<AuditRow> = sqlx::query_as(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audits WHERE job_id = $1 AND reason != 'planted' \
             ORDER BY created_at, rowid"
        ))
        .bind(job_id)
        .fetch_all(&mut *conn)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for a in rows {
            let replays: Vec<ReplayRow> = sqlx::query_as(
                "SELECT validator_id, signed, matches FROM replays WHERE audit_id = $1 ORDER BY reported_at, rowid",
            )
            .bind(&a.id)
            .fetch_all(&mut *conn)
            .await?;
            out.push(VerdictView {
                audit_id: a.id,
                job_id: JobId::from(a.job_id.as_str()),
                segment: to_u32(a.segment),
                reason: a.reason,
                outcome: a.status,
                at_fault: a.at_fault.as_deref().map(ProviderId::from),
                commitment: serde_json::from_str(&a.signed)?,
                replays: replays
                    .into_iter()
                    .map(|r| {
                        Ok(ReplayView {
                            validator: ProviderId::from(r.validator_id.as_str()),
                            matches: r.matches,
                            replay: serde_json::from_str(&r.signed)?,
                        })
                    })
                    .collect::<Result<_, PoolError>>()?,
                opened_at: store::rfc3339(a.created_at),
                decided_at: a.decided_at.map(store::rfc3339),
            });
        }
        Ok(out)
    }

    /// The latest `limit` decided audits, newest first, as anyone sees
    /// them (planted audits are the pool's own and not shown); with
    /// `trainer`, only those of segments it trained.
    pub async fn recent_verdicts(
        &self,
        limit: u32,
        trainer: Option<&ProviderId>,
    ) -> Result<Vec<gradpool_core::wire::PublicVerdict>, PoolError> {
        let mut conn = self.inner.db.acquire().await?;
        let decided = "decided_at IS NOT NULL AND reason != 'planted'";
        let order = "ORDER BY decided_at DESC, rowid DESC";
        let rows: Vec<AuditRow> = match trainer {
            None => {
                sqlx::query_as(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM audits WHERE {decided} {order} LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?
            }
            Some(p) => {
                sqlx::query_as(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM audits WHERE {decided} AND provider_id = $2 \
                     {order} LIMIT $1"
                ))
                .bind(i64::from(limit))
                .bind(p.as_str())
                .fetch_all(&mut *conn)
                .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|a| gradpool_core::wire::PublicVerdict {
                provider: ProviderId::from(a.provider_id.as_str()),
                reason: a.reason,
                outcome: a.status,
                at_fault: a.at_fault.as_deref().map(ProviderId::from),
                decided_at: a.decided_at.map(store::rfc3339).unwrap_or_default(),
            })
            .collect())
    }

    /// What every provider trained and replayed and the verdicts on it,
    /// over the pool's whole history: the figures `gradpool bench verify`
    /// measures detection, false positives and overhead with.
    pub async fn audit_stats(&self) -> Result<Vec<ProviderAuditStats>, PoolError> {
        let mut conn = self.inner.db.acquire().await?;
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM providers ORDER BY registered_at, id")
                .fetch_all(&mut *conn)
                .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let train_tasks: Vec<(String, Option<i64>)> = sqlx::query_as(
                "SELECT id, billed_ms FROM tasks WHERE provider_id = $1 AND kind = 'train' \
                 AND status = 'committed' ORDER BY updated_at, rowid",
            )
            .bind(&id)
            .fetch_all(&mut *conn)
            .await?;
            let signed: Vec<String> =
                sqlx::query_scalar("SELECT signed FROM replays WHERE validator_id = $1")
                    .bind(&id)
                    .fetch_all(&mut *conn)
                    .await?;
            let mut replay_ms = 0u64;
            for s in &signed {
                let r: SignedReplay = serde_json::from_str(s)?;
                replay_ms = replay_ms.saturating_add(r.report.compute_ms);
            }
            let (audited, provider_faults): (i64, i64) = sqlx::query_as(
                "SELECT COUNT(*), COALESCE(CAST(SUM(CASE WHEN status = 'provider_fault' THEN 1 ELSE 0 END) AS BIGINT), 0) FROM audits \
                 WHERE provider_id = $1 AND reason != 'planted' \
                   AND status IN ('verified', 'provider_fault', 'validator_fault')",
            )
            .bind(&id)
            .fetch_one(&mut *conn)
            .await?;
            let validator_faults: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM audits WHERE status = 'validator_fault' AND at_fault = $1",
            )
            .bind(&id)
            .fetch_one(&mut *conn)
            .await?;
            out.push(ProviderAuditStats {
                provider: ProviderId::from(id.as_str()),
                train_ms: train_tasks
                    .iter()
                    .map(|(_, ms)| to_u64(ms.unwrap_or(0)))
                    .sum(),
                train_tasks: train_tasks
                    .into_iter()
                    .map(|(t, _)| gradpool_core::TaskId::from(t.as_str()))
                    .collect(),
                replays: signed.len() as u64,
                replay_ms,
                audited: to_u64(audited),
                provider_faults: to_u64(provider_faults),
                validator_faults: to_u64(validator_faults),
            });
        }
        Ok(out)
    }
}
