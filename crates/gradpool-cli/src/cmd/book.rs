//! `gradpool book`: reserve providers for a future window, list bookings,
//! cancel one.

use crate::credentials::CustomerArgs;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use gradpool_core::state::BookingStatus;
use gradpool_core::wire::{Book, BookingView};
use std::process::ExitCode;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BookArgs {
    #[command(subcommand)]
    command: Option<BookCommand>,
    /// How many GPUs (providers) to reserve.
    #[arg(long)]
    gpus: Option<u32>,
    /// When the window opens: now, a time from now (+30m, +2h, +1d) or an
    /// RFC 3339 time (2026-12-24T18:00:00Z).
    #[arg(long)]
    from: Option<String>,
    /// How long it lasts, in hours (0.5 for half an hour).
    #[arg(long)]
    hours: Option<f64>,
    /// The least performance score (proven GFLOP/s) a provider needs.
    #[arg(long)]
    min_score: Option<f64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    customer: CustomerArgs,
}

#[derive(Subcommand)]
pub enum BookCommand {
    /// Your bookings, newest first.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        customer: CustomerArgs,
    },
    /// Cancel a booking before its window ends; its hold returns.
    Cancel {
        /// The booking's id (`bk_…`, as `book` and `book list` print it).
        id: String,
        #[command(flatten)]
        customer: CustomerArgs,
    },
}

/// `now`, an RFC 3339 time, or `+N{m,h,d}` from now.
fn parse_from(s: &str) -> anyhow::Result<time::OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    if s.eq_ignore_ascii_case("now") {
        return Ok(time::OffsetDateTime::now_utc());
    }
    if let Some(rel) = s.strip_prefix('+') {
        let (n, unit) = rel.split_at(rel.len().saturating_sub(1));
        let n: i64 = n
            .parse()
            .with_context(|| format!("--from {s}: a number before the unit (+30m, +2h, +1d)"))?;
        let d = match unit {
            "m" => time::Duration::minutes(n),
            "h" => time::Duration::hours(n),
            "d" => time::Duration::days(n),
            _ => bail!("--from {s}: the unit is m, h or d (+30m, +2h, +1d)"),
        };
        return Ok(time::OffsetDateTime::now_utc() + d);
    }
    time::OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
        anyhow::anyhow!(
            "--from {s}: give now, a time from now (+30m, +2h, +1d) or an RFC 3339 time (2026-12-24T18:00:00Z)"
        )
    })
}

fn print(b: &BookingView) {
    println!("booking    {}", b.id);
    println!("status     {}", b.status);
    println!("window     {} to {}", b.from, b.until);
    println!("gpus       {}", b.gpus);
    for p in &b.providers {
        println!("  provider {p}");
    }
    println!("price      {}/hour together", b.price_per_hour);
    match b.status {
        BookingStatus::Cancelled => println!("returned   {} to your balance", b.held),
        BookingStatus::Ended => {
            println!("returned   {} to your balance (the window is over)", b.held)
        }
        BookingStatus::Reserved | BookingStatus::Active => {
            println!(
                "held       {} from your balance, in escrow (returned when the window ends or you cancel)",
                b.held
            );
            println!("train in it: gradpool job submit SPEC --booking {}", b.id);
        }
    }
}

pub async fn run(a: BookArgs) -> anyhow::Result<ExitCode> {
    use time::format_description::well_known::Rfc3339;
    match a.command {
        Some(BookCommand::List { json, customer }) => {
            let list: Vec<BookingView> = customer.api()?.get("/v1/bookings").await?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else if list.is_empty() {
                println!("no bookings");
            } else {
                for b in &list {
                    println!(
                        "{}  {:<9} {} GPU(s)  {} to {}  held {}",
                        b.id, b.status, b.gpus, b.from, b.until, b.held
                    );
                }
            }
        }
        Some(BookCommand::Cancel { id, customer }) => {
            let b: BookingView = customer
                .api()?
                .post(&format!("/v1/bookings/{id}/cancel"), &())
                .await?;
            print(&b);
        }
        None => {
            let (Some(gpus), Some(from), Some(hours)) = (a.gpus, &a.from, a.hours) else {
                bail!(
                    "gradpool book needs --gpus N --from TIME --hours H (or: gradpool book list)"
                );
            };
            if !(hours.is_finite() && hours > 0.0) {
                bail!("--hours {hours}: a positive number of hours");
            }
            let start = parse_from(from)?;
            let end = start + time::Duration::seconds_f64(hours * 3600.0);
            let b: BookingView = a
                .customer
                .api()?
                .post(
                    "/v1/bookings",
                    &Book {
                        gpus,
                        from: start.format(&Rfc3339)?,
                        until: end.format(&Rfc3339)?,
                        min_score: a.min_score,
                    },
                )
                .await?;
            if a.json {
                println!("{}", serde_json::to_string(&b)?);
            } else {
                print(&b);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
