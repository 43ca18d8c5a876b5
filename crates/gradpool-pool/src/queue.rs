//! The task queue and a job's state: the primitives the flows above
//! (audits, jobs, leases, commits) share. Nothing here decides anything: a
//! segment is queued, a job's status set, a task looked up.

use crate::error::PoolError;
use crate::store::{self, JobRow, TaskRow};
use crate::tx::Write;
use gradpool_core::state::TaskStatus;
use gradpool_core::wire::{JobEventKind, JobStatus};
use gradpool_core::{ProviderId, TaskId};
use sqlx::SqliteConnection;

/// Queues a new task for a segment of a job.
pub(crate) async fn queue_segment(
    w: &mut Write<'_>,
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
    .bind(w.now)
    .bind(w.now)
    .execute(w.conn())
    .await?;
    w.wake_providers();
    Ok(id)
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
        "UPDATE jobs SET status = ?, error = COALESCE(?, error), updated_at = ? WHERE id = ?",
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

pub(crate) async fn job_of(
    conn: &mut SqliteConnection,
    task: &TaskRow,
) -> Result<JobRow, PoolError> {
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
