//! The task queue and a job's state: the primitives the flows above
//! (audits, jobs, leases, commits) share. Nothing here decides anything: a
//! segment is queued, a job's status set, a task looked up.

use crate::error::PoolError;
use crate::store::{self, JobRow, TaskRow};
use crate::tx::Write;
use gradpool_core::state::TaskStatus;
use gradpool_core::wire::{JobEventKind, JobStatus};
use gradpool_core::{ProviderId, Sha256Hex, TaskId};
use sqlx::AnyConnection;

/// Queues a new task for a segment of a job. A parallel job's segment
/// `r·workers + w` is worker `w`'s inner segment of round `r`: it trains
/// the round's steps and continues the slot's last committed checkpoint
/// before the round.
pub(crate) async fn queue_segment(
    w: &mut Write<'_>,
    job: &JobRow,
    segment: u32,
) -> Result<TaskId, PoolError> {
    let k = job.checkpoint_every;
    let segment = i64::from(segment);
    let (index, round, worker) = match job.workers {
        Some(n) if n > 0 => (segment / n, Some(segment / n), Some(segment % n)),
        _ => (segment, None, None),
    };
    let start = index * k;
    let end = (start + k).min(job.steps);
    let slot: Option<String> = match (round, worker, job.workers) {
        (Some(r), Some(wk), Some(n)) => {
            sqlx::query_scalar(
                "SELECT checkpoint_sha256 FROM commitments WHERE job_id = $1 AND segment < $2 AND segment % $3 = $4 \
                 ORDER BY segment DESC LIMIT 1",
            )
            .bind(&job.id)
            .bind(r * n)
            .bind(n)
            .bind(wk)
            .fetch_optional(w.conn())
            .await?
        }
        _ => None,
    };
    let id = TaskId::random();
    sqlx::query(
        "INSERT INTO tasks (id, job_id, segment, start_step, end_step, status, created_at, updated_at, \
         round, worker, slot_sha256) VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8, $9, $10)",
    )
    .bind(id.as_str())
    .bind(&job.id)
    .bind(segment)
    .bind(start)
    .bind(end)
    .bind(w.now)
    .bind(w.now)
    .bind(round)
    .bind(worker)
    .bind(slot)
    .execute(w.conn())
    .await?;
    w.wake_providers();
    Ok(id)
}

/// Queues every worker's inner segment of a parallel job's round.
pub(crate) async fn queue_round(
    w: &mut Write<'_>,
    job: &JobRow,
    round: u32,
) -> Result<(), PoolError> {
    let workers = u32::try_from(job.workers.unwrap_or(0)).unwrap_or(0);
    for worker in 0..workers {
        queue_segment(w, job, round * workers + worker).await?;
    }
    Ok(())
}

/// Queues the outer step of a parallel job's round: its task's segment is
/// the round's last, its steps the round's.
pub(crate) async fn queue_outer(
    w: &mut Write<'_>,
    job: &JobRow,
    round: i64,
) -> Result<TaskId, PoolError> {
    let workers = job.workers.unwrap_or(1);
    let start = round * job.checkpoint_every;
    let end = (start + job.checkpoint_every).min(job.steps);
    let id = TaskId::random();
    sqlx::query(
        "INSERT INTO tasks (id, job_id, segment, start_step, end_step, status, created_at, updated_at, \
         kind, round) VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, 'outer', $8)",
    )
    .bind(id.as_str())
    .bind(&job.id)
    .bind((round + 1) * workers - 1)
    .bind(start)
    .bind(end)
    .bind(w.now)
    .bind(w.now)
    .bind(round)
    .execute(w.conn())
    .await?;
    w.wake_providers();
    Ok(id)
}

/// The global checkpoint a parallel job's round starts from and its chain
/// hash: the accepted outer step of the round before, or (round 0) the
/// seeded initial weights (`None`) and the genesis hash.
pub(crate) async fn global_of_round(
    conn: &mut AnyConnection,
    job_id: &str,
    round: i64,
) -> Result<(Option<String>, String), PoolError> {
    if round == 0 {
        let genesis = gradpool_core::commitment::genesis(&gradpool_core::JobId::from(job_id));
        return Ok((None, genesis.to_string()));
    }
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT global_sha256, hash FROM outer_steps WHERE job_id = $1 AND round = $2 AND discarded_at IS NULL",
    )
    .bind(job_id)
    .bind(round - 1)
    .fetch_optional(conn)
    .await?;
    let (sha, hash) = row.ok_or_else(|| {
        PoolError::Internal(format!(
            "job {job_id} has round {round} but no outer step before it"
        ))
    })?;
    Ok((Some(sha), hash))
}

/// The inner segments of a parallel job's round that enter its outer
/// step: every accepted commitment of the round, in worker order.
pub(crate) async fn round_inputs(
    conn: &mut AnyConnection,
    job: &JobRow,
    round: i64,
) -> Result<Vec<gradpool_core::commitment::OuterInput>, PoolError> {
    let n = job.workers.unwrap_or(1);
    let rows: Vec<(i64, String, String, Option<String>)> = sqlx::query_as(
        "SELECT segment, checkpoint_sha256, hash, pseudo_gradient_sha256 FROM commitments \
         WHERE job_id = $1 AND segment >= $2 AND segment < $3 ORDER BY segment",
    )
    .bind(&job.id)
    .bind(round * n)
    .bind((round + 1) * n)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(segment, sha, hash, sent)| {
            let bad = |e: String| PoolError::Internal(format!("stored commitment: {e}"));
            let sent =
                sent.ok_or_else(|| bad(format!("segment {segment} has no pseudo-gradient")))?;
            Ok(gradpool_core::commitment::OuterInput {
                worker: u32::try_from(segment - round * n).unwrap_or(u32::MAX),
                checkpoint_sha256: sha.parse().map_err(|e| bad(format!("{e}")))?,
                commitment: hash.parse().map_err(|e| bad(format!("{e}")))?,
                pseudo_gradient_sha256: sent.parse().map_err(|e| bad(format!("{e}")))?,
            })
        })
        .collect()
}

/// The checkpoints provider `$1` keeps that the pool needs now (see
/// [`wanted`]); on the partial index of commitments that sent a
/// pseudo-gradient (migration 0023), since every heartbeat asks. Made once
/// per dialect.
fn wanted_sql(dialect: crate::db::Dialect) -> &'static str {
    static SQLITE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static POSTGRES: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let made = match dialect {
        crate::db::Dialect::Sqlite => &SQLITE,
        crate::db::Dialect::Postgres => &POSTGRES,
    };
    made.get_or_init(|| wanted_sql_of(dialect))
}

fn wanted_sql_of(dialect: crate::db::Dialect) -> String {
    let held_back = dialect.json_text_elements("$3");
    format!(
        "SELECT DISTINCT c.checkpoint_sha256 FROM commitments c \
         WHERE c.provider_id = $1 AND c.pseudo_gradient_sha256 IS NOT NULL \
           AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.sha256 = c.checkpoint_sha256) \
           AND (EXISTS (SELECT 1 FROM audits a WHERE a.job_id = c.job_id AND a.status = 'open' \
                        AND a.claimed_checkpoint_sha256 = c.checkpoint_sha256) \
                OR EXISTS (SELECT 1 FROM tasks q WHERE q.job_id = c.job_id AND q.status = 'queued' \
                           AND q.slot_sha256 = c.checkpoint_sha256 \
                           AND (q.kind = 'replay' OR q.updated_at <= $2 \
                                OR q.job_id IN ({held_back}))) \
                OR EXISTS (SELECT 1 FROM checkpoint_requests r WHERE r.job_id = c.job_id \
                           AND r.sha256 = c.checkpoint_sha256)) \
         LIMIT 16"
    )
}

/// The checkpoints `provider` committed for parallel jobs' segments
/// (which sent only their pseudo-gradient) that the pool now needs, and
/// does not have: the start and the claimed end of a segment under audit,
/// the slot checkpoint of a segment queued since `queued_before` (ms)
/// that nobody holding it has claimed, or of a job whose rounds `provider`
/// is held back from (`held_back`), so another provider may continue the
/// slot, and those the job's customer asked for.
pub(crate) async fn wanted(
    db: &sqlx::AnyPool,
    provider: &ProviderId,
    queued_before: i64,
    held_back: &[String],
) -> Result<Vec<Sha256Hex>, PoolError> {
    let rows: Vec<String> = sqlx::query_scalar(wanted_sql(crate::db::Dialect::of_pool(db)))
        .bind(provider.as_str())
        .bind(queued_before)
        .bind(serde_json::to_string(held_back)?)
        .fetch_all(db)
        .await?;
    rows.into_iter()
        .map(|s| {
            s.parse()
                .map_err(|e| PoolError::Internal(format!("stored digest: {e}")))
        })
        .collect()
}

/// Sets a job's status (and error) and logs the change. A job that ends
/// goes through [`crate::audit::end_job`], which closes its audits first.
pub(crate) async fn set_status(
    w: &mut Write<'_>,
    job_id: &str,
    status: JobStatus,
    reason: Option<String>,
) -> Result<(), PoolError> {
    sqlx::query(
        "UPDATE jobs SET status = $1, error = COALESCE($2, error), updated_at = $3 WHERE id = $4",
    )
    .bind(status.as_str())
    .bind(reason.as_deref())
    .bind(w.now)
    .bind(job_id)
    .execute(w.conn())
    .await?;
    w.event(job_id, JobEventKind::Status { status, reason })
        .await
}

pub(crate) async fn job_of(conn: &mut AnyConnection, task: &TaskRow) -> Result<JobRow, PoolError> {
    store::job(conn, &task.job_id)
        .await?
        .ok_or_else(|| PoolError::Internal(format!("task {} has no job", task.id)))
}

/// A task the caller must hold: it exists and is leased to `provider`.
pub(crate) async fn leased_task(
    conn: &mut AnyConnection,
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

#[cfg(test)]
mod tests {
    /// Every heartbeat runs [`super::wanted_sql`]: it must find the provider's
    /// commitments by index, not read them all.
    #[tokio::test]
    async fn the_wanted_checkpoints_are_found_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(&dir.path().join("pool.sqlite"), None)
            .await
            .unwrap();
        let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(&format!(
            "EXPLAIN QUERY PLAN {}",
            super::wanted_sql(crate::db::Dialect::Sqlite)
        ))
        .bind("prov_a")
        .bind(0_i64)
        .bind("[]")
        .fetch_all(&db)
        .await
        .unwrap();
        let steps: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
        assert!(
            steps
                .iter()
                .any(|s| s.contains("USING INDEX commitments_provider_sent (provider_id=?)")),
            "{steps:#?}"
        );
        assert!(!steps.iter().any(|s| s.starts_with("SCAN c")), "{steps:#?}");
    }
}
