//! Bookings: a customer reserves providers for a future window.
//!
//! `POST /v1/bookings` picks the `gpus` best providers that train, are
//! connected and not held, score at least `min_score` (their proven
//! GFLOP/s), and have no other booking overlapping the window; it holds
//! their price for the whole window in the booking's escrow, refused when the
//! balance is short. Until the window opens the providers are `reserved`
//! and keep taking other work; inside it they take only the booker's jobs
//! (its segments are billed from each job's budget, as always). When the
//! window ends, or the booking is cancelled, the hold returns to the
//! customer: reserved time nobody trained in is not charged.
//!
//! A job submitted into a booking (`SubmitJob.booking`) trains only on the
//! booking's providers, inside its window; when the booking closes before
//! the job ends, the job goes on outside it, on any provider.

use crate::error::PoolError;
use crate::ledger::{self, AccountKind};
use crate::store::rfc3339;
use crate::Pool;
use gradpool_core::state::{BookingStatus, ProviderChange};
use gradpool_core::wire::{Book, BookingView};
use gradpool_core::{AccountId, Piconero, ProviderId};
use sqlx::AnyConnection;

/// The most GPUs one booking reserves.
const MAX_GPUS: u32 = 64;
/// The longest window, in hours.
const MAX_HOURS: i64 = 31 * 24;
/// How far ahead a window may start, in days.
const MAX_AHEAD_DAYS: i64 = 90;
const HOUR_MS: i64 = 3_600_000;

fn parse_time(field: &str, s: &str) -> Result<i64, PoolError> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            PoolError::BadRequest(format!(
                "{field}: {s:?} is not an RFC 3339 time (2026-12-24T18:00:00Z): {e}"
            ))
        })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| PoolError::BadRequest(format!("{field}: out of range")))
}

/// The price of `per_hour` for `ms` milliseconds, rounded up to a piconero.
fn window_price(per_hour: u64, ms: i64) -> Result<u64, PoolError> {
    let ms = u128::try_from(ms).unwrap_or(0);
    let p = (u128::from(per_hour) * ms).div_ceil(HOUR_MS as u128);
    u64::try_from(p).map_err(|_| PoolError::BadRequest("the booking's price overflows".into()))
}

#[derive(sqlx::FromRow)]
struct BookingRow {
    id: String,
    account_id: String,
    gpus: i64,
    starts_at: i64,
    ends_at: i64,
    min_score: Option<f64>,
    held: i64,
    #[sqlx(try_from = "String")]
    status: BookingStatus,
    created_at: i64,
}

async fn view(conn: &mut AnyConnection, r: BookingRow, now: i64) -> Result<BookingView, PoolError> {
    let providers: Vec<(String, i64)> = sqlx::query_as(
        "SELECT provider_id, price_per_hour FROM booking_providers WHERE booking_id = $1 ORDER BY rowid",
    )
    .bind(&r.id)
    .fetch_all(&mut *conn)
    .await?;
    let status = match r.status {
        BookingStatus::Reserved if now >= r.ends_at => BookingStatus::Ended,
        BookingStatus::Reserved if now >= r.starts_at => BookingStatus::Active,
        s => s,
    };
    Ok(BookingView {
        id: r.id,
        status,
        gpus: u32::try_from(r.gpus).unwrap_or(0),
        from: rfc3339(r.starts_at),
        until: rfc3339(r.ends_at),
        min_score: r.min_score,
        price_per_hour: Piconero(
            providers
                .iter()
                .map(|(_, p)| u64::try_from(*p).unwrap_or(0))
                .sum(),
        ),
        held: Piconero(u64::try_from(r.held).unwrap_or(0)),
        providers: providers
            .into_iter()
            .map(|(p, _)| ProviderId::from(p.as_str()))
            .collect(),
        created_at: rfc3339(r.created_at),
    })
}

const COLUMNS: &str =
    "id, account_id, gpus, starts_at, ends_at, min_score, held, status, created_at";

async fn row_of(conn: &mut AnyConnection, id: &str) -> Result<Option<BookingRow>, PoolError> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM bookings WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

/// The booking `id` as it stands now.
async fn view_of(conn: &mut AnyConnection, id: &str, now: i64) -> Result<BookingView, PoolError> {
    let row = row_of(conn, id)
        .await?
        .ok_or_else(|| PoolError::Internal(format!("booking {id} vanished")))?;
    view(conn, row, now).await
}

impl Pool {
    /// Reserves providers for a window and holds its price.
    pub async fn book(&self, account: &AccountId, req: Book) -> Result<BookingView, PoolError> {
        if !(1..=MAX_GPUS).contains(&req.gpus) {
            return Err(PoolError::BadRequest(format!(
                "gpus: {} is not from 1 to {MAX_GPUS}",
                req.gpus
            )));
        }
        let from = parse_time("from", &req.from)?;
        let until = parse_time("until", &req.until)?;
        let now = self.now();
        if from < now - 60_000 {
            return Err(PoolError::BadRequest(format!(
                "from: {} is in the past",
                req.from
            )));
        }
        if from > now + MAX_AHEAD_DAYS * 24 * HOUR_MS {
            return Err(PoolError::BadRequest(format!(
                "from: at most {MAX_AHEAD_DAYS} days ahead"
            )));
        }
        if until <= from {
            return Err(PoolError::BadRequest("until: must be after from".into()));
        }
        if until - from > MAX_HOURS * HOUR_MS {
            return Err(PoolError::BadRequest(format!(
                "until: a window lasts at most {MAX_HOURS} hours"
            )));
        }
        if let Some(s) = req.min_score {
            if !s.is_finite() || s < 0.0 {
                return Err(PoolError::BadRequest(format!(
                    "min_score: {s} is not a score in GFLOP/s"
                )));
            }
        }
        let lease_ms = i64::from(self.inner.config.lease_seconds) * 1000;
        let mut w = self.write().await?;
        // The best free providers: highest proven score, then cheapest.
        let candidates: Vec<(String, i64)> = sqlx::query_as(
            "SELECT p.id, p.price_per_hour FROM providers p \
             WHERE p.trains = 1 AND p.held IS NULL AND p.duplicate_of IS NULL \
               AND p.last_seen >= $1 AND COALESCE(p.proven_gflops, p.benchmark_gflops, 0) >= $2 \
               AND NOT EXISTS (SELECT 1 FROM booking_providers bp JOIN bookings b ON b.id = bp.booking_id \
                               WHERE bp.provider_id = p.id AND b.status = 'reserved' \
                                 AND b.starts_at < $4 AND b.ends_at > $3) \
             ORDER BY COALESCE(p.proven_gflops, p.benchmark_gflops, 0) DESC, p.price_per_hour, p.id \
             LIMIT $5",
        )
        .bind(w.now - lease_ms)
        .bind(req.min_score.unwrap_or(0.0))
        .bind(from)
        .bind(until)
        .bind(i64::from(req.gpus))
        .fetch_all(w.conn())
        .await?;
        if candidates.len() < req.gpus as usize {
            return Err(PoolError::Conflict(format!(
                "gpus: {} asked, but only {} connected provider(s){} are free for that window",
                req.gpus,
                candidates.len(),
                req.min_score
                    .map(|s| format!(" scoring at least {s} GFLOP/s"))
                    .unwrap_or_default()
            )));
        }
        let mut held = 0u64;
        for (_, price) in &candidates {
            held = held
                .checked_add(window_price(
                    u64::try_from(*price).unwrap_or(0),
                    until - from,
                )?)
                .ok_or_else(|| PoolError::BadRequest("the booking's price overflows".into()))?;
        }
        let id = format!("bk_{}", gradpool_core::id::random_hex(8));
        let customer = w.account(AccountKind::Customer, account.as_str()).await?;
        let escrow = w.account(AccountKind::Escrow, &id).await?;
        if held > 0 {
            let balance = ledger::balance_of(w.conn(), &customer).await?;
            if u64::try_from(balance).unwrap_or(0) < held {
                return Err(PoolError::InsufficientFunds(format!(
                    "the booking's price is {} but the account's balance is {}; {}, book \
                     fewer GPUs or a shorter window",
                    Piconero(held),
                    Piconero(u64::try_from(balance).unwrap_or(0)),
                    self.fund_hint()
                )));
            }
            w.transfer(
                &customer,
                &escrow,
                Piconero(held),
                &format!("booking:{id}:hold"),
                &format!("booking {id} held in escrow"),
            )
            .await?;
        }
        let now = w.now;
        sqlx::query(
            "INSERT INTO bookings (id, account_id, gpus, starts_at, ends_at, min_score, held, status, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'reserved', $8)",
        )
        .bind(&id)
        .bind(account.as_str())
        .bind(i64::from(req.gpus))
        .bind(from)
        .bind(until)
        .bind(req.min_score)
        .bind(i64::try_from(held).unwrap_or(i64::MAX))
        .bind(now)
        .execute(w.conn())
        .await?;
        for (provider, price) in &candidates {
            sqlx::query(
                "INSERT INTO booking_providers (booking_id, provider_id, price_per_hour) VALUES ($1, $2, $3)",
            )
            .bind(&id)
            .bind(provider)
            .bind(price)
            .execute(w.conn())
            .await?;
            crate::presence::record_status(
                &mut w,
                provider,
                ProviderChange::Reserved,
                Some(&format!("booking {id} from {}", rfc3339(from))),
            )
            .await?;
        }
        let now = w.now;
        let v = view_of(w.conn(), &id, now).await?;
        w.commit().await?;
        tracing::info!(booking = %id, account = %account, gpus = req.gpus, held = %Piconero(held), "booking made");
        Ok(v)
    }

    /// A customer's bookings, newest first.
    pub async fn bookings(&self, account: &AccountId) -> Result<Vec<BookingView>, PoolError> {
        let mut conn = self.inner.db.acquire().await?;
        let rows: Vec<BookingRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM bookings WHERE account_id = $1 ORDER BY created_at DESC, rowid DESC"
        ))
        .bind(account.as_str())
        .fetch_all(&mut *conn)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(view(&mut conn, r, self.now()).await?);
        }
        Ok(out)
    }

    /// Cancels a booking that has not ended; its hold returns.
    pub async fn cancel_booking(
        &self,
        account: &AccountId,
        id: &str,
    ) -> Result<BookingView, PoolError> {
        let mut w = self.write().await?;
        let row = row_of(w.conn(), id)
            .await?
            .filter(|r| r.account_id == account.as_str())
            .ok_or_else(|| PoolError::NotFound(format!("booking {id} not found")))?;
        if row.status != BookingStatus::Reserved || w.now >= row.ends_at {
            return Err(PoolError::Conflict(format!(
                "booking {id} has already ended"
            )));
        }
        close(&mut w, &row, BookingStatus::Cancelled).await?;
        let now = w.now;
        let v = view_of(w.conn(), id, now).await?;
        w.commit().await?;
        Ok(v)
    }

    /// Ends every booking whose window has passed: its hold returns to the
    /// customer. Run by the reaper. Returns how many ended.
    pub async fn end_bookings(&self) -> Result<usize, PoolError> {
        let mut w = self.write().await?;
        let due: Vec<BookingRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM bookings WHERE status = 'reserved' AND ends_at <= $1"
        ))
        .bind(w.now)
        .fetch_all(w.conn())
        .await?;
        for row in &due {
            close(&mut w, row, BookingStatus::Ended).await?;
        }
        w.commit().await?;
        Ok(due.len())
    }
}

/// Returns a booking's hold to its customer and sets its final status.
async fn close(
    w: &mut crate::tx::Write<'_>,
    row: &BookingRow,
    status: BookingStatus,
) -> Result<(), PoolError> {
    let escrow = w.account(AccountKind::Escrow, &row.id).await?;
    let customer = w.account(AccountKind::Customer, &row.account_id).await?;
    let left = ledger::balance_of(w.conn(), &escrow).await?;
    if left > 0 {
        w.transfer(
            &escrow,
            &customer,
            Piconero(u64::try_from(left).unwrap_or(0)),
            &format!("booking:{}:release", row.id),
            &format!("booking {} {status}: its hold returned", row.id),
        )
        .await?;
    }
    sqlx::query("UPDATE bookings SET status = $1 WHERE id = $2")
        .bind(status.as_str())
        .bind(&row.id)
        .execute(w.conn())
        .await?;
    let providers: Vec<String> =
        sqlx::query_scalar("SELECT provider_id FROM booking_providers WHERE booking_id = $1")
            .bind(&row.id)
            .fetch_all(w.conn())
            .await?;
    for p in providers {
        crate::presence::record_status(
            w,
            &p,
            ProviderChange::Unreserved,
            Some(&format!("booking {} {status}", row.id)),
        )
        .await?;
    }
    // Its unfinished jobs go on outside it, on any provider.
    let released = sqlx::query(
        "UPDATE jobs SET booking_id = NULL WHERE booking_id = $1 AND status IN ('queued', 'running')",
    )
    .bind(&row.id)
    .execute(w.conn())
    .await?
    .rows_affected();
    if released > 0 {
        w.wake_providers();
    }
    tracing::info!(booking = %row.id, status = %status, jobs_released = released, "booking closed");
    Ok(())
}
