//! `gradpool`: one binary for every role.
//!
//! - `gradpool pool` runs a pool; `gradpool provider` runs the agent on a rig;
//! - `gradpool account …` and `gradpool job …` are the customer's commands;
//! - `gradpool train`, `gradpool sample` and `gradpool bench` run the native
//!   runtime locally; `gradpool segment run` is what a provider runs in a
//!   child process for each segment;
//! - `gradpool devnet` starts a whole pool with providers on this machine and
//!   trains a model end to end.

mod cmd;
mod credentials;
mod devnet;
mod watch;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "gradpool",
    version,
    about = "A training cloud made of GPU rigs, paid in Monero"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pool: the coordinator providers and customers connect to.
    Pool(cmd::pool::PoolArgs),
    /// Run the provider agent on this machine.
    Provider(cmd::provider::ProviderArgs),
    /// Customer accounts.
    #[command(subcommand)]
    Account(cmd::account::AccountCommand),
    /// Submit, follow and fetch training jobs.
    #[command(subcommand)]
    Job(cmd::job::JobCommand),
    /// Train a job spec locally, without a pool.
    Train(cmd::local::TrainArgs),
    /// Generate text with a trained model.
    Sample(cmd::local::SampleArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(cmd::local::BenchCommand),
    /// Segments: the unit of work a provider trains.
    #[command(subcommand, hide = true)]
    Segment(cmd::local::SegmentCommand),
    /// Start a pool and providers on this machine and train a GPT on
    /// Shakespeare, end to end.
    Devnet(devnet::DevnetArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The segment process talks JSON on stdout; keep its logs on stderr and quiet.
    let default_filter = match cli.command {
        Command::Segment(_) | Command::Sample(_) | Command::Bench(_) => "warn",
        Command::Devnet(_) | Command::Job(_) | Command::Account(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();

    let result = match cli.command {
        // Commands that train set their thread count before any thread pool starts.
        Command::Segment(c) => cmd::local::segment(c),
        Command::Train(a) => cmd::local::train(a),
        Command::Sample(a) => cmd::local::sample(a),
        Command::Bench(c) => cmd::local::bench(c),
        other => runtime().and_then(|rt| rt.block_on(run_async(other))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn run_async(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Pool(a) => cmd::pool::run(a).await,
        Command::Provider(a) => cmd::provider::run(a).await,
        Command::Account(c) => cmd::account::run(c).await,
        Command::Job(c) => cmd::job::run(c).await,
        Command::Devnet(a) => devnet::run(a).await,
        Command::Segment(_) | Command::Train(_) | Command::Sample(_) | Command::Bench(_) => {
            unreachable!("handled before the runtime starts")
        }
    }
}
