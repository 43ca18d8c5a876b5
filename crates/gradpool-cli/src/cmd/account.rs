//! `gradpool account …`.

use crate::credentials::{self, Credentials, CustomerArgs};
use clap::Subcommand;
use gradpool_core::{wire, Piconero};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum AccountCommand {
    /// Create an account on a pool and save its API key.
    Create {
        /// A name for the account.
        #[arg(long, default_value = "customer")]
        name: String,
        /// Print the key but do not save it.
        #[arg(long)]
        no_save: bool,
        /// Replace saved credentials (the old key is lost: the pool keeps
        /// only its hash).
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        customer: CustomerArgs,
    },
    /// Show the account the saved key belongs to.
    Show {
        #[command(flatten)]
        customer: CustomerArgs,
    },
    /// Show the account's money: available, held in escrow, withdrawing.
    Balance {
        /// Print JSON (amounts in piconero).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        customer: CustomerArgs,
    },
    /// Print the Monero address that funds this account (a subaddress of the
    /// pool's wallet, this account's alone).
    Deposit {
        #[command(flatten)]
        customer: CustomerArgs,
    },
    /// Credit free money on a dev pool (no Monero behind it).
    Faucet {
        /// XMR, e.g. 1.5.
        #[arg(long)]
        amount: Piconero,
        #[command(flatten)]
        customer: CustomerArgs,
    },
    /// Send money from the balance to a Monero address.
    Withdraw {
        /// The Monero address to pay.
        #[arg(long)]
        to: String,
        /// XMR, e.g. 0.25.
        #[arg(long)]
        amount: Piconero,
        /// Retrying with the same key withdraws once (default: a new key).
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        customer: CustomerArgs,
    },
}

fn print_balance(b: &wire::Balance) {
    println!("account      {}", b.account_id);
    println!("available    {}", b.available);
    println!("in escrow    {}", b.escrowed);
    println!("withdrawing  {}", b.withdrawing);
    println!("backend      {}", b.backend);
}

pub async fn run(c: AccountCommand) -> anyhow::Result<ExitCode> {
    match c {
        AccountCommand::Create {
            name,
            no_save,
            replace,
            customer,
        } => {
            let pool = customer.pool_url()?;
            let saved = credentials::load()?;
            if let (Some(old), false, false) = (&saved, no_save, replace) {
                anyhow::bail!(
                    "{} already holds the key of account {} on {}: pass --replace to overwrite it, or --no-save",
                    credentials::path().display(),
                    old.account_id,
                    old.pool
                );
            }
            let api = crate::pool_trust::api(&pool, None)?;
            let created: wire::AccountCreated = api
                .post("/v1/accounts", &wire::CreateAccount { name })
                .await?;
            println!("account   {}", created.account_id);
            println!("api key   {}", created.api_key);
            if !no_save {
                let path = credentials::save(&Credentials {
                    pool,
                    account_id: created.account_id.to_string(),
                    api_key: created.api_key,
                })?;
                println!(
                    "saved to  {} (the pool keeps only its hash)",
                    path.display()
                );
            }
        }
        AccountCommand::Show { customer } => {
            let view: wire::AccountView = customer.api()?.get("/v1/account").await?;
            println!(
                "account   {}\nname      {}\ncreated   {}",
                view.id, view.name, view.created_at
            );
        }
        AccountCommand::Balance { json, customer } => {
            let b: wire::Balance = customer.api()?.get("/v1/account/balance").await?;
            if json {
                println!("{}", serde_json::to_string(&b)?);
            } else {
                print_balance(&b);
            }
        }
        AccountCommand::Deposit { customer } => {
            let d: wire::DepositAddress = customer
                .api()?
                .post("/v1/account/deposit", &serde_json::json!({}))
                .await?;
            println!("{}", d.address);
            eprintln!(
                "send XMR to this address; it is credited after {} confirmations",
                d.confirmations
            );
        }
        AccountCommand::Faucet { amount, customer } => {
            let b: wire::Balance = customer
                .api()?
                .post("/v1/account/faucet", &wire::Faucet { amount })
                .await?;
            println!("credited     {amount}");
            print_balance(&b);
        }
        AccountCommand::Withdraw {
            to,
            amount,
            idempotency_key,
            customer,
        } => {
            let key = idempotency_key.unwrap_or_else(|| gradpool_core::id::random_hex(16));
            let p: wire::PayoutView = customer
                .api()?
                .post(
                    "/v1/account/withdraw",
                    &wire::Withdraw {
                        to,
                        amount,
                        idempotency_key: key,
                    },
                )
                .await?;
            println!("withdrawal  {}", p.id);
            println!("amount      {}", p.amount);
            println!("to          {}", p.address);
            println!("status      {}", p.status);
            if let Some(txid) = &p.txid {
                println!("txid        {txid}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
