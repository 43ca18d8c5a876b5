//! Why a queued job waits: each connected provider held against what the
//! claim asks of a trainer ([`crate::lease`]), and the reasons no provider
//! can take the job now, counted. Shown at submit (as a warning) and on a
//! queued job, so a customer is never left guessing. Likewise for audits:
//! which validators may replay whose work, and how many of a job's drawn
//! audits no connected validator can serve.

use crate::error::PoolError;
use crate::store::JobRow;
use crate::Pool;
use gradpool_core::spec::DeviceRequest;
use gradpool_core::state::JobStatus;
use gradpool_core::wire::JobView;
use gradpool_core::Piconero;
use sqlx::SqliteConnection;

/// What the claim asks of a provider that trains, besides being free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// Its owner's limits pause it, or the pool holds it (hardware proof).
    Unavailable,
    /// It only validates.
    ValidatesOnly,
    /// Not the device class the job asks for.
    Device,
    /// Less memory than the job needs.
    Memory,
    /// Its price is above the job's maximum.
    Price,
    /// A priced provider and a job with no budget.
    NoBudget,
    /// The budget is above the stake threshold and it has no stake.
    Stake,
    /// Another customer's booking holds it now.
    Booked,
    /// The job trains in a booking that does not hold it now (not one of
    /// its providers, or outside its window).
    OutsideBooking,
    /// The job keeps to a region its owner did not declare.
    Region,
}

impl Refusal {
    fn describe(self, n: usize, job: &JobRow, cheapest: Option<i64>) -> String {
        let they = if n == 1 {
            "1 provider".to_owned()
        } else {
            format!("{n} providers")
        };
        match self {
            Refusal::Unavailable => format!("{they} paused or held"),
            Refusal::ValidatesOnly => format!("{they} only validating"),
            Refusal::Device => format!("{they} without the device class `{}`", job.device),
            Refusal::Memory => format!(
                "{they} with less than the {} MiB of memory the job needs",
                job.min_memory_bytes >> 20
            ),
            Refusal::Price => format!(
                "{they} asking more than the job's maximum of {}/h{}",
                pico(job.max_price_per_hour.unwrap_or(0)),
                cheapest
                    .map(|c| format!(" (the cheapest asks {}/h)", pico(c)))
                    .unwrap_or_default()
            ),
            Refusal::NoBudget => format!("{they} asking a price of a job with no budget"),
            Refusal::Stake => format!(
                "{they} without the stake a budget of {} needs",
                pico(job.budget)
            ),
            Refusal::Booked => format!("{they} booked by another customer now"),
            Refusal::Region => format!(
                "{they} outside the job's region `{}` (resources.region; a provider declares `region` in its config)",
                job.region.as_deref().unwrap_or_default()
            ),
            Refusal::OutsideBooking => format!(
                "{they} outside the job's booking {} now (not one of its providers, or its window is not open)",
                job.booking_id.as_deref().unwrap_or_default()
            ),
        }
    }
}

fn pico(v: i64) -> Piconero {
    Piconero(u64::try_from(v).unwrap_or(0))
}

/// A provider as placement sees it.
#[derive(Debug, sqlx::FromRow)]
struct Offer {
    id: String,
    device: String,
    memory_bytes: i64,
    price_per_hour: i64,
    trains: bool,
    unavailable: bool,
    unstaking: bool,
    #[sqlx(skip)]
    stake: i64,
    booked: bool,
    region: Option<String>,
    /// In the job's booking and inside its window (true for a job with no
    /// booking).
    in_booking: bool,
}

/// The first thing that keeps `offer` from training `job`, if any.
fn refusal(job: &JobRow, offer: &Offer, stake_free_budget: i64, min_stake: i64) -> Option<Refusal> {
    let device_ok = job.device == DeviceRequest::Any.as_str() || job.device == offer.device;
    if offer.unavailable {
        Some(Refusal::Unavailable)
    } else if !offer.trains {
        Some(Refusal::ValidatesOnly)
    } else if !device_ok {
        Some(Refusal::Device)
    } else if offer.memory_bytes < job.min_memory_bytes {
        Some(Refusal::Memory)
    } else if job
        .max_price_per_hour
        .is_some_and(|max| offer.price_per_hour > max)
    {
        Some(Refusal::Price)
    } else if job.budget <= 0 && offer.price_per_hour != 0 {
        Some(Refusal::NoBudget)
    } else if job.budget > stake_free_budget && (offer.unstaking || offer.stake < min_stake) {
        Some(Refusal::Stake)
    } else if offer.booked {
        Some(Refusal::Booked)
    } else if !offer.in_booking {
        Some(Refusal::OutsideBooking)
    } else if job.region.is_some() && job.region != offer.region {
        Some(Refusal::Region)
    } else {
        None
    }
}

/// Why no connected provider can take `job` now, or `None` when one can.
pub(crate) async fn why_waiting(
    conn: &mut SqliteConnection,
    job: &JobRow,
    now: i64,
    lease_ms: i64,
    money: &crate::config::MoneyConfig,
) -> Result<Option<String>, PoolError> {
    let offers: Vec<Offer> = sqlx::query_as(
        "SELECT p.id, p.device, p.memory_bytes, p.price_per_hour, p.trains = 1 AS trains, p.region, \
           (p.held IS NOT NULL OR p.duplicate_of IS NOT NULL OR p.paused IS NOT NULL) AS unavailable, \
           p.unstake_requested_at IS NOT NULL AS unstaking, \
           EXISTS (SELECT 1 FROM booking_providers bp JOIN bookings b ON b.id = bp.booking_id \
                   WHERE bp.provider_id = p.id AND b.status = 'reserved' AND b.starts_at <= ?1 \
                     AND b.ends_at > ?1 AND b.account_id != ?2) AS booked, \
           (?4 IS NULL OR EXISTS (SELECT 1 FROM booking_providers bp JOIN bookings b ON b.id = bp.booking_id \
                   WHERE b.id = ?4 AND bp.provider_id = p.id AND b.status = 'reserved' \
                     AND b.starts_at <= ?1 AND b.ends_at > ?1)) AS in_booking \
         FROM providers p WHERE p.last_seen >= ?1 - ?3",
    )
    .bind(now)
    .bind(&job.account_id)
    .bind(lease_ms)
    .bind(job.booking_id.as_deref())
    .fetch_all(&mut *conn)
    .await?;
    let mut offers = offers;
    for offer in &mut offers {
        offer.stake =
            crate::ledger::balance_of(conn, &crate::escrow::stake_account(&offer.id)).await?;
    }
    if offers.is_empty() {
        return Ok(Some("no provider is connected to the pool".into()));
    }
    let stake_free = i64::try_from(money.stake_required_above.0).unwrap_or(i64::MAX);
    let min_stake = i64::try_from(money.min_stake.0).unwrap_or(i64::MAX);
    let mut counts = std::collections::BTreeMap::<Refusal, usize>::new();
    for offer in &offers {
        match refusal(job, offer, stake_free, min_stake) {
            None => return Ok(None),
            Some(r) => *counts.entry(r).or_default() += 1,
        }
    }
    let cheapest = offers.iter().map(|o| o.price_per_hour).min();
    let reasons: Vec<String> = counts
        .into_iter()
        .map(|(r, n)| r.describe(n, job, cheapest))
        .collect();
    Ok(Some(format!(
        "no provider can take it now: {}",
        reasons.join("; ")
    )))
}

/// Whether a connected validator other than `trainer` (and `besides`)
/// could take a replay of `trainer`'s work: validators never replay their
/// own work nor that of a provider sharing a payout address with them.
pub(crate) async fn validator_available(
    conn: &mut SqliteConnection,
    now: i64,
    lease_ms: i64,
    trainer: &str,
    besides: Option<&str>,
) -> Result<bool, PoolError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM providers v WHERE v.validate = 1 AND v.validator_barred = 0 \
           AND v.id != ?1 AND v.id != COALESCE(?2, '') AND v.last_seen >= ?3 \
           AND NOT EXISTS (SELECT 1 FROM payout_splits x JOIN payout_splits y ON x.address = y.address \
                           WHERE x.provider_id = v.id AND y.provider_id = ?1))",
    )
    .bind(trainer)
    .bind(besides)
    .bind(now - lease_ms)
    .fetch_one(conn)
    .await?)
}

/// How many open audits of `job_id` no connected validator could take
/// now (none is replaying them, and none eligible is connected).
pub(crate) async fn audits_waiting(
    conn: &mut SqliteConnection,
    job_id: &str,
    now: i64,
    lease_ms: i64,
) -> Result<u32, PoolError> {
    let open: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT a.provider_id, \
           (SELECT r.validator_id FROM replays r WHERE r.audit_id = a.id ORDER BY r.reported_at LIMIT 1) \
         FROM audits a WHERE a.job_id = ? AND a.status = 'open' AND a.reason != 'planted' \
           AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.audit_id = a.id AND t.status = 'leased')",
    )
    .bind(job_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut waiting = 0;
    for (trainer, first) in open {
        if !validator_available(conn, now, lease_ms, &trainer, first.as_deref()).await? {
            waiting += 1;
        }
    }
    Ok(waiting)
}

impl Pool {
    /// A job as its owner sees it; a queued one says why it waits, when no
    /// connected provider can take it now, and any job how many of its
    /// drawn audits wait for an eligible validator or went unserved.
    pub(crate) async fn job_view(
        &self,
        conn: &mut SqliteConnection,
        job: &JobRow,
    ) -> Result<JobView, PoolError> {
        let mut view = job.view()?;
        let (now, lease_ms) = (self.now(), self.lease_ms());
        if job.status == JobStatus::Queued {
            let money = &self.inner.config.money;
            view.waiting = why_waiting(conn, job, now, lease_ms, money).await?;
        }
        if !job.status.is_final() {
            view.audits_waiting = audits_waiting(conn, &job.id, now, lease_ms).await?;
        }
        view.audits_unserved = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM audits WHERE job_id = ? AND status = 'unserved'",
        )
        .bind(&job.id)
        .fetch_one(&mut *conn)
        .await?
        .try_into()
        .unwrap_or(u32::MAX);
        Ok(view)
    }
}
