//! The pool at a glance, read from its database: providers by status,
//! jobs by state, tasks by kind and state, audits by outcome, money by
//! ledger account kind, payouts by state, the blob store's size and the
//! last hour's throughput. `GET /metrics` exposes it to Prometheus
//! (`metrics`); `gradpool pool status` prints it.
//!
//! Every figure is an aggregate: nothing of one account, job or provider.

use crate::error::PoolError;
use crate::store::StatusFacts;
use gradpool_core::state::{
    AuditStatus, JobStatus, PayoutStatus, ProviderStatus, State as _, TaskKind, TaskStatus,
};
use serde::Serialize;
use sqlx::AnyConnection;
use std::collections::BTreeMap;

/// The window throughput is measured over.
pub const THROUGHPUT_WINDOW_MS: i64 = 3_600_000;

/// The pool's state at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overview {
    /// Providers by status (every status, zeros included).
    pub providers: BTreeMap<String, u64>,
    /// Connected providers by device class (`cpu`, `cuda`).
    pub devices: BTreeMap<String, u64>,
    /// Jobs by state (every state, zeros included).
    pub jobs: BTreeMap<String, u64>,
    /// Tasks by kind, then state.
    pub tasks: BTreeMap<String, BTreeMap<String, u64>>,
    /// Training segments waiting for a provider.
    pub queue_depth: u64,
    /// Leases that ran out before their task was done, ever.
    pub lease_expiries: u64,
    /// Committed segments on their jobs' chains, by commitment status.
    pub segments: BTreeMap<String, u64>,
    /// Audits by outcome (`open` until decided).
    pub audits: BTreeMap<String, u64>,
    /// Validators' replays, by whether they matched the claim.
    pub replays: BTreeMap<String, u64>,
    /// The sum of each ledger account kind's balances, in piconero.
    pub ledger: BTreeMap<String, i64>,
    /// Payouts by state.
    pub payouts: BTreeMap<String, u64>,
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Segments committed in the last hour, and their steps.
    pub segments_last_hour: u64,
    pub steps_last_hour: u64,
}

impl Overview {
    /// Piconero held in escrow for jobs.
    pub fn escrow(&self) -> i64 {
        self.ledger.get("escrow").copied().unwrap_or(0)
    }

    /// Payouts not yet settled or cancelled.
    pub fn payouts_pending(&self) -> u64 {
        [
            PayoutStatus::Reserved,
            PayoutStatus::Built,
            PayoutStatus::Relayed,
        ]
        .iter()
        .map(|s| self.payouts.get(s.as_str()).copied().unwrap_or(0))
        .sum()
    }
}

impl crate::Pool {
    /// The pool at a glance, now.
    pub async fn overview(&self) -> Result<Overview, PoolError> {
        let mut conn = self.inner.db.acquire().await?;
        read(&mut conn, self.now(), self.inner.config.lease_seconds).await
    }
}

/// Reads the overview at `now` (ms), a provider counting as disconnected
/// after `lease_seconds` without a word.
pub async fn read(
    conn: &mut AnyConnection,
    now: i64,
    lease_seconds: u32,
) -> Result<Overview, PoolError> {
    let mut o = Overview {
        providers: zeros(ProviderStatus::ALL.iter().map(|s| s.as_str())),
        jobs: zeros(JobStatus::ALL.iter().map(|s| s.as_str())),
        audits: zeros(AuditStatus::ALL.iter().map(|s| s.as_str())),
        payouts: zeros(PayoutStatus::ALL.iter().map(|s| s.as_str())),
        ..Overview::default()
    };
    providers(conn, now, lease_seconds, &mut o).await?;
    counted(
        conn,
        "SELECT status, COUNT(*) FROM jobs GROUP BY status",
        &mut o.jobs,
    )
    .await?;
    tasks(conn, &mut o).await?;
    counted(
        conn,
        "SELECT status, COUNT(*) FROM commitments GROUP BY status",
        &mut o.segments,
    )
    .await?;
    counted(
        conn,
        "SELECT status, COUNT(*) FROM audits GROUP BY status",
        &mut o.audits,
    )
    .await?;
    counted(
        conn,
        "SELECT CASE matches WHEN 1 THEN 'match' ELSE 'mismatch' END, COUNT(*) FROM replays GROUP BY matches",
        &mut o.replays,
    )
    .await?;
    counted(
        conn,
        "SELECT status, COUNT(*) FROM payouts GROUP BY status",
        &mut o.payouts,
    )
    .await?;
    let ledger: Vec<(String, i64)> = sqlx::query_as(
        "SELECT a.kind, COALESCE(CAST(SUM(p.amount) AS BIGINT), 0) FROM ledger_accounts a \
         LEFT JOIN postings p ON p.account_id = a.id GROUP BY a.kind",
    )
    .fetch_all(&mut *conn)
    .await?;
    o.ledger = ledger.into_iter().collect();
    let (blobs, bytes): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COALESCE(CAST(SUM(size) AS BIGINT), 0) FROM blobs")
            .fetch_one(&mut *conn)
            .await?;
    (o.blobs, o.blob_bytes) = (count(blobs), count(bytes));
    let (segments, steps): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(CAST(SUM(end_step - start_step) AS BIGINT), 0) FROM commitments WHERE committed_at > $1",
    )
    .bind(now - THROUGHPUT_WINDOW_MS)
    .fetch_one(&mut *conn)
    .await?;
    (o.segments_last_hour, o.steps_last_hour) = (count(segments), count(steps));
    Ok(o)
}

/// Providers by status, and the connected ones by device.
async fn providers(
    conn: &mut AnyConnection,
    now: i64,
    lease_seconds: u32,
    o: &mut Overview,
) -> Result<(), PoolError> {
    use crate::db::Flag;
    type Row = (i64, String, Flag, Flag, Flag, Flag);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT p.last_seen, p.device, \
           EXISTS (SELECT 1 FROM tasks t WHERE t.provider_id = p.id AND t.status = 'leased'), \
           p.held IS NOT NULL OR p.duplicate_of IS NOT NULL, p.paused IS NOT NULL, \
           EXISTS (SELECT 1 FROM booking_providers bp JOIN bookings b ON b.id = bp.booking_id \
              WHERE bp.provider_id = p.id AND b.status = 'reserved' AND b.ends_at > $1) \
         FROM providers p",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    for (last_seen, device, leased, held, paused, booked) in rows {
        let facts = StatusFacts {
            last_seen,
            leased: leased.0,
            held: held.0,
            paused: paused.0,
            booked: booked.0,
        };
        let status = facts.status(now, lease_seconds);
        *o.providers.entry(status.as_str().to_owned()).or_default() += 1;
        if status != ProviderStatus::Disconnected {
            *o.devices.entry(device).or_default() += 1;
        }
    }
    Ok(())
}

/// Tasks by kind and state, the training queue, and expired leases.
async fn tasks(conn: &mut AnyConnection, o: &mut Overview) -> Result<(), PoolError> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT kind, status, COUNT(*) FROM tasks GROUP BY kind, status")
            .fetch_all(&mut *conn)
            .await?;
    for kind in TaskKind::ALL {
        o.tasks.insert(
            kind.as_str().to_owned(),
            zeros(TaskStatus::ALL.iter().map(|s| s.as_str())),
        );
    }
    for (kind, status, n) in rows {
        let n = count(n);
        if kind == TaskKind::Train.as_str() && status == TaskStatus::Queued.as_str() {
            o.queue_depth = n;
        }
        if status == TaskStatus::Expired.as_str() {
            o.lease_expiries += n;
        }
        o.tasks.entry(kind).or_default().insert(status, n);
    }
    Ok(())
}

/// Adds the `(key, count)` rows of `sql` into `into`.
async fn counted(
    conn: &mut AnyConnection,
    sql: &str,
    into: &mut BTreeMap<String, u64>,
) -> Result<(), PoolError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(sql).fetch_all(&mut *conn).await?;
    for (key, n) in rows {
        *into.entry(key).or_default() += count(n);
    }
    Ok(())
}

fn zeros<'a>(keys: impl Iterator<Item = &'a str>) -> BTreeMap<String, u64> {
    keys.map(|k| (k.to_owned(), 0)).collect()
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
