//! `gradpool provider`: run the agent, or see and move its money.

use anyhow::Context;
use clap::{Args, Subcommand};
use gradpool_core::commitment::node_proof_message;
use gradpool_core::wire::{self, PayoutSplit};
use gradpool_core::{NodeKey, Piconero};
use gradpool_monero::address::{Address, Network};
use gradpool_provider::client::Api;
use gradpool_provider::{CpuDevice, Device, ProviderConfig};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProviderArgs {
    #[command(subcommand)]
    command: Option<ProviderCommand>,
    /// The pool to work for.
    #[arg(long, env = "GRADPOOL_POOL", default_value = "http://127.0.0.1:7070")]
    pool: String,
    /// Node key, cache and tasks in flight.
    #[arg(long, default_value = "gradpool-provider")]
    data_dir: PathBuf,
    /// Name shown in the pool (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// CPU threads training may use (default: all).
    #[arg(long)]
    threads: Option<u32>,
    /// Segments trained at once.
    #[arg(long, default_value_t = 1)]
    max_concurrent_tasks: u32,
    /// The least this rig takes, in XMR per GPU-hour (per CPU-hour on a
    /// CPU). Jobs whose maximum price is lower are not offered to it.
    #[arg(long, default_value = "0.01")]
    price_xmr_per_hour: Piconero,
    /// A Monero address to pay, with its share after `=` (default 1):
    /// `--payout ADDR_OWNER=70 --payout ADDR_INVESTOR=30`. Repeatable.
    #[arg(long = "payout", value_name = "ADDRESS[=SHARE]")]
    payout: Vec<String>,
    /// The Monero network the pool pays on (regtest pools use mainnet
    /// addresses).
    #[arg(long, value_enum, default_value = "mainnet")]
    network: NetworkArg,
    /// Also take replay tasks: re-execute other providers' segments for the
    /// pool's audits, paid at this rig's rate.
    #[arg(long)]
    validate: bool,
    /// Only replay: a dedicated validator that takes no training work.
    #[arg(long)]
    validate_only: bool,
    /// Fake a share of the segments this provider trains: skip-steps,
    /// random-weights, perturb-weights, old-checkpoint, other-data or
    /// lower-lr (only in builds with the `cheat` feature, for testing
    /// audits).
    #[cfg(feature = "cheat")]
    #[arg(long, value_name = "KIND")]
    cheat: Option<gradpool_train::cheat::CheatKind>,
    /// The share of segments `--cheat` fakes, from 0 to 1.
    #[cfg(feature = "cheat")]
    #[arg(long, default_value_t = 1.0, value_name = "SHARE")]
    cheat_fraction: f64,
    /// Answer replay tasks with the trainer's claim without computing.
    #[cfg(feature = "cheat")]
    #[arg(long)]
    lazy_validator: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum NetworkArg {
    Mainnet,
    Stagenet,
    Testnet,
}

impl From<NetworkArg> for Network {
    fn from(n: NetworkArg) -> Network {
        match n {
            NetworkArg::Mainnet => Network::Mainnet,
            NetworkArg::Stagenet => Network::Stagenet,
            NetworkArg::Testnet => Network::Testnet,
        }
    }
}

#[derive(Subcommand)]
pub enum ProviderCommand {
    /// Show this provider's earnings (pending, available, paid), stake and
    /// payouts.
    Earnings(NodeArgs),
    /// Stake earnings (required for large jobs), or ask for the stake back.
    #[command(subcommand)]
    Stake(StakeCommand),
}

#[derive(Subcommand)]
pub enum StakeCommand {
    /// Move available earnings into the stake.
    Add {
        /// XMR, e.g. 0.1.
        #[arg(long)]
        amount: Piconero,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Start the cool-down after which the whole stake becomes available.
    Withdraw(NodeArgs),
}

#[derive(Args)]
pub struct NodeArgs {
    /// The pool.
    #[arg(long, env = "GRADPOOL_POOL", default_value = "http://127.0.0.1:7070")]
    pool: String,
    /// The provider's data directory (holding its node key).
    #[arg(long, default_value = "gradpool-provider")]
    data_dir: PathBuf,
    /// Print JSON (amounts in piconero).
    #[arg(long)]
    json: bool,
}

/// Parses `--payout ADDRESS[=SHARE]` values, checking every address for
/// `network` now rather than when a payout fails.
pub fn parse_payout(values: &[String], network: Network) -> anyhow::Result<Vec<PayoutSplit>> {
    let mut out = Vec::new();
    for v in values {
        let (address, share) = match v.split_once('=') {
            Some((a, s)) => {
                let share: u32 = s.trim().parse().ok().filter(|s| *s > 0).with_context(|| {
                    format!("--payout {v}: the share after '=' must be a whole number from 1")
                })?;
                (a.trim(), share)
            }
            None => (v.trim(), 1),
        };
        Address::parse(address)
            .and_then(|a| a.expect_network(network))
            .with_context(|| format!("--payout {address}"))?;
        out.push(PayoutSplit {
            address: address.to_owned(),
            share,
        });
    }
    Ok(out)
}

/// Measures the device's matrix-multiplication speed in a child process
/// (the same way segments run). `None`, with a warning, if it fails.
async fn benchmark(program: &Path, device: &dyn Device) -> Option<f64> {
    let out = tokio::process::Command::new(program)
        .args(["bench", "matmul", "--json"])
        .args(device.segment_args())
        .output()
        .await;
    let report = out.ok().filter(|o| o.status.success()).and_then(|o| {
        serde_json::from_slice::<gradpool_train::bench::MatmulReport>(&o.stdout).ok()
    });
    match report {
        Some(r) => {
            tracing::info!(gflops = r.gflops, "matmul benchmark");
            Some(r.gflops)
        }
        None => {
            tracing::warn!("the matmul benchmark failed; registering without it");
            None
        }
    }
}

pub async fn run(a: ProviderArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        Some(ProviderCommand::Earnings(node)) => earnings(&node).await,
        Some(ProviderCommand::Stake(StakeCommand::Add { amount, node })) => {
            stake(&node, wire::StakeAction::Add { amount }).await
        }
        Some(ProviderCommand::Stake(StakeCommand::Withdraw(node))) => {
            stake(&node, wire::StakeAction::Withdraw).await
        }
        None => agent(a).await,
    }
}

async fn agent(a: ProviderArgs) -> anyhow::Result<ExitCode> {
    let payout = parse_payout(&a.payout, a.network.into())?;
    if payout.is_empty() {
        eprintln!(
            "note: no --payout address: earnings accumulate at the pool until one is set \
             (restart with --payout ADDRESS)"
        );
    }
    let name = a.name.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "provider".to_owned())
    });
    let program = std::env::current_exe()?;
    let device = Arc::new(CpuDevice::new(a.threads));
    let benchmark_gflops = benchmark(&program, device.as_ref()).await;
    let config = ProviderConfig {
        pool_url: a.pool,
        data_dir: a.data_dir,
        name,
        program,
        max_concurrent_tasks: a.max_concurrent_tasks.max(1),
        price_per_hour: a.price_xmr_per_hour,
        payout,
        benchmark_gflops,
        validate: a.validate || a.validate_only,
        train: !a.validate_only,
        #[cfg(feature = "cheat")]
        cheat: gradpool_provider::cheat::Cheat {
            kind: a.cheat.map(|k| k.name().to_owned()),
            fraction: a.cheat_fraction.clamp(0.0, 1.0),
            lazy_validator: a.lazy_validator,
        },
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        super::interrupted().await;
        stop.cancel();
    });
    gradpool_provider::run(config, device, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Signs a fresh pool nonce for `purpose` with the node key in `data_dir`.
async fn node_proof(api: &Api, data_dir: &Path, purpose: &str) -> anyhow::Result<wire::NodeProof> {
    let path = data_dir.join("node.key");
    anyhow::ensure!(
        path.is_file(),
        "no node key at {} (is --data-dir the provider's data directory?)",
        path.display()
    );
    let key = NodeKey::load_or_create(&path)
        .with_context(|| format!("cannot read the node key {}", path.display()))?;
    let challenge = api.challenge().await?;
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let public_key = key.public_hex();
    Ok(wire::NodeProof {
        signature: key.sign(&node_proof_message(
            purpose,
            &public_key,
            time,
            &challenge.nonce,
        )),
        public_key,
        time,
        nonce: challenge.nonce,
    })
}

fn print_earnings(e: &wire::Earnings) {
    println!("provider    {}", e.provider_id);
    println!("pending     {}  (jobs still running)", e.pending);
    println!("available   {}  (paid out at the next payout)", e.available);
    println!("paid        {}", e.paid);
    match &e.unstake_at {
        Some(at) => println!("stake       {}  (returned at {at})", e.stake),
        None => println!("stake       {}", e.stake),
    }
    if e.payout.is_empty() {
        println!("payout to   (no address: restart the provider with --payout ADDRESS)");
    }
    for split in &e.payout {
        println!("payout to   {} (share {})", split.address, split.share);
    }
    for p in e.payouts.iter().take(10) {
        println!(
            "  {}  {:>10} XMR  {}  {}",
            p.created_at,
            p.amount,
            p.status,
            p.txid.as_deref().unwrap_or("-")
        );
    }
}

async fn earnings(node: &NodeArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&node.pool, None);
    let proof = node_proof(&api, &node.data_dir, "earnings").await?;
    let e: wire::Earnings = api.post("/v1/providers/earnings", &proof).await?;
    if node.json {
        println!("{}", serde_json::to_string(&e)?);
    } else {
        print_earnings(&e);
    }
    Ok(ExitCode::SUCCESS)
}

async fn stake(node: &NodeArgs, action: wire::StakeAction) -> anyhow::Result<ExitCode> {
    let api = Api::new(&node.pool, None);
    let proof = node_proof(&api, &node.data_dir, "stake").await?;
    let e: wire::Earnings = api
        .post("/v1/providers/stake", &wire::StakeRequest { proof, action })
        .await?;
    if node.json {
        println!("{}", serde_json::to_string(&e)?);
    } else {
        print_earnings(&e);
    }
    Ok(ExitCode::SUCCESS)
}
