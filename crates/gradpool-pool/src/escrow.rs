//! Escrow: a job's budget is held from submit, each verified segment is paid
//! from it, and what is left goes back to the customer when the job ends.
//!
//! The money flows, each one journal entry of the [`ledger`](crate::ledger)
//! posted inside the pool's write transaction ([`crate::tx::Write`]) (so it commits together
//! with the state change that causes it, or not at all):
//!
//! ```text
//! submit            customer:ACCT              → escrow:JOB            budget
//! verified segment  escrow:JOB                 → provider_pending:PROV:JOB   price − fees
//!                                              → pool_fees:pool        pool fee
//!                                              → validator:fund        validator fee
//! job ends          escrow:JOB                 → customer:ACCT         the rest
//!                   provider_pending:PROV:JOB  → provider_available:PROV
//! ```
//!
//! A segment's price is the rate agreed at lease time (the provider's price
//! floor, at most the job's maximum) × its billed time. The billed time is
//! the smallest of: the compute time the provider reports, the time the pool
//! saw between lease and commit, and [`CAP_FACTOR`] × the time the
//! provider's benchmark says the segment's floating-point work takes. The
//! price never exceeds what is left in escrow.
//!
//! Until segments are replayed by validators, a segment counts as verified
//! when its commitment is accepted. Earnings stay pending per job until the
//! job ends, so a provider found cheating can forfeit what the job still
//! owes it.

use crate::error::PoolError;
use crate::ledger::{self, AccountKind, LedgerAccountId};
use crate::store::JobRow;
use crate::tx::Write;
use gradpool_core::wire::{JobEventKind, TaskKind};
use gradpool_core::{Piconero, ProviderId};

/// A segment is billed at most this many times the time its estimated
/// floating-point work takes at the provider's benchmark speed. Training
/// reaches a fraction of a plain matrix multiplication's rate (small
/// matrices, normalisations, the optimizer); the factor leaves room for
/// that, and no more.
pub const CAP_FACTOR: f64 = 4.0;

/// Basis points in one.
const BPS: u128 = 10_000;

/// The escrow account of a job.
pub fn escrow_account(job_id: &str) -> LedgerAccountId {
    LedgerAccountId::new(AccountKind::Escrow, job_id)
}

/// A customer's spendable balance.
pub fn customer_account(account_id: &str) -> LedgerAccountId {
    LedgerAccountId::new(AccountKind::Customer, account_id)
}

/// A provider's earnings from one job, pending until the job ends.
pub fn pending_account(provider: &str, job_id: &str) -> LedgerAccountId {
    LedgerAccountId::new(
        AccountKind::ProviderPending,
        &format!("{provider}:{job_id}"),
    )
}

/// A provider's earnings ready to be paid out.
pub fn available_account(provider: &str) -> LedgerAccountId {
    LedgerAccountId::new(AccountKind::ProviderAvailable, provider)
}

/// A provider's stake.
pub fn stake_account(provider: &str) -> LedgerAccountId {
    LedgerAccountId::new(AccountKind::ProviderStake, provider)
}

/// The pool's fees.
pub fn pool_fees_account() -> LedgerAccountId {
    LedgerAccountId::new(AccountKind::PoolFees, "pool")
}

/// The validator fund: every segment's validator fee, from which replays
/// are paid.
pub fn validator_fund_account() -> LedgerAccountId {
    LedgerAccountId::new(AccountKind::Validator, "fund")
}

/// The fees taken from every segment's price, in basis points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fees {
    pub pool_bps: u32,
    pub validator_bps: u32,
}

/// How one segment is priced and split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentPrice {
    pub billed_ms: u64,
    pub price_per_hour: Piconero,
    pub price: Piconero,
    pub provider_share: Piconero,
    pub pool_fee: Piconero,
    pub validator_fee: Piconero,
}

/// The time billed for a segment: the least of what the provider reports
/// (`0` = not reported), what the pool observed, and the benchmark cap.
pub fn billed_ms(reported_ms: u64, observed_ms: u64, cap_ms: Option<u64>) -> u64 {
    let reported = if reported_ms == 0 {
        observed_ms
    } else {
        reported_ms
    };
    let billed = reported.min(observed_ms);
    cap_ms.map_or(billed, |cap| billed.min(cap))
}

/// How far a reported compute time may exceed the time the pool saw
/// between the lease and the report (the two clocks start and stop at
/// different moments), in milliseconds.
pub const REPORT_SLACK_MS: u64 = 60_000;

/// Refuses a reported compute time the task cannot have taken: more than
/// the time since it was leased, plus [`REPORT_SLACK_MS`].
pub fn check_reported_ms(reported_ms: u64, observed_ms: u64) -> Result<(), String> {
    if reported_ms > observed_ms.saturating_add(REPORT_SLACK_MS) {
        Err(format!(
            "compute_ms: {reported_ms} ms is impossible, the task was leased {observed_ms} ms ago"
        ))
    } else {
        Ok(())
    }
}

/// The benchmark cap on a segment's billed time, in milliseconds: `None`
/// when the job's size or the provider's speed is unknown.
pub fn cap_ms(steps: u64, flops_per_step: Option<f64>, gflops: Option<f64>) -> Option<u64> {
    let flops = flops_per_step.filter(|f| f.is_finite() && *f > 0.0)?;
    let gflops = gflops.filter(|g| g.is_finite() && *g > 0.0)?;
    let ms = CAP_FACTOR * steps as f64 * flops / (gflops * 1e9) * 1000.0;
    // At least a millisecond; `as` saturates for huge values.
    Some((ms.ceil() as u64).max(1))
}

/// Prices a segment: `rate × billed_ms / 1 h`, rounded down, at most
/// `escrow_left`, split into the provider's share and the fees (each fee
/// rounded down, the provider gets the rest). Exact integer arithmetic.
pub fn price_segment(
    price_per_hour: Piconero,
    billed_ms: u64,
    escrow_left: Piconero,
    fees: Fees,
) -> SegmentPrice {
    let raw = u128::from(price_per_hour.0) * u128::from(billed_ms) / 3_600_000;
    let price = raw.min(u128::from(escrow_left.0));
    let pool_fee = price * u128::from(fees.pool_bps) / BPS;
    let validator_fee = price * u128::from(fees.validator_bps) / BPS;
    // Fees are at most 100% together (checked in PoolConfig), so this never
    // underflows; saturate anyway.
    let provider_share = price.saturating_sub(pool_fee + validator_fee);
    // Every figure is at most `escrow_left`, a u64.
    let pico = |x: u128| Piconero(u64::try_from(x).unwrap_or(u64::MAX));
    SegmentPrice {
        billed_ms,
        price_per_hour,
        price: pico(price),
        provider_share: pico(provider_share),
        pool_fee: pico(pool_fee),
        validator_fee: pico(validator_fee),
    }
}

/// Postings of `amount` to `to`, skipping zero amounts (the ledger refuses
/// zero postings).
fn credit(postings: &mut Vec<(LedgerAccountId, i64)>, to: LedgerAccountId, amount: Piconero) {
    if let Ok(x) = i64::try_from(amount.0) {
        if x > 0 {
            postings.push((to, x));
        }
    }
}

/// A task whose work is paid: who did it and how long it says it took.
pub(crate) struct WorkDone<'a> {
    pub task_id: &'a str,
    pub segment: u32,
    pub provider: &'a ProviderId,
    /// The compute time the provider reported, in milliseconds.
    pub reported_ms: u64,
    pub kind: TaskKind,
}

/// Holds a new job's budget in escrow: customer → escrow. Refused with
/// [`PoolError::InsufficientFunds`] when the balance is short.
pub(crate) async fn hold_budget(
    w: &mut Write<'_>,
    account_id: &str,
    job_id: &str,
    budget: Piconero,
) -> Result<(), PoolError> {
    let customer = w.account(AccountKind::Customer, account_id).await?;
    let escrow = w.account(AccountKind::Escrow, job_id).await?;
    if budget.0 == 0 {
        return Ok(());
    }
    let balance = ledger::balance_of(w.conn(), &customer).await?;
    if u64::try_from(balance).unwrap_or(0) < budget.0 {
        let have = Piconero(u64::try_from(balance).unwrap_or(0));
        return Err(PoolError::InsufficientFunds(format!(
            "budget.total_xmr: the job's budget is {budget} but the account's balance is \
             {have}; {} or lower the budget",
            w.pool().fund_hint()
        )));
    }
    w.transfer(
        &customer,
        &escrow,
        budget,
        &format!("job:{job_id}:hold"),
        &format!("budget of job {job_id} held in escrow"),
    )
    .await?;
    Ok(())
}

/// Pays a verified segment (or a replay of one) from the job's escrow and
/// records the price on its task. Returns what was paid (nothing for a
/// price of zero).
pub(crate) async fn pay_segment(
    w: &mut Write<'_>,
    job: &JobRow,
    work: WorkDone<'_>,
    fees: Fees,
) -> Result<SegmentPrice, PoolError> {
    let WorkDone {
        task_id,
        segment,
        provider,
        reported_ms,
        kind,
    } = work;
    let (rate, assigned_at, start, end): (Option<i64>, Option<i64>, i64, i64) = sqlx::query_as(
        "SELECT price_per_hour, assigned_at, start_step, end_step FROM tasks WHERE id = $1",
    )
    .bind(task_id)
    .fetch_one(w.conn())
    .await?;
    // The faster of the claimed benchmark and the proven speed: a
    // provider cannot widen its cap by claiming to be slow, since its
    // hardware proof measures it.
    let gflops: Option<f64> = sqlx::query_scalar(
        "SELECT NULLIF(CASE WHEN COALESCE(benchmark_gflops, 0) > COALESCE(proven_gflops, 0) \
         THEN COALESCE(benchmark_gflops, 0) ELSE COALESCE(proven_gflops, 0) END, 0) \
         FROM providers WHERE id = $1",
    )
    .bind(provider.as_str())
    .fetch_one(w.conn())
    .await?;
    let rate = Piconero(u64::try_from(rate.unwrap_or(0)).unwrap_or(0));
    let observed = u64::try_from(w.now - assigned_at.unwrap_or(w.now)).unwrap_or(0);
    check_reported_ms(reported_ms, observed).map_err(PoolError::BadRequest)?;
    let steps = u64::try_from(end - start).unwrap_or(0);
    let billed = billed_ms(
        reported_ms,
        observed,
        cap_ms(steps, job.flops_per_step, gflops),
    );
    let escrow = escrow_account(&job.id);
    let left = ledger::balance_of(w.conn(), &escrow).await?;
    let price = price_segment(
        rate,
        billed,
        Piconero(u64::try_from(left).unwrap_or(0)),
        fees,
    );
    sqlx::query("UPDATE tasks SET billed_ms = $1, price = $2 WHERE id = $3")
        .bind(i64::try_from(billed).unwrap_or(i64::MAX))
        .bind(i64::try_from(price.price.0).unwrap_or(i64::MAX))
        .bind(task_id)
        .execute(w.conn())
        .await?;
    if price.price.0 > 0 {
        let pending = w
            .account(
                AccountKind::ProviderPending,
                &format!("{provider}:{}", job.id),
            )
            .await?;
        let fees_account = w.account(AccountKind::PoolFees, "pool").await?;
        let fund = w.account(AccountKind::Validator, "fund").await?;
        let total = i64::try_from(price.price.0)
            .map_err(|_| PoolError::Internal("segment price overflows".into()))?;
        let mut postings = vec![(escrow, -total)];
        credit(&mut postings, pending, price.provider_share);
        credit(&mut postings, fees_account, price.pool_fee);
        credit(&mut postings, fund, price.validator_fee);
        w.post(
            // One payment per task: a segment trained again after a
            // rollback, or replayed, is another task.
            &format!("task:{task_id}:pay"),
            &format!(
                "{} of segment {segment} of job {}: {} ms at {rate}/h by {provider}",
                match kind {
                    TaskKind::Train => "training",
                    TaskKind::Replay => "replay",
                    TaskKind::Outer => "outer step",
                },
                job.id,
                billed
            ),
            &postings,
        )
        .await?;
    }
    let spent: i64 = sqlx::query_scalar(
        "SELECT COALESCE(CAST(SUM(price) AS BIGINT), 0) FROM tasks WHERE job_id = $1",
    )
    .bind(&job.id)
    .fetch_one(w.conn())
    .await?;
    w.event(
        &job.id,
        JobEventKind::Payment {
            provider: provider.clone(),
            segment,
            billed_ms: billed,
            price_per_hour: rate,
            price: price.price,
            provider_share: price.provider_share,
            pool_fee: price.pool_fee,
            validator_fee: price.validator_fee,
            spent: Piconero(u64::try_from(spent).unwrap_or(0)),
            kind,
        },
    )
    .await?;
    Ok(price)
}

/// Pays a validator for a planted replay (the pool's own check, which no
/// customer pays for) from the validator fund, at most what the fund
/// holds, straight to its available earnings.
pub(crate) async fn pay_planted_replay(
    w: &mut Write<'_>,
    task_id: &str,
    validator: &ProviderId,
    reported_ms: u64,
) -> Result<Piconero, PoolError> {
    let (rate, assigned_at): (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT price_per_hour, assigned_at FROM tasks WHERE id = $1")
            .bind(task_id)
            .fetch_one(w.conn())
            .await?;
    let rate = Piconero(u64::try_from(rate.unwrap_or(0)).unwrap_or(0));
    let observed = u64::try_from(w.now - assigned_at.unwrap_or(w.now)).unwrap_or(0);
    let billed = billed_ms(reported_ms, observed, None);
    let fund = validator_fund_account();
    let held = ledger::balance_of(w.conn(), &fund).await?;
    let due = u128::from(rate.0) * u128::from(billed) / 3_600_000;
    let pay = u64::try_from(due)
        .unwrap_or(u64::MAX)
        .min(u64::try_from(held).unwrap_or(0));
    if pay > 0 {
        let to = w
            .account(AccountKind::ProviderAvailable, validator.as_str())
            .await?;
        w.transfer(
            &fund,
            &to,
            Piconero(pay),
            &format!("task:{task_id}:pay"),
            &format!("planted replay {task_id} by {validator}: {billed} ms at {rate}/h"),
        )
        .await?;
    }
    sqlx::query("UPDATE tasks SET billed_ms = $1 WHERE id = $2")
        .bind(i64::try_from(billed).unwrap_or(i64::MAX))
        .bind(task_id)
        .execute(w.conn())
        .await?;
    Ok(Piconero(pay))
}

/// Settles a job that ended (succeeded, failed or cancelled): refunds
/// what is left in escrow and releases the providers' pending earnings.
/// Idempotent: a second call moves nothing.
pub(crate) async fn settle_job(w: &mut Write<'_>, job: &JobRow) -> Result<(), PoolError> {
    let escrow = escrow_account(&job.id);
    let customer = customer_account(&job.account_id);
    let mut refunded = Piconero::ZERO;
    let left = ledger::balance_of(w.conn(), &escrow).await?;
    if left > 0 {
        w.account(AccountKind::Customer, &job.account_id).await?;
        refunded = Piconero(u64::try_from(left).unwrap_or(0));
        w.transfer(
            &escrow,
            &customer,
            refunded,
            &format!("job:{}:refund", job.id),
            &format!("what job {} did not spend, back to its customer", job.id),
        )
        .await?;
    }
    let pending: Vec<(String, i64)> = sqlx::query_as(
        "SELECT a.id, CAST(SUM(p.amount) AS BIGINT) FROM ledger_accounts a \
         JOIN postings p ON p.account_id = a.id \
         WHERE a.kind = 'provider_pending' AND a.owner LIKE '%:' || $1 \
         GROUP BY a.id HAVING CAST(SUM(p.amount) AS BIGINT) > 0",
    )
    .bind(&job.id)
    .fetch_all(w.conn())
    .await?;
    let mut released: u64 = 0;
    for (id, amount) in pending {
        let from = LedgerAccountId::from_stored(id);
        // The owner is `PROVIDER:JOB`.
        let Some((provider, _)) = from.owner().split_once(':') else {
            continue;
        };
        let provider = provider.to_owned();
        let to = w.account(AccountKind::ProviderAvailable, &provider).await?;
        let amount = Piconero(u64::try_from(amount).unwrap_or(0));
        w.transfer(
            &from,
            &to,
            amount,
            &format!("job:{}:release:{provider}", job.id),
            &format!("earnings of {provider} from job {}", job.id),
        )
        .await?;
        released = released.saturating_add(amount.0);
    }
    if refunded.0 > 0 || released > 0 {
        w.event(
            &job.id,
            JobEventKind::Settled {
                refunded,
                released: Piconero(released),
            },
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEES: Fees = Fees {
        pool_bps: 200,
        validator_bps: 100,
    };

    #[test]
    fn a_segment_costs_rate_times_time_split_exactly() {
        // 0.036 XMR/h for 10 s = 0.0001 XMR = 100_000_000 piconero.
        let p = price_segment(Piconero(36_000_000_000), 10_000, Piconero(u64::MAX), FEES);
        assert_eq!(p.price, Piconero(100_000_000));
        assert_eq!(p.pool_fee, Piconero(2_000_000));
        assert_eq!(p.validator_fee, Piconero(1_000_000));
        assert_eq!(p.provider_share, Piconero(97_000_000));
        assert_eq!(
            p.provider_share.0 + p.pool_fee.0 + p.validator_fee.0,
            p.price.0
        );
    }

    #[test]
    fn the_price_never_exceeds_the_escrow_and_rounds_down() {
        let p = price_segment(Piconero(36_000_000_000), 10_000, Piconero(5), FEES);
        assert_eq!(p.price, Piconero(5));
        assert_eq!(p.pool_fee, Piconero(0));
        assert_eq!(p.provider_share, Piconero(5));
        // 1 piconero per hour for 1 ms rounds down to nothing.
        assert_eq!(
            price_segment(Piconero(1), 1, Piconero(100), FEES).price,
            Piconero(0)
        );
        // The largest rate for a day does not overflow.
        let p = price_segment(Piconero(u64::MAX), 86_400_000, Piconero(u64::MAX), FEES);
        assert_eq!(p.price, Piconero(u64::MAX));
    }

    #[test]
    fn billed_time_is_the_least_of_reported_observed_and_cap() {
        assert_eq!(billed_ms(5_000, 6_000, None), 5_000);
        // A provider cannot bill more than the pool saw.
        assert_eq!(billed_ms(60_000, 6_000, None), 6_000);
        // Nor more than its benchmark allows.
        assert_eq!(billed_ms(5_000, 6_000, Some(4_000)), 4_000);
        // Not reported: what the pool saw.
        assert_eq!(billed_ms(0, 6_000, None), 6_000);
    }

    #[test]
    fn the_cap_follows_the_work_and_the_speed() {
        // 100 steps of 1 GFLOP at 10 GFLOP/s: 10 s of work, capped at 4×.
        assert_eq!(cap_ms(100, Some(1e9), Some(10.0)), Some(40_000));
        assert_eq!(cap_ms(100, None, Some(10.0)), None);
        assert_eq!(cap_ms(100, Some(1e9), None), None);
        assert_eq!(cap_ms(100, Some(1e9), Some(0.0)), None);
        assert_eq!(cap_ms(100, Some(f64::NAN), Some(1.0)), None);
    }
}
