//! The job event log and its live stream.
//!
//! Every event is a row of `job_events` (written in the transaction that
//! caused it) and, once that transaction committed, a message on a
//! broadcast channel. `GET /v1/jobs/{id}/events` replays the log after a
//! given id, then follows the channel, and closes after the event that puts
//! the job in a final status.

use crate::error::PoolError;
use crate::store;
use crate::Pool;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use gradpool_core::wire::{JobEvent, JobEventKind};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

/// Events read from the database at a time when replaying.
const REPLAY_PAGE: u32 = 256;

/// The SSE `event:` name of an event: its kind's `type`.
pub fn kind_name(kind: &JobEventKind) -> &'static str {
    match kind {
        JobEventKind::Status { .. } => "status",
        JobEventKind::Assigned { .. } => "assigned",
        JobEventKind::Progress { .. } => "progress",
        JobEventKind::Checkpoint { .. } => "checkpoint",
        JobEventKind::LeaseExpired { .. } => "lease_expired",
        JobEventKind::Released { .. } => "released",
        JobEventKind::TaskFailed { .. } => "task_failed",
        JobEventKind::Payment { .. } => "payment",
        JobEventKind::Settled { .. } => "settled",
        JobEventKind::Audit { .. } => "audit",
        JobEventKind::Verdict { .. } => "verdict",
        JobEventKind::RolledBack { .. } => "rolled_back",
        JobEventKind::OuterStep { .. } => "outer_step",
        JobEventKind::OuterRefused { .. } => "outer_refused",
        JobEventKind::LeftOut { .. } => "left_out",
        JobEventKind::SlotReset { .. } => "slot_reset",
    }
}

/// Whether this event puts its job in a final status.
pub fn is_final(event: &JobEvent) -> bool {
    matches!(&event.kind, JobEventKind::Status { status, .. } if status.is_final())
}

fn to_sse(event: &JobEvent) -> Event {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
    Event::default()
        .id(event.id.to_string())
        .event(kind_name(&event.kind))
        .data(data)
}

/// Where a stream of one job's events stands.
struct Follower {
    pool: Pool,
    job_id: String,
    last: i64,
    out: mpsc::Sender<Event>,
}

enum Step {
    /// Keep following.
    More,
    /// The final event was sent, or the client went away.
    Done,
}

impl Follower {
    async fn send(&mut self, event: &JobEvent) -> Step {
        if event.id <= self.last {
            return Step::More;
        }
        self.last = event.id;
        if self.out.send(to_sse(event)).await.is_err() || is_final(event) {
            Step::Done
        } else {
            Step::More
        }
    }

    /// Sends the stored events after the last one sent, a page at a time,
    /// so a long job's history never sits in memory whole and no database
    /// connection waits on a slow client.
    async fn replay(&mut self) -> Result<Step, PoolError> {
        loop {
            let mut conn = self.pool.inner.db.acquire().await?;
            let events =
                store::events_after(&mut conn, &self.job_id, self.last, REPLAY_PAGE).await?;
            drop(conn);
            for event in &events {
                if let Step::Done = self.send(event).await {
                    return Ok(Step::Done);
                }
            }
            if events.len() < REPLAY_PAGE as usize {
                return Ok(Step::More);
            }
        }
    }

    async fn job_is_final(&self) -> Result<bool, PoolError> {
        let mut conn = self.pool.inner.db.acquire().await?;
        match store::job(&mut conn, &self.job_id).await? {
            Some(job) => Ok(job.status.is_final()),
            None => Ok(true),
        }
    }

    async fn run(mut self, mut live: broadcast::Receiver<Arc<JobEvent>>) -> Result<(), PoolError> {
        if let Step::Done = self.replay().await? {
            return Ok(());
        }
        if self.job_is_final().await? {
            // The final event may have landed between the replay and now.
            self.replay().await?;
            return Ok(());
        }
        let stop = self.pool.inner.stop.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = self.out.closed() => return Ok(()),
                received = live.recv() => match received {
                    Ok(event) => {
                        if event.job_id.as_str() == self.job_id {
                            if let Step::Done = self.send(&event).await {
                                return Ok(());
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Step::Done = self.replay().await? {
                            return Ok(());
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
            }
        }
    }
}

/// How often a pool process on PostgreSQL reads the events written since
/// it last looked.
const RELAY_PERIOD: std::time::Duration = std::time::Duration::from_millis(200);

/// Events the relay reads at a time.
const RELAY_PAGE: u32 = 1024;

impl Pool {
    /// On PostgreSQL, where several pool processes write: publishes every
    /// committed event to this process's followers, in the order written,
    /// whichever process wrote it, and wakes this process's long polls
    /// (new events are what may have queued work). Runs until `stop`.
    pub(crate) async fn run_relay(self, stop: tokio_util::sync::CancellationToken) {
        let mut last = loop {
            match self.last_event_id().await {
                Ok(id) => break id,
                Err(e) => tracing::warn!(error = %e, "reading the last event failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RELAY_PERIOD) => {}
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RELAY_PERIOD) => {}
            }
            match self.relay_after(last).await {
                Ok(next) => last = next,
                Err(e) => tracing::warn!(error = %e, "relaying events failed"),
            }
        }
    }

    async fn last_event_id(&self) -> Result<i64, PoolError> {
        let mut conn = self.inner.db.acquire().await?;
        store::last_event_id(&mut conn).await
    }

    /// Publishes the events after `last`, a page at a time until a page
    /// comes back short; returns the last one read. (A page short only of
    /// unreadable rows ends the round early: the next one goes on.)
    async fn relay_after(&self, mut last: i64) -> Result<i64, PoolError> {
        loop {
            let mut conn = self.inner.db.acquire().await?;
            let (events, read_to) = store::events_since(&mut conn, last, RELAY_PAGE).await?;
            drop(conn);
            last = read_to;
            let full = events.len() == RELAY_PAGE as usize;
            if !events.is_empty() {
                self.publish(events);
                self.inner.work.notify_waiters();
            }
            if !full {
                return Ok(last);
            }
        }
    }

    /// Publishes committed events to live followers.
    pub(crate) fn publish(&self, events: Vec<JobEvent>) {
        for event in events {
            // No receivers is fine: nobody is following.
            let _ = self.inner.events.send(Arc::new(event));
        }
    }

    /// The server-sent event stream of a job's events after `after`.
    pub(crate) fn event_stream(
        &self,
        job_id: String,
        after: i64,
    ) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        let (tx, rx) = mpsc::channel(64);
        let follower = Follower {
            pool: self.clone(),
            job_id,
            last: after,
            out: tx,
        };
        let live = self.inner.events.subscribe();
        tokio::spawn(async move {
            let job_id = follower.job_id.clone();
            if let Err(e) = follower.run(live).await {
                tracing::warn!(job = %job_id, error = %e, "event stream ended early");
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|event| (Ok(event), rx))
        });
        Sse::new(stream).keep_alive(KeepAlive::default())
    }
}
