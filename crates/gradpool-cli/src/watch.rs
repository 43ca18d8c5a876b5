//! Following a job live over server-sent events.

use anyhow::Context;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use gradpool_client::Api;
use gradpool_core::wire::{JobEvent, JobEventKind, JobView, TaskKind};
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

/// Prints a line above the progress bar; without a terminal (logs, CI),
/// where the bar is hidden, prints it plainly.
fn note(bar: &ProgressBar, visible: bool, line: impl AsRef<str>) {
    if !visible {
        return;
    }
    if bar.is_hidden() {
        println!("{}", line.as_ref());
    } else {
        bar.println(line);
    }
}

/// How long `watch` keeps trying a pool that stopped answering (a restart,
/// the network) before it gives up.
const UNREACHABLE_FOR: Duration = Duration::from_secs(300);

/// The job, once the pool answers again: retried every 2 s for up to
/// [`UNREACHABLE_FOR`] while the pool is unreachable, saying so once.
async fn reachable_again(
    api: &Api,
    id: &str,
    bar: &ProgressBar,
    visible: bool,
) -> anyhow::Result<JobView> {
    let started = std::time::Instant::now();
    let mut said = false;
    loop {
        match api.get::<JobView>(&format!("/v1/jobs/{id}")).await {
            Ok(job) => {
                if said {
                    note(bar, visible, "  the pool answers again");
                }
                return Ok(job);
            }
            Err(e) if e.is_unreachable() && started.elapsed() < UNREACHABLE_FOR => {
                if !said {
                    note(
                        bar,
                        visible,
                        format!(
                            "  {}; trying again for up to {} s",
                            e.report(),
                            UNREACHABLE_FOR.as_secs()
                        ),
                    );
                    said = true;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// "K drawn audits waiting for an eligible validator", with why.
pub fn audits_waiting_line(k: u32) -> String {
    format!(
        "{k} drawn audit{} waiting for an eligible validator: none connected is neither the \
         trainer nor shares its payout address (the job ends once served, or `unverified` at the \
         pool's audit deadline)",
        if k == 1 { "" } else { "s" }
    )
}

/// When a hidden bar's live line (step, loss, tokens/s, cost) is next due.
struct Live {
    hidden: bool,
    last: Option<std::time::Instant>,
}

impl Live {
    /// How often the live line is printed without a terminal.
    const EVERY: Duration = Duration::from_secs(5);

    fn new(hidden: bool) -> Live {
        Live { hidden, last: None }
    }

    /// Whether to print the live line now (only when the bar is hidden).
    fn due(&mut self) -> bool {
        if !self.hidden || self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return false;
        }
        self.last = Some(std::time::Instant::now());
        true
    }
}

/// Shows a progress bar (step, loss, tokens/s, provider) until the job ends,
/// and returns the job as it ended. When the stream ends before the job
/// does, it reconnects and resumes after the last event it saw.
pub async fn follow(api: &Api, id: &str, visible: bool) -> anyhow::Result<JobView> {
    let job: JobView = api.get(&format!("/v1/jobs/{id}")).await?;
    let bar = if visible {
        ProgressBar::new(job.steps)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(job.id.to_string());
    // The cost so far, shown beside loss and speed.
    let mut spent = job.spent;
    let mut progress = String::new();
    bar.set_position(job.step);
    bar.enable_steady_tick(Duration::from_millis(200));
    if let Some(why) = &job.waiting {
        note(&bar, visible, format!("  job queued: {why}"));
    }
    if job.audits_waiting > 0 {
        note(
            &bar,
            visible,
            format!("  {}", audits_waiting_line(job.audits_waiting)),
        );
    }
    // Piped or logged, the bar is hidden: its line is printed now and then.
    let mut live = Live::new(bar.is_hidden());
    let mut last_id: i64 = 0;
    loop {
        let rb = api
            .request(
                reqwest::Method::GET,
                &format!("/v1/jobs/{id}/events?after={last_id}"),
            )
            .header("accept", "text/event-stream");
        let resp = match api.send("event stream", rb).await {
            Ok(resp) => resp,
            Err(e) if e.is_unreachable() => {
                reachable_again(api, id, &bar, visible).await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut events = resp.bytes_stream().eventsource();
        while let Some(ev) = events.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::debug!(error = %e, "event stream broke; reconnecting");
                    break;
                }
            };
            if ev.data.is_empty() {
                continue;
            }
            let event: JobEvent = serde_json::from_str(&ev.data).context("unreadable job event")?;
            last_id = event.id;
            match event.kind {
                JobEventKind::Status { status, reason } => {
                    note(
                        &bar,
                        visible,
                        format!(
                            "  job {}{}",
                            status.as_str(),
                            reason.map(|r| format!(": {r}")).unwrap_or_default()
                        ),
                    );
                    if status.is_final() {
                        if status.is_trained() {
                            bar.set_position(job.steps);
                        }
                        bar.finish_and_clear();
                        return api.get(&format!("/v1/jobs/{id}")).await.map_err(Into::into);
                    }
                }
                JobEventKind::Assigned {
                    provider: p,
                    segment,
                    start_step,
                    end_step,
                    ..
                } => {
                    note(
                        &bar,
                        visible,
                        format!("  segment {segment} (steps {start_step}..{end_step}) → {p}"),
                    );
                }
                JobEventKind::Progress {
                    provider: p,
                    step,
                    loss,
                    tokens_per_sec,
                } => {
                    bar.set_position(step);
                    // A container segment's script reports no throughput.
                    progress = if tokens_per_sec > 0.0 {
                        format!("loss {loss:.4}  {tokens_per_sec:.0} tok/s  on {p}")
                    } else {
                        format!("loss {loss:.4}  on {p}")
                    };
                    bar.set_message(format!("{progress}  cost {spent}"));
                    if live.due() {
                        note(
                            &bar,
                            visible,
                            format!("  step {step}/{}  {progress}  cost {spent}", job.steps),
                        );
                    }
                }
                JobEventKind::Checkpoint {
                    segment,
                    step,
                    loss,
                    eval_loss,
                    commitment,
                    ..
                } => {
                    bar.set_position(step);
                    let held_out = eval_loss
                        .map(|l| format!(", held-out {l:.4}"))
                        .unwrap_or_default();
                    note(
                        &bar,
                        visible,
                        format!(
                            "  checkpoint {segment} at step {step}: loss {loss:.4}{held_out}, commitment {}…",
                            &commitment.to_string()[..16]
                        ),
                    );
                    if step >= job.steps {
                        let now: JobView = api.get(&format!("/v1/jobs/{id}")).await?;
                        if now.audits_waiting > 0 {
                            note(
                                &bar,
                                visible,
                                format!(
                                    "  trained to the end; the job ends once its audits are decided: {}",
                                    audits_waiting_line(now.audits_waiting)
                                ),
                            );
                        }
                    }
                }
                JobEventKind::LeaseExpired {
                    provider: p,
                    segment,
                    ..
                } => {
                    note(
                        &bar,
                        visible,
                        format!(
                            "  {p} stopped answering; segment {segment} goes back to the queue"
                        ),
                    );
                }
                JobEventKind::Released {
                    provider: p,
                    segment,
                    reason,
                    ..
                } => {
                    note(
                        &bar,
                        visible,
                        format!(
                            "  {p} paused ({reason}); segment {segment} goes back to the queue"
                        ),
                    );
                }
                JobEventKind::TaskFailed {
                    provider: p,
                    segment,
                    reason,
                    ..
                } => {
                    note(
                        &bar,
                        visible,
                        format!("  segment {segment} failed on {p}: {reason}"),
                    );
                }
                JobEventKind::Payment {
                    provider: p,
                    segment,
                    billed_ms,
                    price_per_hour,
                    price,
                    spent: total,
                    kind,
                    ..
                } => {
                    spent = total;
                    bar.set_message(format!("{progress}  cost {spent}"));
                    let what = match kind {
                        TaskKind::Train => "segment",
                        TaskKind::Replay => "replay of segment",
                        TaskKind::Outer => "outer step after segment",
                    };
                    note(
                        &bar,
                        visible,
                        format!(
                            "  {what} {segment} paid: {price} to {p} ({:.1} s at {price_per_hour}/h); job cost so far {spent}",
                            billed_ms as f64 / 1000.0
                        ),
                    );
                }
                JobEventKind::Audit {
                    segment,
                    provider: p,
                    reason,
                } => {
                    note(
                        &bar,
                        visible,
                        format!(
                            "  segment {segment} of {p} drawn for an audit ({reason}): a validator replays it"
                        ),
                    );
                    let now: JobView = api.get(&format!("/v1/jobs/{id}")).await?;
                    if now.audits_waiting > 0 {
                        note(
                            &bar,
                            visible,
                            format!("  {}", audits_waiting_line(now.audits_waiting)),
                        );
                    }
                }
                JobEventKind::Verdict {
                    segment,
                    provider: p,
                    outcome,
                    at_fault,
                    validators,
                } => {
                    let by = validators
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ");
                    let line = match (outcome.as_str(), at_fault) {
                        ("verified", _) => format!("  segment {segment} verified by {by}"),
                        (_, Some(f)) if f == p => format!(
                            "  segment {segment}: {p} cheated (replayed by {by}); it is slashed and barred from the job"
                        ),
                        (_, Some(f)) => format!(
                            "  segment {segment}: validator {f} answered wrongly; the segment of {p} stands"
                        ),
                        ("unserved", None) => format!(
                            "  segment {segment} of {p}: no eligible validator replayed it before the audit's deadline; it stays unverified"
                        ),
                        (other, None) => format!("  segment {segment}: {other}"),
                    };
                    note(&bar, visible, line);
                }
                JobEventKind::RolledBack {
                    segment,
                    step,
                    provider: p,
                } => {
                    bar.set_position(step);
                    note(
                        &bar,
                        visible,
                        format!("  rolled back to step {step}: {p}'s segment {segment} and all after it are trained again"),
                    );
                }
                JobEventKind::OuterStep {
                    round,
                    step,
                    workers,
                    loss,
                    eval_loss,
                    wait_seconds,
                    commitment,
                    ..
                } => {
                    bar.set_position(step);
                    let held_out = eval_loss
                        .map(|l| format!(", held-out {l:.4}"))
                        .unwrap_or_default();
                    note(
                        &bar,
                        visible,
                        format!(
                            "  round {round} at step {step}: {} workers, loss {loss:.4}{held_out}, \
                             waited {wait_seconds:.1} s for the slowest, commitment {}…",
                            workers.len(),
                            &commitment.to_string()[..16]
                        ),
                    );
                }
                JobEventKind::SlotReset {
                    round,
                    worker,
                    provider: p,
                } => note(
                    &bar,
                    visible,
                    format!(
                        "  round {round}: worker {worker} starts from fresh optimizer state ({p}, which held it, is gone)"
                    ),
                ),
                JobEventKind::LeftOut {
                    round,
                    worker,
                    provider: p,
                } => {
                    let whose = p
                        .map(|p| format!(" ({p}'s segment cancelled)"))
                        .unwrap_or_default();
                    note(
                        &bar,
                        visible,
                        format!("  round {round} closes without worker {worker}{whose}: too slow"),
                    );
                }
                JobEventKind::OuterRefused {
                    round,
                    provider: p,
                    reason,
                } => {
                    note(
                        &bar,
                        visible,
                        format!("  round {round}: {p}'s outer step refused ({reason}); computed again elsewhere"),
                    );
                }
                JobEventKind::Settled { refunded, released } => {
                    note(
                        &bar,
                        visible,
                        format!(
                            "  settled: {refunded} back to your balance, {released} released to providers"
                        ),
                    );
                }
            }
        }
        // The stream ended without a final status: check, then reconnect.
        let now = reachable_again(api, id, &bar, visible).await?;
        if now.status.is_final() {
            bar.finish_and_clear();
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
