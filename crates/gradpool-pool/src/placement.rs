//! Why a queued job waits: each connected provider held against what the
//! claim asks of a trainer ([`crate::lease`]), and the reasons no provider
//! can take the job now, counted. Shown at submit (as a warning) and on a
//! queued job, so a customer is never left guessing. Likewise for audits:
//! which validators may replay whose work, and how many of a job's drawn
//! audits no connected validator can serve.
//!
//! And who trains a parallel job's round together: a worker's round takes
//! as long as its provider's training plus its transfers, and the round
//! waits for its slowest worker, so a provider expected to take more than
//! [`STRAGGLER_FACTOR`] times as long as enough free providers is held back
//! from the round's worker segments while they are young ([`held_back`]).

use crate::error::PoolError;
use crate::store::JobRow;
use crate::Pool;
use gradpool_core::spec::DeviceRequest;
use gradpool_core::state::{JobStatus, Runtime};
use gradpool_core::wire::JobView;
use gradpool_core::Piconero;
use sqlx::AnyConnection;

/// What the claim asks of a provider that trains, besides being free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// Its owner's limits pause it, or the pool holds it (hardware proof).
    Unavailable,
    /// It only validates.
    ValidatesOnly,
    /// A container job, and it does not run containers (its owner did not
    /// set `accept_containers`, or it has no podman).
    Containers,
    /// Not the device class the job asks for.
    Device,
    /// Less memory than the job needs.
    Memory,
    /// Less RAM than a container job's `memory_gib`.
    HostMemory,
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
            Refusal::Containers => format!(
                "{they} not running container jobs (accept_containers in the provider config, and podman)"
            ),
            Refusal::Device => format!("{they} without the device class `{}`", job.device),
            Refusal::Memory => format!(
                "{they} with less than the {} MiB of memory the job needs",
                job.min_memory_bytes >> 20
            ),
            Refusal::HostMemory => format!(
                "{they} with less than the {} MiB of RAM the container job needs (container.memory_gib)",
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
    host_memory_bytes: i64,
    price_per_hour: i64,
    #[sqlx(try_from = "crate::db::Flag")]
    trains: bool,
    #[sqlx(try_from = "crate::db::Flag")]
    containers: bool,
    #[sqlx(try_from = "crate::db::Flag")]
    unavailable: bool,
    #[sqlx(try_from = "crate::db::Flag")]
    unstaking: bool,
    #[sqlx(skip)]
    stake: i64,
    #[sqlx(try_from = "crate::db::Flag")]
    booked: bool,
    region: Option<String>,
    /// In the job's booking and inside its window (true for a job with no
    /// booking).
    #[sqlx(try_from = "crate::db::Flag")]
    in_booking: bool,
}

/// The first thing that keeps `offer` from training `job`, if any.
fn refusal(job: &JobRow, offer: &Offer, money: &crate::config::MoneyConfig) -> Option<Refusal> {
    let stake_free_budget = i64::try_from(money.stake_required_above.0).unwrap_or(i64::MAX);
    let min_stake = i64::try_from(money.min_stake.0).unwrap_or(i64::MAX);
    let device_ok = job.device == DeviceRequest::Any.as_str() || job.device == offer.device;
    if offer.unavailable {
        Some(Refusal::Unavailable)
    } else if !offer.trains {
        Some(Refusal::ValidatesOnly)
    } else if job.runtime == Runtime::Container && !offer.containers {
        Some(Refusal::Containers)
    } else if !device_ok {
        Some(Refusal::Device)
    } else if job.runtime == Runtime::Container && offer.host_memory_bytes < job.min_memory_bytes {
        Some(Refusal::HostMemory)
    } else if job.runtime == Runtime::Native && offer.memory_bytes < job.min_memory_bytes {
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

/// The connected providers, as placement sees them for `job`.
async fn offers(
    conn: &mut AnyConnection,
    job: &JobRow,
    now: i64,
    lease_ms: i64,
) -> Result<Vec<Offer>, PoolError> {
    let mut offers: Vec<Offer> = sqlx::query_as(
        "SELECT p.id, p.device, p.memory_bytes, COALESCE(p.host_memory_bytes, 0) AS host_memory_bytes, p.price_per_hour, p.trains = 1 AS trains, p.containers = 1 AS containers, p.region, \
           (p.held IS NOT NULL OR p.duplicate_of IS NOT NULL OR p.paused IS NOT NULL) AS unavailable, \
           p.unstake_requested_at IS NOT NULL AS unstaking, \
           EXISTS (SELECT 1 FROM booking_providers bp JOIN bookings b ON b.id = bp.booking_id \
                   WHERE bp.provider_id = p.id AND b.status = 'reserved' AND b.starts_at <= $1 \
                     AND b.ends_at > $1 AND b.account_id != $2) AS booked, \
           ($4 IS NULL OR EXISTS (SELECT 1 FROM booking_providers bp JOIN bookings b ON b.id = bp.booking_id \
                   WHERE b.id = $4 AND bp.provider_id = p.id AND b.status = 'reserved' \
                     AND b.starts_at <= $1 AND b.ends_at > $1)) AS in_booking \
         FROM providers p WHERE p.last_seen >= $1 - $3",
    )
    .bind(now)
    .bind(&job.account_id)
    .bind(lease_ms)
    .bind(job.booking_id.as_deref())
    .fetch_all(&mut *conn)
    .await?;
    for offer in &mut offers {
        offer.stake =
            crate::ledger::balance_of(conn, &crate::escrow::stake_account(&offer.id)).await?;
    }
    Ok(offers)
}

/// Why no connected provider can take `job` now, or `None` when one can.
pub(crate) async fn why_waiting(
    conn: &mut AnyConnection,
    job: &JobRow,
    now: i64,
    lease_ms: i64,
    money: &crate::config::MoneyConfig,
) -> Result<Option<String>, PoolError> {
    let offers = offers(conn, job, now, lease_ms).await?;
    if offers.is_empty() {
        return Ok(Some("no provider is connected to the pool".into()));
    }
    let mut counts = std::collections::BTreeMap::<Refusal, usize>::new();
    for offer in &offers {
        match refusal(job, offer, money) {
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

/// How many times slower than others a provider must be expected to be
/// before it is held back from a round they can fill.
pub const STRAGGLER_FACTOR: f64 = 2.0;

/// What the pool knows of a provider's speed: its hardware proof's
/// figure (or, unproven, the benchmark it claimed) and the bytes and
/// milliseconds of its latest sizeable blob transfers
/// ([`crate::store::TRANSFER_RATES`]).
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct Pace {
    pub id: String,
    pub gflops: Option<f64>,
    pub bytes: Option<i64>,
    pub ms: Option<i64>,
}

impl Pace {
    /// The seconds this provider is expected to take for a worker's round
    /// of `flops` (unknown for an MLP) that moves `bytes`: training at its
    /// proven speed plus transfers at its measured rate (none counted
    /// while it has none measured). `None` when nothing is known: its speed
    /// when the round's work is known, or else its rate.
    pub fn seconds(&self, flops: Option<f64>, bytes: f64) -> Option<f64> {
        let transfer = match (self.bytes, self.ms) {
            (Some(b), Some(ms)) if b > 0 => Some(bytes * ms.max(1) as f64 / 1000.0 / b as f64),
            _ => None,
        };
        let compute = match flops {
            Some(f) => {
                let g = self.gflops.filter(|g| g.is_finite() && *g > 0.0)?;
                f / (g * 1e9)
            }
            None => {
                transfer?;
                0.0
            }
        };
        Some(compute + transfer.unwrap_or(0.0)).filter(|s| s.is_finite())
    }
}

/// Whether a provider expected to take `me` seconds would hold back a
/// round with `open` worker segments left, which `others` (the expected
/// seconds of the free providers that could take them) can fill: at least
/// `open` of them are more than [`STRAGGLER_FACTOR`] times faster. One
/// whose speed is unknown is never held back, nor counted as faster.
pub fn holds_back(me: Option<f64>, others: &[Option<f64>], open: usize) -> bool {
    let Some(me) = me else { return false };
    let faster = others
        .iter()
        .flatten()
        .filter(|o| **o * STRAGGLER_FACTOR < me)
        .count();
    open > 0 && faster >= open
}

/// The paces of the connected providers.
async fn paces(
    conn: &mut AnyConnection,
    now: i64,
    lease_ms: i64,
) -> Result<std::collections::HashMap<String, Pace>, PoolError> {
    let rows: Vec<Pace> = sqlx::query_as(&format!(
        "SELECT p.id, COALESCE(p.proven_gflops, p.benchmark_gflops) AS gflops, s.bytes, s.ms \
         FROM providers p LEFT JOIN {} s ON s.principal = p.id \
         WHERE p.last_seen >= $1 - $2",
        crate::store::TRANSFER_RATES
    ))
    .bind(now)
    .bind(lease_ms)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|p| (p.id.clone(), p)).collect())
}

/// The bytes a worker of `job` moves in a round: its pseudo-gradient up
/// and the outer update down, each the size of the job's latest
/// pseudo-gradient, or (before any) of its parameters at the spec's
/// compression.
async fn round_bytes(conn: &mut AnyConnection, job: &JobRow) -> Result<f64, PoolError> {
    let last: Option<i64> = sqlx::query_scalar(
        "SELECT b.size FROM commitments c JOIN blobs b ON b.sha256 = c.pseudo_gradient_sha256 \
         WHERE c.job_id = $1 ORDER BY c.segment DESC LIMIT 1",
    )
    .bind(&job.id)
    .fetch_optional(conn)
    .await?;
    if let Some(size) = last {
        return Ok(2.0 * size as f64);
    }
    let Ok(spec) = gradpool_core::JobSpec::from_toml_str(&job.spec_toml) else {
        return Ok(0.0);
    };
    let per_parameter = match spec.parallel.map(|p| p.compression) {
        Some(gradpool_core::spec::Compression::Int8) => 1.0,
        _ => 4.0,
    };
    Ok(2.0 * per_parameter * spec.parameter_estimate().unwrap_or(0.0))
}

/// The parallel jobs whose young worker segments (queued less than half
/// a lease ago) `provider` is held back from now. Past that age a segment
/// goes to whoever comes, so a round never waits on placement longer.
pub(crate) async fn held_back(
    conn: &mut AnyConnection,
    provider: &str,
    now: i64,
    lease_ms: i64,
    money: &crate::config::MoneyConfig,
) -> Result<Vec<String>, PoolError> {
    let rounds: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT t.job_id, COUNT(*), MAX(t.end_step - t.start_step) FROM tasks t JOIN jobs j ON j.id = t.job_id \
         WHERE t.status = 'queued' AND t.kind = 'train' AND t.round IS NOT NULL AND t.updated_at > $1 \
           AND j.status IN ('queued', 'running') GROUP BY t.job_id",
    )
    .bind(now - lease_ms / 2)
    .fetch_all(&mut *conn)
    .await?;
    if rounds.is_empty() {
        return Ok(Vec::new());
    }
    let paces = paces(conn, now, lease_ms).await?;
    let mut out = Vec::new();
    for (job_id, open, steps) in rounds {
        let Some(job) = crate::store::job(conn, &job_id).await? else {
            continue;
        };
        let flops = job.flops_per_step.map(|f| f * steps as f64);
        let bytes = round_bytes(conn, &job).await?;
        let busy: std::collections::HashSet<String> = sqlx::query_scalar(
            "SELECT provider_id FROM tasks WHERE job_id = $1 AND status = 'leased' AND kind = 'train' \
             UNION SELECT provider_id FROM job_bars WHERE job_id = $1",
        )
        .bind(&job.id)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
        let others: Vec<Option<f64>> = offers(conn, &job, now, lease_ms)
            .await?
            .iter()
            .filter(|o| o.id != provider && !busy.contains(&o.id))
            .filter(|o| refusal(&job, o, money).is_none())
            .map(|o| paces.get(&o.id).and_then(|p| p.seconds(flops, bytes)))
            .collect();
        let me = paces.get(provider).and_then(|p| p.seconds(flops, bytes));
        let open = usize::try_from(open).unwrap_or(0);
        if holds_back(me, &others, open) {
            tracing::debug!(job = %job.id, provider, expected_seconds = me, open, "held back from the round");
            out.push(job.id);
        }
    }
    Ok(out)
}

/// Whether a connected validator other than `trainer` (and `besides`)
/// could take a replay of `trainer`'s work: validators never replay their
/// own work nor that of a provider sharing a payout address with them.
pub(crate) async fn validator_available(
    conn: &mut AnyConnection,
    now: i64,
    lease_ms: i64,
    trainer: &str,
    besides: Option<&str>,
) -> Result<bool, PoolError> {
    Ok(sqlx::query_scalar::<_, crate::db::Flag>(
        "SELECT EXISTS (SELECT 1 FROM providers v WHERE v.validate = 1 AND v.validator_barred = 0 \
           AND v.id != $1 AND v.id != COALESCE($2, '') AND v.last_seen >= $3 \
           AND NOT EXISTS (SELECT 1 FROM payout_splits x JOIN payout_splits y ON x.address = y.address \
                           WHERE x.provider_id = v.id AND y.provider_id = $1))",
    )
    .bind(trainer)
    .bind(besides)
    .bind(now - lease_ms)
    .fetch_one(conn)
    .await?
    .0)
}

/// How many open audits of `job_id` no connected validator could take
/// now (none is replaying them, and none eligible is connected).
pub(crate) async fn audits_waiting(
    conn: &mut AnyConnection,
    job_id: &str,
    now: i64,
    lease_ms: i64,
) -> Result<u32, PoolError> {
    let open: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT a.provider_id, \
           (SELECT r.validator_id FROM replays r WHERE r.audit_id = a.id ORDER BY r.reported_at LIMIT 1) \
         FROM audits a WHERE a.job_id = $1 AND a.status = 'open' AND a.reason != 'planted' \
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
        conn: &mut AnyConnection,
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
            "SELECT COUNT(*) FROM audits WHERE job_id = $1 AND status = 'unserved'",
        )
        .bind(&job.id)
        .fetch_one(&mut *conn)
        .await?
        .try_into()
        .unwrap_or(u32::MAX);
        view.providers = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(DISTINCT provider_id) FROM commitments WHERE job_id = $1",
        )
        .bind(&job.id)
        .fetch_one(&mut *conn)
        .await?
        .try_into()
        .unwrap_or(u32::MAX);
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(gflops: Option<f64>, rate: Option<(i64, i64)>) -> Pace {
        Pace {
            id: "prov".into(),
            gflops,
            bytes: rate.map(|r| r.0),
            ms: rate.map(|r| r.1),
        }
    }

    #[test]
    fn a_round_takes_training_plus_transfers() {
        // 20 GFLOP at 10 GFLOP/s, 4 MB at 1 MB/s.
        let p = pace(Some(10.0), Some((1_000_000, 1000)));
        assert_eq!(p.seconds(Some(20e9), 4e6), Some(6.0));
        // No transfer measured yet: training only.
        assert_eq!(pace(Some(10.0), None).seconds(Some(20e9), 4e6), Some(2.0));
        // The work is known but the speed is not: unknown.
        assert_eq!(
            pace(None, Some((1_000_000, 1000))).seconds(Some(20e9), 4e6),
            None
        );
        // An MLP's work is unknown: transfers alone, when measured.
        assert_eq!(
            pace(Some(10.0), Some((1_000_000, 1000))).seconds(None, 4e6),
            Some(4.0)
        );
        assert_eq!(pace(Some(10.0), None).seconds(None, 4e6), None);
        // A transfer faster than the clock counts one millisecond.
        assert_eq!(
            pace(Some(1.0), Some((1000, 0))).seconds(Some(0.0), 1000.0),
            Some(0.001)
        );
        // Nonsense speeds are unknown, not infinite.
        assert_eq!(pace(Some(0.0), None).seconds(Some(1e9), 0.0), None);
        assert_eq!(pace(Some(f64::NAN), None).seconds(Some(1e9), 0.0), None);
    }

    #[test]
    fn held_back_only_when_enough_much_faster_providers_are_free() {
        let f = Some(1.0);
        // Two slots, two providers over twice as fast.
        assert!(holds_back(Some(2.5), &[f, f], 2));
        // Only one of them: the round needs this one.
        assert!(!holds_back(Some(2.5), &[f], 2));
        // Not more than twice as slow: it would not hold the round back.
        assert!(!holds_back(Some(2.0), &[f, f], 2));
        // Unknown speeds neither hold back nor count as faster.
        assert!(!holds_back(None, &[f, f], 1));
        assert!(!holds_back(Some(9.0), &[None, None], 1));
        // Nothing open, nothing to hold back from.
        assert!(!holds_back(Some(9.0), &[f], 0));
    }
}
