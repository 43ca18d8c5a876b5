//! `gradpool account …`.

use crate::credentials::{self, Credentials, CustomerArgs};
use clap::Subcommand;
use gradpool_core::wire;
use gradpool_provider::client::Api;
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
            let api = Api::new(&pool, None);
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
    }
    Ok(ExitCode::SUCCESS)
}
