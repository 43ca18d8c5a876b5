//! `gradpool provider`: run the agent, or see and move its money.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use gradpool_client::Api;
use gradpool_core::commitment::signed_nonce_message;
use gradpool_core::wire::{self, PayoutSplit};
use gradpool_core::{NodeKey, Piconero, ProviderId};
use gradpool_monero::address::{Address, Network};
use gradpool_provider::segment::DeviceFlags;
use gradpool_provider::state::{DataDir, RunningAgent};
use gradpool_provider::{CpuDevice, Device, ProviderConfig};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProviderArgs {
    #[command(subcommand)]
    command: Option<ProviderCommand>,
    #[command(flatten)]
    agent: AgentArgs,
}

/// The agent's flags: `gradpool provider start` (or bare `gradpool
/// provider`).
#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    rig: RigArgs,
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
    /// Commit a parallel job's outer steps with altered weights.
    #[cfg(feature = "cheat")]
    #[arg(long)]
    forge_outer: bool,
}

/// Where the rig works, who gets paid, and the owner's limits: the flags
/// over the config file.
#[derive(Args, Clone)]
pub struct RigArgs {
    /// A provider config file (TOML: pool, name, payout, prices and the
    /// `[limits]`); flags given here win over it.
    #[arg(long, env = "GRADPOOL_PROVIDER_CONFIG")]
    config: Option<PathBuf>,
    /// The pool to work for (default http://127.0.0.1:7070).
    #[arg(long, env = "GRADPOOL_POOL")]
    pool: Option<String>,
    /// Node key, cache and tasks in flight (default ./gradpool-provider).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Name shown in the pool (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// CPU threads training may use (default: all).
    #[arg(long)]
    threads: Option<u32>,
    /// What to train on: auto (the GPU when the NVIDIA driver is found,
    /// else the CPU), cpu or cuda (default auto).
    #[arg(long, value_enum)]
    device: Option<DeviceChoice>,
    /// The GPU to share, by its index in `nvidia-smi` (default 0). One
    /// agent shares one GPU: run one per GPU, each with its own data dir.
    #[arg(long)]
    gpu: Option<u32>,
    /// Segments trained at once (default 1).
    #[arg(long)]
    max_concurrent_tasks: Option<u32>,
    /// The least this rig takes, in XMR per GPU-hour (per CPU-hour on a
    /// CPU; default 0.01). Jobs whose maximum price is lower are not
    /// offered to it.
    #[arg(long, alias = "min-price-xmr-per-hour")]
    price_xmr_per_hour: Option<Piconero>,
    /// A Monero address to pay, with its share after `=` (default 1):
    /// `--payout ADDR_OWNER=70 --payout ADDR_INVESTOR=30`. Repeatable;
    /// replaces the config file's list.
    #[arg(long = "payout", value_name = "ADDRESS[=SHARE]")]
    payout: Vec<String>,
    /// The Monero network the pool pays on (default mainnet; regtest pools
    /// use mainnet addresses).
    #[arg(long, value_enum)]
    network: Option<NetworkArg>,
    /// Also take replay tasks: re-execute other providers' segments for the
    /// pool's audits, paid at this rig's rate.
    #[arg(long)]
    validate: bool,
    /// Where the rig is (e.g. `eu-west`): jobs that keep to a region
    /// (`resources.region`) train only on rigs that declare it.
    #[arg(long)]
    region: Option<String>,
    /// Run container jobs: customers' own training images, under podman in
    /// a sandbox (no network, read-only, no capabilities, capped memory).
    #[arg(long)]
    accept_containers: bool,
    /// The most disk container images may take, in GiB (default 20); the
    /// least recently used are removed beyond it.
    #[arg(long, value_name = "GIB")]
    image_cache_gib: Option<u32>,
    /// Where container images are kept (default: `images/` in the data
    /// dir); the agents of one machine, one per GPU, may share one.
    #[arg(long, value_name = "DIR")]
    image_store: Option<PathBuf>,
    /// Where confidential jobs' plaintext lives while a task runs: a tmpfs
    /// (default /dev/shm); it is never written to the data dir.
    #[arg(long, value_name = "DIR")]
    plaintext_dir: Option<PathBuf>,
    /// `isolated`: run the isolated tier's host checks (encrypted data
    /// dir, swap, listeners, users, lockdown, Secure Boot, IOMMU) and send
    /// them, signed, with every registration.
    #[arg(long, value_enum)]
    tier: Option<crate::provider_config::Tier>,
    /// Percent of the time the device may train (1–100).
    #[arg(long, value_name = "PERCENT")]
    max_gpu_share: Option<u8>,
    /// Pause work at or above this temperature (°C).
    #[arg(long, value_name = "CELSIUS")]
    pause_above_c: Option<f32>,
    /// Resume below this temperature (°C; default 10 below the pause).
    #[arg(long, value_name = "CELSIUS")]
    resume_below_c: Option<f32>,
    /// The device's power cap (W).
    #[arg(long, value_name = "WATTS")]
    power_limit_w: Option<u32>,
    /// When the rig may work, in local time, e.g.
    /// "mon-fri 22:00-07:00, sat-sun all-day" (default: always).
    #[arg(long)]
    schedule: Option<String>,
    /// Yield the device when another process starts using it.
    #[arg(long)]
    pause_when_busy: bool,
}

/// What the agent trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<DeviceChoice, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            other => Err(format!("{other:?} is not a device (auto, cpu or cuda)")),
        }
    }
}

/// Opens the device the settings name. `auto` takes the GPU when NVML
/// finds one and this build can train on it, else the CPU.
fn open_device(s: &Settings) -> anyhow::Result<Arc<dyn Device>> {
    use gradpool_provider::gpu::Gpus;
    let cpu = || -> Arc<dyn Device> { Arc::new(CpuDevice::new(s.threads)) };
    let gpu = || -> anyhow::Result<Arc<dyn Device>> {
        let device = Gpus::open()?.device(s.gpu)?;
        if !cfg!(feature = "cuda") {
            bail!(
                "found {} (GPU {}), but this gradpool was built without CUDA: build it with \
                 `cargo build --release --features cuda` to train on the GPU",
                device.info().name,
                s.gpu
            );
        }
        #[cfg(feature = "cuda")]
        let device = device.with_runtime(
            gradpool_train::runtime::cuda_runtime(s.gpu as usize)
                .with_context(|| format!("GPU {}", s.gpu))?,
        );
        Ok(Arc::new(device))
    };
    match s.device {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Cuda => gpu().context("device = cuda"),
        DeviceChoice::Auto => match gpu() {
            Ok(d) => Ok(d),
            Err(e) => {
                eprintln!("note: training on the CPU: {e:#}");
                Ok(cpu())
            }
        },
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum NetworkArg {
    Mainnet,
    Stagenet,
    Testnet,
}

impl std::str::FromStr for NetworkArg {
    type Err = String;

    fn from_str(s: &str) -> Result<NetworkArg, String> {
        match s {
            "mainnet" => Ok(NetworkArg::Mainnet),
            "stagenet" => Ok(NetworkArg::Stagenet),
            "testnet" => Ok(NetworkArg::Testnet),
            other => Err(format!(
                "{other:?} is not a Monero network (mainnet, stagenet or testnet)"
            )),
        }
    }
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
    /// Set up this rig: asks for the pool, your Monero address and your
    /// limits (checking each on the spot), detects the hardware, runs the
    /// benchmark, prints what the rig may earn at the pool's prices, and
    /// writes the config file `start` runs with.
    Init {
        /// Where to write the config.
        #[arg(long, default_value = "gradpool-provider.toml")]
        config: PathBuf,
        /// The pool address offered by default.
        #[arg(long, env = "GRADPOOL_POOL", default_value = "http://127.0.0.1:7070")]
        pool: String,
    },
    /// Run the agent: register with the pool, take work within the owner's
    /// limits, train, commit, get paid (the same as bare `gradpool
    /// provider`).
    Start(AgentArgs),
    /// Show this provider's earnings (pending, available, paid), stake and
    /// payouts.
    Earnings(NodeArgs),
    /// Open this provider's page on the pool's dashboard: prints a link,
    /// good for 12 hours, that shows its standing, earnings, payouts,
    /// hardware proofs and audits (and nothing else; it changes nothing).
    Dashboard(NodeArgs),
    /// Stake earnings (required for large jobs), or ask for the stake back.
    #[command(subcommand)]
    Stake(StakeCommand),
    /// Show the settings and the owner's limits this provider runs with
    /// (from --config and the flags), whether its schedule lets it work now,
    /// and its earnings at the pool.
    Status(RigArgs),
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
    /// Print the Monero subaddress that funds the stake from any wallet
    /// (pools with the Monero backend): a transfer to it is added to the
    /// stake after the pool's confirmations.
    Deposit(NodeArgs),
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
            .with_context(|| format!("payout {address}"))?;
        out.push(PayoutSplit {
            address: address.to_owned(),
            share,
        });
    }
    Ok(out)
}

/// Measures a device's matrix-multiplication speed in GFLOP/s, in a child
/// process (`gradpool bench matmul`, the same way segments run) given the
/// device's flags.
pub(crate) async fn matmul_gflops(program: &Path, device: DeviceFlags) -> anyhow::Result<f64> {
    let out = tokio::process::Command::new(program)
        .args(["bench", "matmul", "--json"])
        .args(device.args())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("cannot run the benchmark")?;
    if !out.status.success() {
        bail!(
            "the benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let report: gradpool_train::bench::MatmulReport =
        serde_json::from_slice(&out.stdout).context("the benchmark's report")?;
    Ok(report.gflops)
}

/// The agent's benchmark at start: `None`, with a warning, if it fails.
async fn benchmark(program: &Path, device: &dyn Device) -> Option<f64> {
    match matmul_gflops(program, device.segment_device()).await {
        Ok(gflops) => {
            tracing::info!(gflops, "matmul benchmark");
            Some(gflops)
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "the matmul benchmark failed; registering without it");
            None
        }
    }
}

/// This machine's host name, the default name of a rig.
pub(crate) fn host_name() -> Option<String> {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
}

pub async fn run(mut a: ProviderArgs) -> anyhow::Result<ExitCode> {
    match a.command.take() {
        Some(ProviderCommand::Status(rig)) => status(&rig).await,
        Some(ProviderCommand::Earnings(node)) => earnings(&node).await,
        Some(ProviderCommand::Dashboard(node)) => dashboard(&node).await,
        Some(ProviderCommand::Stake(StakeCommand::Add { amount, node })) => {
            stake(&node, wire::StakeAction::Add { amount }).await
        }
        Some(ProviderCommand::Stake(StakeCommand::Withdraw(node))) => {
            stake(&node, wire::StakeAction::Withdraw).await
        }
        Some(ProviderCommand::Stake(StakeCommand::Deposit(node))) => {
            stake(&node, wire::StakeAction::Deposit).await
        }
        Some(ProviderCommand::Init { config, pool }) => {
            let onboarding = super::onboarding::Onboarding {
                program: std::env::current_exe()?,
                config,
                default_pool: pool,
            };
            let stdin = std::io::stdin();
            let mut prompt = super::onboarding::Prompt::new(stdin.lock(), std::io::stdout());
            onboarding.run(&mut prompt).await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(ProviderCommand::Start(agent_args)) => agent(agent_args).await,
        None => agent(a.agent).await,
    }
}

/// The agent's settings: the flags, then the config file, then defaults;
/// every value checked.
struct Settings {
    pool: String,
    data_dir: PathBuf,
    name: String,
    threads: Option<u32>,
    device: DeviceChoice,
    gpu: u32,
    max_concurrent_tasks: u32,
    price: Piconero,
    payout: Vec<PayoutSplit>,
    validate: bool,
    region: Option<String>,
    accept_containers: bool,
    image_cache_gib: u32,
    image_store: Option<PathBuf>,
    plaintext_dir: Option<PathBuf>,
    isolated: bool,
    limits: gradpool_provider::limits::Limits,
    /// How the pool's certificate is trusted (the flag over the file's
    /// `pool_fingerprint`).
    trust: gradpool_client::Trust,
}

fn settings(a: &RigArgs) -> anyhow::Result<Settings> {
    use crate::provider_config::{limits, price, LimitsFile, ProviderFile};
    let file = match &a.config {
        Some(path) => ProviderFile::read(path)?,
        None => ProviderFile::default(),
    };
    let network: NetworkArg = match (a.network, &file.network) {
        (Some(n), _) => n,
        (None, Some(n)) => n.parse().map_err(|e| anyhow::anyhow!("network: {e}"))?,
        (None, None) => NetworkArg::Mainnet,
    };
    let payout = if a.payout.is_empty() {
        parse_payout(&file.payout, network.into()).context("payout")?
    } else {
        parse_payout(&a.payout, network.into())?
    };
    let price = match (a.price_xmr_per_hour, &file.min_price_xmr_per_hour) {
        (Some(p), _) => p,
        (None, Some(s)) => price("min_price_xmr_per_hour", s)?,
        (None, None) => Piconero(10_000_000_000),
    };
    let limits = limits(
        &file.limits,
        &LimitsFile {
            max_gpu_share: a.max_gpu_share,
            pause_above_c: a.pause_above_c,
            resume_below_c: a.resume_below_c,
            power_limit_w: a.power_limit_w,
            schedule: a.schedule.clone(),
            pause_when_busy: a.pause_when_busy.then_some(true),
        },
    )?;
    let max_concurrent_tasks = a
        .max_concurrent_tasks
        .or(file.max_concurrent_tasks)
        .unwrap_or(1);
    if max_concurrent_tasks == 0 {
        bail!("max_concurrent_tasks: must be at least 1");
    }
    let pool_fingerprint = file
        .pool_fingerprint
        .as_deref()
        .map(str::parse)
        .transpose()
        .context("pool_fingerprint")?;
    Ok(Settings {
        trust: crate::pool_trust::trust_with(pool_fingerprint),
        pool: a
            .pool
            .clone()
            .or(file.pool)
            .unwrap_or_else(|| "http://127.0.0.1:7070".to_owned()),
        data_dir: a
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("gradpool-provider")),
        name: a
            .name
            .clone()
            .or(file.name)
            .or_else(host_name)
            .unwrap_or_else(|| "provider".to_owned()),
        threads: a.threads.or(file.threads),
        device: match (a.device, &file.device) {
            (Some(d), _) => d,
            (None, Some(d)) => d.parse().map_err(|e| anyhow::anyhow!("device: {e}"))?,
            (None, None) => DeviceChoice::Auto,
        },
        gpu: a.gpu.or(file.gpu).unwrap_or(0),
        max_concurrent_tasks,
        price,
        payout,
        validate: a.validate || file.validate.unwrap_or(false),
        region: match a.region.clone().or(file.region) {
            Some(r) => {
                if let Some(problem) = gradpool_core::spec::region_problem(&r) {
                    bail!("region: {problem}");
                }
                Some(r)
            }
            None => None,
        },
        accept_containers: a.accept_containers || file.accept_containers.unwrap_or(false),
        image_cache_gib: match a.image_cache_gib.or(file.image_cache_gib) {
            Some(0) => bail!("image_cache_gib: must be at least 1"),
            Some(g) => g,
            None => (gradpool_provider::DEFAULT_IMAGE_CACHE_BYTES >> 30) as u32,
        },
        image_store: a.image_store.clone().or(file.image_store),
        plaintext_dir: a.plaintext_dir.clone().or(file.plaintext_dir),
        isolated: a.tier.or(file.tier) == Some(crate::provider_config::Tier::Isolated),
        limits,
    })
}

async fn status(a: &RigArgs) -> anyhow::Result<ExitCode> {
    let s = settings(a)?;
    println!("data dir           {}", s.data_dir.display());
    let rig = match DataDir::running_agent(&s.data_dir) {
        Some(agent) => {
            println!(
                "agent              running (pid {}, since {}): its settings",
                agent.pid, agent.started_at
            );
            agent
        }
        None => {
            println!(
                "agent              not running on this data dir: the settings it would start with{}",
                if s.data_dir.join("node.key").is_file() {
                    ""
                } else {
                    " (no agent has run here: pass the --data-dir or --config of a running one)"
                }
            );
            s.as_running_agent()
        }
    };
    print_rig(&rig);
    if s.data_dir.join("node.key").is_file() {
        let api = Api::new(&rig.pool, None, &s.trust)?;
        match signed_nonce(&api, &s.data_dir, "status").await {
            Ok(signed) => match api
                .post::<_, wire::ProviderStatusReply>("/v1/providers/status", &signed)
                .await
            {
                Ok(st) => {
                    let p = &st.provider;
                    println!(
                        "status             {}{} (last seen {})",
                        p.status,
                        p.paused_reason
                            .as_deref()
                            .or(p.held.as_deref())
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default(),
                        p.last_seen
                    );
                    if let Some(t) = &p.telemetry {
                        let mut parts = Vec::new();
                        if let Some(c) = t.temperature_c {
                            parts.push(format!("{c:.0} °C"));
                        }
                        if let Some(w) = t.power_w {
                            parts.push(format!("{w:.0} W"));
                        }
                        if let Some(u) = t.utilization_pct {
                            parts.push(format!("{u:.0}% busy"));
                        }
                        parts.push(format!(
                            "{} task(s), {} foreign process(es)",
                            t.tasks_running, t.foreign_processes
                        ));
                        println!("device at the pool {}", parts.join(", "));
                    }
                    println!(
                        "reputation         {:.2} ({} audits passed in a row, {} faults; audited at {:.3})",
                        p.reputation, p.streak, p.faults, p.audit_probability
                    );
                    for change in st.history.iter().take(8) {
                        println!(
                            "  {}  {}{}",
                            change.at,
                            change.status,
                            change
                                .reason
                                .as_deref()
                                .map(|r| format!(" ({r})"))
                                .unwrap_or_default()
                        );
                    }
                }
                Err(e) => println!("status             {}", e.report()),
            },
            Err(e) => println!("status             {e:#}"),
        }
        match signed_nonce(&api, &s.data_dir, "earnings").await {
            Ok(signed) => match api
                .post::<_, wire::Earnings>("/v1/providers/earnings", &signed)
                .await
            {
                Ok(e) => println!(
                    "at the pool        {}: pending {}, available {}, paid {}, stake {}",
                    e.provider_id, e.pending, e.available, e.paid, e.stake
                ),
                Err(e) => println!("at the pool        {}", e.report()),
            },
            Err(e) => println!("at the pool        {e:#}"),
        }
    } else {
        println!("at the pool        not registered yet (no node key in the data dir)");
    }
    Ok(ExitCode::SUCCESS)
}

impl Settings {
    /// The settings as an agent started with them would record them.
    fn as_running_agent(&self) -> RunningAgent {
        RunningAgent {
            pid: 0,
            started_at: String::new(),
            provider_id: ProviderId::from(""),
            pool: self.pool.clone(),
            name: self.name.clone(),
            device: match self.device {
                DeviceChoice::Auto => format!(
                    "auto (GPU {} if the NVIDIA driver finds it, else the CPU)",
                    self.gpu
                ),
                DeviceChoice::Cpu => "cpu".to_owned(),
                DeviceChoice::Cuda => format!("cuda (GPU {})", self.gpu),
            },
            threads: self.threads,
            max_concurrent_tasks: self.max_concurrent_tasks,
            price_per_hour: self.price,
            payout: self.payout.clone(),
            validate: self.validate,
            train: true,
            limits: self.limits.clone(),
            containers: self.accept_containers.then(|| {
                gradpool_provider::state::ContainerSettings {
                    image_store: self
                        .image_store
                        .clone()
                        .unwrap_or_else(|| self.data_dir.join("images")),
                    image_cache_bytes: u64::from(self.image_cache_gib) << 30,
                }
            }),
        }
    }
}

/// Prints a rig's settings, as `provider status` shows them.
fn print_rig(r: &RunningAgent) {
    let l = &r.limits;
    println!("pool               {}", r.pool);
    println!("name               {}", r.name);
    println!("min price          {}/hour", r.price_per_hour);
    println!("concurrent tasks   {}", r.max_concurrent_tasks);
    println!(
        "validates          {}",
        match (r.validate, r.train) {
            (true, true) => "yes",
            (true, false) => "only (takes no training)",
            _ => "no",
        }
    );
    println!("device             {}", r.device);
    if let Some(t) = r.threads {
        println!("threads            {t}");
    }
    // A CPU rig's share is its threads.
    let on_cpu = r.device == "cpu" || r.device.contains("/cpu/");
    if !on_cpu {
        println!("max GPU share      {}%", l.max_gpu_share);
    }
    match (l.pause_above_c, l.thermal()) {
        (Some(p), Some(_)) => println!(
            "temperature        pause at {p} °C, resume at {} °C",
            l.resume_below_c.unwrap_or(p - 10.0)
        ),
        _ => println!("temperature        no limit"),
    }
    match l.power_limit_w {
        Some(w) => println!("power limit        {w} W"),
        None => println!("power limit        none"),
    }
    println!(
        "schedule           {} (local time; {} now)",
        l.schedule,
        if l.schedule.is_open_now() {
            "open"
        } else {
            "closed"
        }
    );
    println!(
        "pause when busy    {}",
        if l.pause_when_busy { "yes" } else { "no" }
    );
    match &r.containers {
        Some(c) => {
            let (images, bytes) = gradpool_provider::container::ImageStore::usage(&c.image_store);
            println!(
                "container jobs     accepted; {images} image(s), {} of {} in {}",
                gradpool_core::model::human_bytes(bytes),
                gradpool_core::model::human_bytes(c.image_cache_bytes),
                c.image_store.display()
            );
        }
        None => println!("container jobs     not accepted (accept_containers)"),
    }
    if r.payout.is_empty() {
        println!("payout to          (no address: earnings wait at the pool)");
    }
    for split in &r.payout {
        println!(
            "payout to          {} (share {})",
            split.address, split.share
        );
    }
}

async fn agent(a: AgentArgs) -> anyhow::Result<ExitCode> {
    let s = settings(&a.rig)?;
    // Refused before the benchmark; the agent's own lock decides for good.
    if let Some(other) = DataDir::running_agent(&s.data_dir) {
        return Err(DataDir::in_use(&s.data_dir, Some(&other)).into());
    }
    if s.payout.is_empty() {
        eprintln!(
            "note: no --payout address: earnings accumulate at the pool until one is set \
             (restart with --payout ADDRESS)"
        );
    }
    let program = std::env::current_exe()?;
    let device = open_device(&s)?;
    let hw = device.hardware();
    eprintln!("training on {} ({})", hw.name, hw.class());
    let benchmark_gflops = benchmark(&program, device.as_ref()).await;
    let config = ProviderConfig {
        pool_url: s.pool,
        trust: s.trust,
        data_dir: s.data_dir,
        name: s.name,
        program,
        max_concurrent_tasks: s.max_concurrent_tasks,
        price_per_hour: s.price,
        payout: s.payout,
        benchmark_gflops,
        validate: s.validate || a.validate_only,
        train: !a.validate_only,
        region: s.region,
        accept_containers: s.accept_containers,
        image_cache_bytes: u64::from(s.image_cache_gib) << 30,
        image_store: s.image_store,
        plaintext_dir: s.plaintext_dir,
        isolated: s.isolated,
        limits: s.limits,
        clock: Arc::new(gradpool_provider::limits::SystemClock),
        #[cfg(feature = "cheat")]
        cheat: gradpool_provider::cheat::Cheat {
            kind: a.cheat.map(|k| k.name().to_owned()),
            fraction: a.cheat_fraction.clamp(0.0, 1.0),
            lazy_validator: a.lazy_validator,
            forge_outer: a.forge_outer,
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
async fn signed_nonce(
    api: &Api,
    data_dir: &Path,
    purpose: &str,
) -> anyhow::Result<wire::SignedNonce> {
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
    let public_key = key.public_key();
    Ok(wire::SignedNonce {
        signature: key.sign(&signed_nonce_message(
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
    if e.pending.0 > 0 {
        println!(
            "pending     {}  (until their jobs end and their audits are decided)",
            e.pending
        );
    } else {
        println!("pending     {}", e.pending);
    }
    println!("available   {}  (paid out at the next payout)", e.available);
    println!("paid        {}", e.paid);
    match &e.unstake_at {
        Some(at) => println!("stake       {}  (returned at {at})", e.stake),
        None => println!("stake       {}", e.stake),
    }
    if let Some(address) = &e.stake_deposit_address {
        println!("stake deposit address  {address}");
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
    let api = crate::pool_trust::api(&node.pool, None)?;
    let signed = signed_nonce(&api, &node.data_dir, "earnings").await?;
    let e: wire::Earnings = api.post("/v1/providers/earnings", &signed).await?;
    if node.json {
        println!("{}", serde_json::to_string(&e)?);
    } else {
        print_earnings(&e);
    }
    Ok(ExitCode::SUCCESS)
}

async fn dashboard(node: &NodeArgs) -> anyhow::Result<ExitCode> {
    let api = crate::pool_trust::api(&node.pool, None)?;
    let signed = signed_nonce(&api, &node.data_dir, "view").await?;
    let view: wire::ViewOpened = api.post("/v1/providers/views", &signed).await?;
    // The token rides in the fragment, which the browser never sends: the
    // page keeps it in the tab and takes it out of the address bar.
    let link = format!("{}/#/rig/{}", api.base(), view.token);
    if node.json {
        println!(
            "{}",
            serde_json::json!({ "url": link, "provider_id": view.provider_id, "expires_at": view.expires_at })
        );
    } else {
        println!("{link}");
        println!(
            "(the page of {} until {}: open it in a browser; anyone with the link can read it)",
            view.provider_id, view.expires_at
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn stake(node: &NodeArgs, action: wire::StakeAction) -> anyhow::Result<ExitCode> {
    let api = crate::pool_trust::api(&node.pool, None)?;
    let signed_nonce = signed_nonce(&api, &node.data_dir, "stake").await?;
    let e: wire::Earnings = api
        .post(
            "/v1/providers/stake",
            &wire::StakeRequest {
                signed_nonce,
                action,
            },
        )
        .await?;
    if node.json {
        println!("{}", serde_json::to_string(&e)?);
    } else {
        print_earnings(&e);
    }
    Ok(ExitCode::SUCCESS)
}
