//! `gradpool`: see the `gradpool_cli` library for the commands.

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
    #[command(flatten)]
    trust: gradpool_cli::pool_trust::PoolTrustArgs,
    /// How logs are written to stderr: `text` for people, `json` (one
    /// object a line) for a log collector.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pool: the coordinator providers and customers connect to.
    Pool(Box<gradpool_cli::cmd::pool::PoolArgs>),
    /// Run the provider agent on this machine.
    Provider(Box<gradpool_cli::cmd::provider::ProviderArgs>),
    /// Customer accounts.
    #[command(subcommand)]
    Account(gradpool_cli::cmd::account::AccountCommand),
    /// Submit, follow and fetch training jobs.
    #[command(subcommand)]
    Job(gradpool_cli::cmd::job::JobCommand),
    /// Reserve providers for a future window (`book --gpus N --from T
    /// --hours H`), list or cancel bookings.
    Book(gradpool_cli::cmd::book::BookArgs),
    /// Train a job spec locally, without a pool.
    Train(gradpool_cli::cmd::local::TrainArgs),
    /// Generate text with a trained model.
    Sample(gradpool_cli::cmd::local::SampleArgs),
    /// Print a trained model's logits on a text (GPT) or feature rows (MLP),
    /// as JSON.
    Logits(gradpool_cli::cmd::local::LogitsArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(gradpool_cli::cmd::local::BenchCommand),
    /// Segments: the unit of work a provider trains.
    #[command(subcommand, hide = true)]
    Segment(gradpool_cli::cmd::local::SegmentCommand),
    /// Checkpoints: compare a replay with a claimed checkpoint.
    #[command(subcommand)]
    Checkpoint(gradpool_cli::cmd::local::CheckpointCommand),
    /// Start a pool and providers on this machine and train a GPT on
    /// Shakespeare, end to end.
    Devnet(gradpool_cli::devnet::DevnetArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    gradpool_cli::pool_trust::set(cli.trust.clone());
    if matches!(
        cli.command,
        Command::Segment(_)
            | Command::Train(_)
            | Command::Sample(_)
            | Command::Logits(_)
            | Command::Bench(_)
            | Command::Provider(_)
            | Command::Devnet(_)
    ) {
        // Still single-threaded here, as the runtime settings require. The
        // agent asks CUDA about its GPU in the same order as NVML.
        gradpool_train::runtime::configure_process();
    }
    if matches!(
        cli.command,
        Command::Pool(_) | Command::Provider(_) | Command::Devnet(_) | Command::Bench(_)
    ) {
        raise_open_files();
    }
    // The segment process talks JSON on stdout; keep its logs on stderr and quiet.
    let default_filter = match cli.command {
        // Cheaters being caught are the point of the run, not warnings.
        Command::Bench(gradpool_cli::cmd::local::BenchCommand::Verify(_)) => "error",
        Command::Segment(_)
        | Command::Sample(_)
        | Command::Logits(_)
        | Command::Bench(_)
        | Command::Checkpoint(_) => "warn",
        Command::Devnet(_) | Command::Job(_) | Command::Account(_) | Command::Book(_) => "warn",
        _ => "info",
    };
    if !matches!(
        cli.command,
        Command::Pool(_) | Command::Provider(_) | Command::Devnet(_)
    ) {
        // A report piped into `head` ends quietly when the reader goes, as
        // other command-line tools do, instead of panicking on a broken
        // pipe. The long-running servers keep ignoring SIGPIPE.
        #[cfg(unix)]
        // SAFETY: still single-threaded; the default disposition is a
        // valid handler.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    // Colour only where a person reads it: logs sent to a file stay plain.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(ansi).init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }

    let result = match cli.command {
        // Commands that train set their thread count before any thread pool starts.
        Command::Segment(c) => gradpool_cli::cmd::local::segment(c),
        Command::Train(a) => gradpool_cli::cmd::local::train(a),
        Command::Sample(a) => gradpool_cli::cmd::local::sample(a),
        Command::Logits(a) => gradpool_cli::cmd::local::logits(a),
        Command::Bench(c) => gradpool_cli::cmd::local::bench(c),
        Command::Checkpoint(c) => gradpool_cli::cmd::local::checkpoint(c),
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

/// A pool holds a socket for every connected provider (and `bench pool`
/// one for every simulated one): the soft limit on open files, often 1024,
/// is raised to the hard limit the system allows.
fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                eprintln!("warning: cannot raise the open-files limit from {soft}: {e}");
            }
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
        Command::Pool(a) => gradpool_cli::cmd::pool::run(*a).await,
        Command::Provider(a) => gradpool_cli::cmd::provider::run(*a).await,
        Command::Account(c) => gradpool_cli::cmd::account::run(c).await,
        Command::Job(c) => gradpool_cli::cmd::job::run(c).await,
        Command::Book(a) => gradpool_cli::cmd::book::run(a).await,
        Command::Devnet(a) => gradpool_cli::devnet::run(a).await,
        Command::Segment(_)
        | Command::Train(_)
        | Command::Sample(_)
        | Command::Logits(_)
        | Command::Bench(_)
        | Command::Checkpoint(_) => {
            unreachable!("handled before the runtime starts")
        }
    }
}
