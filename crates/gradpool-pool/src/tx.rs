//! The write transaction: the bottom layer every change to the pool goes
//! through. [`Write`] holds the pool's write lock and one SQLite
//! transaction, collects the job events it appends and publishes them (and
//! wakes waiting providers if it queued work) only once it has committed.

use crate::error::PoolError;
use crate::ledger;
use crate::store::{self};
use crate::Pool;
use gradpool_core::wire::{JobEvent, JobEventKind};
use gradpool_core::Piconero;
use sqlx::AnyConnection;

/// A write transaction: holds the pool's write lock, collects the events it
/// appends and publishes them (and wakes waiting providers if it queued
/// work) only once it has committed.
pub(crate) struct Write<'a> {
    pool: &'a Pool,
    tx: sqlx::Transaction<'static, sqlx::Any>,
    events: Vec<JobEvent>,
    queued_work: bool,
    pub(crate) now: i64,
    /// The sightings this transaction writes first: put back unless it
    /// commits.
    sighted: crate::sighting::Taken<'a>,
    _lock: tokio::sync::MutexGuard<'a, ()>,
}

impl<'a> Write<'a> {
    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
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

    pub(crate) async fn commit(self) -> Result<(), PoolError> {
        // Run to the end even if the caller is dropped (a client that hangs
        // up): a commit cut between the database's answer and sqlx's
        // bookkeeping would hand the next writer a connection sqlx believes
        // is still in a transaction.
        tokio::spawn(self.tx.commit())
            .await
            .map_err(|e| PoolError::Internal(format!("committing: {e}")))??;
        self.sighted.written();
        // On PostgreSQL, where other processes write too, the relay
        // publishes every process's events in the order they were written
        // (`Pool::run_relay`).
        if self.pool.dialect() == crate::db::Dialect::Sqlite {
            self.pool.publish(self.events);
        }
        if self.queued_work {
            self.pool.inner.work.notify_waiters();
        }
        Ok(())
    }
}

/// The writers waiting for the write lock, by when each arrived (the
/// pool's clock, ms): how far behind the pool is running.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    waiting: std::sync::Mutex<std::collections::BTreeMap<u64, i64>>,
    next: std::sync::atomic::AtomicU64,
}

impl Backlog {
    /// Records a writer arriving at `now`; it leaves when the returned
    /// guard drops (it got the lock, or gave up).
    pub(crate) fn arrive(&self, now: i64) -> Waiting<'_> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(id, now);
        Waiting { backlog: self, id }
    }

    /// How long the longest-waiting writer has waited at `now`; 0 with
    /// none waiting.
    pub(crate) fn delay_ms(&self, now: i64) -> i64 {
        self.lock()
            .values()
            .min()
            .map_or(0, |arrived| (now - arrived).max(0))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, i64>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A writer in the [`Backlog`].
pub(crate) struct Waiting<'a> {
    backlog: &'a Backlog,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.backlog.lock().remove(&self.id);
    }
}

/// How long the longest-waiting writer may have waited before a request
/// that can wait is refused ([`Pool::write_unless_behind`]).
pub const SHED_AFTER_MS: i64 = 1_000;

impl Pool {
    /// Starts a write transaction for a request that can wait (a heartbeat
    /// without running tasks, a registration), unless the pool is running
    /// behind: then it is refused at once ([`PoolError::Busy`], a 503 with
    /// `Retry-After`) instead of joining the queue and making the pool
    /// slower still. Writes that renew leases, commit work or move money
    /// wait their turn.
    pub(crate) async fn write_unless_behind(&self) -> Result<Write<'_>, PoolError> {
        let behind = self.inner.backlog.delay_ms(self.now());
        if behind > SHED_AFTER_MS {
            return Err(PoolError::Busy(format!(
                "the pool is running {behind} ms behind; try again in a second"
            )));
        }
        self.write().await
    }

    /// Starts a write transaction (taking the write lock).
    pub(crate) async fn write(&self) -> Result<Write<'_>, PoolError> {
        let waiting = self.inner.backlog.arrive(self.now());
        let lock = self.inner.write_lock.lock().await;
        drop(waiting);
        // Take the database's write lock now (see `db::begin_write`),
        // waiting for a writer outside this lock (a blob upload, another
        // process) instead of failing when a read snapshot turns out stale
        // at the first write.
        //
        // Begun in a task of its own, for the reason `commit` is: a BEGIN
        // cut short after SQLite ran it leaves sqlx counting a transaction
        // on the pooled connection, and every later write on it fails.
        // Begun to the end, a transaction nobody takes is rolled back as
        // it drops.
        let db = self.inner.db.clone();
        let tx = tokio::spawn(async move { crate::db::begin_write(&db).await })
            .await
            .map_err(|e| PoolError::Internal(format!("beginning a transaction: {e}")))??;
        let mut tx = tx;
        let sighted = self.inner.sightings.write(&mut tx).await?;
        Ok(Write {
            pool: self,
            tx,
            events: Vec::new(),
            queued_work: false,
            now: self.now(),
            sighted,
            _lock: lock,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Backlog;

    #[test]
    fn the_backlog_is_the_longest_wait_of_those_still_waiting() {
        let b = Backlog::default();
        assert_eq!(b.delay_ms(1_000), 0);
        let first = b.arrive(1_000);
        let second = b.arrive(4_000);
        assert_eq!(b.delay_ms(9_000), 8_000);
        drop(first);
        assert_eq!(b.delay_ms(9_000), 5_000);
        drop(second);
        assert_eq!(b.delay_ms(9_000), 0);
        // A clock that stepped back gives no negative delay.
        let _late = b.arrive(10_000);
        assert_eq!(b.delay_ms(9_000), 0);
    }
}
