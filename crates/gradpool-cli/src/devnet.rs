//! `gradpool devnet`: the whole system on one machine.
//!
//! Starts a pool (in this process, on a temporary SQLite database) and N
//! provider agents (child processes) on 127.0.0.1, creates a customer
//! account, submits the Shakespeare GPT job, follows it live, fetches the
//! model, samples text from it, and writes `OUT/model.safetensors` and
//! `OUT/summary.json`. Ctrl-C cancels the job and stops everything.
//! `--container` trains the example container job instead, its segments
//! run by the providers under podman and every one of them audited.

use crate::cmd::confidential::KeyStore;
use crate::cmd::job::{fetch_model_with, submit_into, Submission};
use crate::cmd::local::{sample_text, SHAKESPEARE};
use anyhow::{bail, Context};
use clap::Args;
use gradpool_client::{Api, Trust};
use gradpool_core::privacy::DataKey;
use gradpool_core::state::AuditStatus;
use gradpool_core::wire::{ProviderView, SegmentView, VerdictView};
use gradpool_core::{JobSpec, Piconero, ProviderId};
use gradpool_monero::rpc::{Subaddress, TransferOptions, TransferQuery};
use gradpool_monero::{Address, Regtest, WalletRpcProcess};
use gradpool_pool::db::DatabaseUrl;
use gradpool_pool::tls::{Tls, TlsListener, TlsSource};
use gradpool_pool::wallet::MoneroBackend;
use gradpool_pool::MoneyBackend;
use gradpool_pool::{Pool, PoolConfig};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// The default job: a character-level GPT on Shakespeare.
pub const SHAKESPEARE_SPEC: &str = include_str!("../../../examples/shakespeare-gpt.toml");

/// The example container job and its script.
const CONTAINER_SPEC: &str = include_str!("../../../examples/container-torch/job.toml");
const CONTAINER_SCRIPT: &str = include_str!("../../../examples/container-torch/train.py");

/// The sample of text devnet prints starts with this.
const SAMPLE_PROMPT: &str = "ROMEO:";

#[derive(Args)]
pub struct DevnetArgs {
    /// Provider agents to start (default: 3, or --workers when more).
    #[arg(long)]
    providers: Option<usize>,
    /// Train the job as a parallel (DiLoCo) job on this many workers at
    /// once, a round being --checkpoint-every steps of each.
    #[arg(long, value_name = "N")]
    workers: Option<u32>,
    /// Training steps (overrides the spec).
    #[arg(long)]
    steps: Option<u64>,
    /// Steps per segment (default: the spec's, or a sixth of --steps).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Where model.safetensors and summary.json go.
    #[arg(long, default_value = "devnet-out")]
    out: PathBuf,
    /// Train this spec instead of the Shakespeare GPT.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// The dataset for --spec (default: the spec's data.file).
    #[arg(long)]
    data: Option<PathBuf>,
    /// CPU threads per provider (default: all cores).
    #[arg(long)]
    threads: Option<u32>,
    /// What the providers train on: `cpu`, `cuda` (the GPUs, needs the
    /// CUDA build and the NVIDIA driver; with several GPUs provider i
    /// takes GPU i mod their number, with one they share it) or `auto`
    /// (the GPU when the NVIDIA driver and a CUDA build are there, else
    /// the CPU, as a provider's default).
    #[arg(long, value_enum, default_value = "auto")]
    device: DevnetDevice,
    /// Lease length: how soon a silent provider's segment is handed on.
    #[arg(long, default_value_t = 6)]
    lease_seconds: u32,
    /// How long a drawn audit waits for a validator other than its
    /// trainer (with one provider there is none: the job then ends
    /// `unverified` once this passes).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    audit_deadline_s: u64,
    /// Keep the pool's database and the providers' directories and logs;
    /// with DIR, copy the pool's data directory to DIR/pool after the run.
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    keep: Option<Option<PathBuf>>,
    /// Train the job as a confidential job: its data (with --container,
    /// its image and script too) sealed under a key this devnet's customer
    /// makes, the key sealed to the providers (`privacy.providers =
    /// "any"`), the model opened here.
    #[arg(long, conflicts_with_all = ["workers", "spec"])]
    confidential: bool,
    /// Characters of text to sample from the trained model.
    #[arg(long, default_value_t = 400)]
    sample_tokens: usize,
    /// Pay with real Monero on a private chain: starts `monerod --regtest
    /// --offline` and wallet RPCs, mines coins to the customer, deposits
    /// them, and pays the providers on chain (needs `apt-get install
    /// monero`).
    #[arg(long)]
    monero: bool,
    /// Train the example container job instead (`examples/container-torch/`:
    /// a PyTorch character transformer in its OCI image, run by the
    /// providers under podman and audited): builds the image from
    /// Debian's packages when there is none (mmdebstrap and podman, about
    /// 2.5 minutes). With --workers, a parallel container job.
    #[arg(long, conflicts_with = "spec")]
    container: bool,
    /// Keep the pool's state in PostgreSQL instead of SQLite: with no URL,
    /// a throwaway cluster this devnet starts (Debian's `postgresql`:
    /// initdb and pg_ctl, in its work directory) and stops; with one, that
    /// database (it should be empty).
    #[arg(long, value_name = "URL", num_args = 0..=1)]
    postgres: Option<Option<String>>,
    /// The container job's image (an OCI archive) for --container
    /// (default: built once into ~/.cache/gradpool/).
    #[arg(long, value_name = "FILE", requires = "container")]
    image: Option<PathBuf>,
}

/// `devnet --device`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DevnetDevice {
    Cpu,
    Cuda,
    Auto,
}

impl DevnetDevice {
    /// The providers' `--device` and `--gpu` arguments: provider `i` of
    /// devnet on `gpus` GPUs.
    fn provider_args(self, i: usize, gpus: usize) -> Vec<String> {
        match self {
            DevnetDevice::Cpu => vec!["--device".into(), "cpu".into()],
            DevnetDevice::Auto => vec!["--device".into(), "auto".into()],
            DevnetDevice::Cuda => vec![
                "--device".into(),
                "cuda".into(),
                "--gpu".into(),
                (i % gpus.max(1)).to_string(),
            ],
        }
    }

    /// How many GPUs the providers share: checked before anything starts,
    /// so that `--device cuda` on a machine or build that cannot fails
    /// here, with the reason, rather than in three providers' logs.
    fn gpus(self) -> anyhow::Result<usize> {
        if self != DevnetDevice::Cuda {
            return Ok(0);
        }
        if !cfg!(feature = "cuda") {
            bail!(
                "--device cuda: this gradpool was built without CUDA (see \"GPU builds\" in the README)"
            );
        }
        let gpus = gradpool_provider::gpu::Gpus::open()
            .and_then(|g| g.list())
            .context("--device cuda")?;
        if gpus.is_empty() {
            bail!("--device cuda: the NVIDIA driver lists no GPU");
        }
        Ok(gpus.len())
    }
}

/// A private Monero chain for `devnet --monero`: the pool's wallet, the
/// customer's, and one wallet whose subaddresses the providers are paid to.
struct DevChain {
    regtest: Regtest,
    customer: WalletRpcProcess,
    providers: WalletRpcProcess,
    customer_address: Address,
    /// Each provider's payout subaddress, by provider number.
    payout: Vec<Subaddress>,
}

/// Confirmations before a devnet deposit counts.
const DEVNET_CONFIRMATIONS: u64 = 2;

impl DevChain {
    async fn start(dir: &Path, providers: usize) -> anyhow::Result<DevChain> {
        Regtest::binaries_available().map_err(|e| anyhow::anyhow!("devnet --monero: {e}"))?;
        let regtest = Regtest::start(dir).await?;
        regtest.wallet().create_wallet("pool", "").await?;
        let customer = regtest.spawn_wallet_rpc().await?;
        customer.wallet().create_wallet("customer", "").await?;
        let provider_wallets = regtest.spawn_wallet_rpc().await?;
        provider_wallets
            .wallet()
            .create_wallet("providers", "")
            .await?;
        let mut payout = Vec::new();
        for i in 0..providers {
            payout.push(
                provider_wallets
                    .wallet()
                    .create_address(Some(&format!("devnet-{}", i + 1)))
                    .await?,
            );
        }
        let customer_address = customer.wallet().get_address().await?;
        // Coinbases unlock after 60 blocks; a spend needs rings of 16.
        regtest.mine(80, &customer_address).await?;
        customer.wallet().refresh().await?;
        Ok(DevChain {
            regtest,
            customer,
            providers: provider_wallets,
            customer_address,
            payout,
        })
    }

    async fn mine(&self, blocks: u64) -> anyhow::Result<()> {
        self.regtest.mine(blocks, &self.customer_address).await?;
        self.customer.wallet().refresh().await?;
        Ok(())
    }

    /// The customer's wallet pays `amount` to `to`; returns the txid.
    async fn send(&self, to: &str, amount: Piconero) -> anyhow::Result<String> {
        let receipt = self
            .customer
            .wallet()
            .transfer(&[(Address::parse(to)?, amount)], &TransferOptions::relay())
            .await?;
        Ok(receipt.tx_hash.as_str().to_owned())
    }
}

/// The pool's database for `--postgres`: a throwaway cluster (kept
/// running by the returned handle) or the URL given; none (SQLite)
/// without it.
fn devnet_database(
    a: &DevnetArgs,
) -> anyhow::Result<(Option<crate::postgres::Cluster>, Option<DatabaseUrl>)> {
    match &a.postgres {
        None => Ok((None, None)),
        Some(Some(url)) => Ok((None, Some(DatabaseUrl::parse(url)?))),
        Some(None) => {
            let cluster = crate::postgres::Cluster::start()
                .context("cannot start a PostgreSQL cluster for --postgres")?;
            println!("postgres   {} (a throwaway cluster)", cluster.url);
            let url = DatabaseUrl::parse(&cluster.url)?;
            Ok((Some(cluster), Some(url)))
        }
    }
}

#[derive(Serialize)]
struct Summary {
    job_id: String,
    steps: u64,
    checkpoint_every: u64,
    initial_loss: f32,
    final_loss: f32,
    /// The loss on the held-out text at each checkpoint, in order.
    eval_losses: Vec<f32>,
    wall_seconds: f64,
    providers: Vec<ProviderSummary>,
    sample: String,
    model: PathBuf,
    pool: String,
    /// The SHA-256 fingerprint of the pool's self-signed TLS certificate.
    pool_fingerprint: Option<String>,
    payments: Payments,
    verification: VerificationSummary,
    /// A parallel job's rounds (`devnet --workers`).
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel: Option<ParallelSummary>,
    /// What ran the segments: `native` or `container`.
    runtime: String,
    /// A container job's image, by the digest the job pinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    image_sha256: Option<String>,
    /// A confidential job: the pool held only its sealed data and
    /// checkpoints.
    confidential: bool,
    /// The pool's data directory: `--keep DIR`'s copy, else the temporary
    /// one, gone after the run.
    pool_data_dir: PathBuf,
    /// The pool's database: `sqlite` or `postgres` (`--postgres`).
    database: String,
}

/// A parallel job's rounds, as the pool recorded them.
#[derive(Serialize)]
struct ParallelSummary {
    workers: u32,
    rounds: usize,
    inner_steps: u64,
    /// Outer steps accepted, each computed again by the pool, which
    /// compared its bytes and chain hash with the provider's commitment.
    outer_steps_checked: usize,
    /// What a round's checkpoints moved through the pool (uploads and
    /// downloads, audits' replays included), on average.
    bytes_per_round: u64,
    /// How long a round waited between its first and its last worker's
    /// commitment, on average.
    straggler_wait_seconds: f64,
    /// Each round's mean last training loss over its workers.
    round_losses: Vec<f32>,
    /// Each round's mean held-out loss over its workers.
    round_eval_losses: Vec<f32>,
    /// What a worker sent and received over the job, on average: its
    /// pseudo-gradients up, the outer updates (or global checkpoints)
    /// down.
    bytes_per_worker: u64,
    /// The share of the workers' time spent training: their segments'
    /// time from lease to commitment over `workers ×` the rounds' time,
    /// each from its first lease to its outer step.
    utilisation: f64,
}

impl ParallelSummary {
    fn of(rounds: &[gradpool_core::wire::RoundView], workers: u32, inner_steps: u64) -> Self {
        let n = rounds.len().max(1);
        let outer = || rounds.iter().filter_map(|r| r.outer.as_ref());
        ParallelSummary {
            workers,
            rounds: rounds.len(),
            inner_steps,
            outer_steps_checked: outer().count(),
            bytes_per_round: rounds.iter().map(|r| r.bytes).sum::<u64>() / n as u64,
            straggler_wait_seconds: (rounds.iter().map(|r| r.wait_seconds).sum::<f64>() / n as f64
                * 10.0)
                .round()
                / 10.0,
            round_losses: outer().filter_map(|o| o.loss).collect(),
            round_eval_losses: outer().filter_map(|o| o.eval_loss).collect(),
            bytes_per_worker: rounds
                .iter()
                .flat_map(|r| &r.workers)
                .map(|w| w.bytes)
                .sum::<u64>()
                / u64::from(workers.max(1)),
            utilisation: utilisation(rounds, workers),
        }
    }
}

/// [`ParallelSummary::utilisation`]: the workers' training seconds over
/// `workers ×` the rounds' seconds (first lease to outer step).
fn utilisation(rounds: &[gradpool_core::wire::RoundView], workers: u32) -> f64 {
    let trained: f64 = rounds
        .iter()
        .flat_map(|r| &r.workers)
        .map(|w| w.seconds)
        .sum();
    let span: f64 = rounds.iter().map(|r| r.seconds).sum::<f64>() * f64::from(workers.max(1));
    if span <= 0.0 {
        return 0.0;
    }
    ((trained / span).min(1.0) * 1000.0).round() / 1000.0
}

/// The job's audits: every provider also validates, so segments drawn for
/// an audit were replayed by another provider.
#[derive(Serialize)]
struct VerificationSummary {
    /// The job's final status: `succeeded`, or `unverified` when some
    /// drawn audit went unserved.
    status: String,
    /// `none`, `standard` or `paranoid`.
    level: String,
    audits: usize,
    verified: usize,
    provider_faults: usize,
    validator_faults: usize,
    /// Drawn audits no eligible validator served before the deadline (the
    /// job is then `unverified`: run `gradpool job verify`).
    unserved: usize,
}

#[derive(Serialize)]
struct ProviderSummary {
    id: String,
    name: String,
    segments: u32,
    /// Replays it ran for audits of others' segments.
    replays: u32,
    price_per_hour_piconero: u64,
    earned_piconero: u64,
    /// Its reproducibility class: what it trained on, e.g.
    /// `native-0.1.0/cuda/sm90-nvidia-h200-132sm-driver…`.
    class: String,
}

/// Where the job's money went.
#[derive(Serialize)]
struct Payments {
    /// `dev` (faucet, no Monero) or `monero`.
    backend: String,
    deposit_txids: Vec<String>,
    payout_txids: Vec<String>,
    /// What each provider was credited (dev) or paid on chain (monero).
    paid_piconero: BTreeMap<String, u64>,
    /// The pool's and the validators' fees.
    fees_piconero: u64,
    budget_piconero: u64,
    spent_piconero: u64,
    refunded_piconero: u64,
    /// `gradpool pool reconcile` found every invariant holding.
    ledger_balanced: bool,
}

/// What the devnet customer gets from the dev faucet.
const DEVNET_FUNDS: Piconero = Piconero(1_000_000_000_000);

/// Provider `i`'s price floor: 0.01 XMR/h, 0.02 XMR/h, …
fn devnet_price(i: usize) -> Piconero {
    Piconero(10_000_000_000 * (i as u64 % 5 + 1))
}

pub async fn run(a: DevnetArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let agents = a
        .providers
        .unwrap_or_else(|| 3.max(a.workers.unwrap_or(0) as usize));
    if agents == 0 {
        bail!("--providers must be at least 1");
    }
    let gpus = a.device.gpus()?;
    let work = tempfile::Builder::new()
        .prefix("gradpool-devnet-")
        .tempdir()?;
    let work_path = work.path().to_owned();
    let (spec_text, data_path) = job_input(&a, &work_path)?;

    let chain = if a.monero {
        let chain = DevChain::start(&work_path.join("chain"), agents)
            .await
            .context("cannot start the private Monero chain")?;
        println!(
            "monero     monerod --regtest at {}, wallets in {}",
            chain.regtest.daemon_address(),
            chain.regtest.wallet_dir().display()
        );
        Some(chain)
    } else {
        None
    };

    // The pool, on PostgreSQL with --postgres (the cluster lives until
    // the run ends).
    let (_cluster, database) = devnet_database(&a)?;
    let mut config = PoolConfig {
        data_dir: work_path.join("pool"),
        lease_seconds: a.lease_seconds,
        heartbeat_seconds: 1,
        database,
        ..PoolConfig::default()
    };
    config.verification.audit_deadline_seconds = a.audit_deadline_s;
    if let Some(chain) = &chain {
        config.money.backend = MoneyBackend::Monero(MoneroBackend {
            wallet_rpc: chain.regtest.wallet_process().url().to_owned(),
            daemon_rpc: format!("http://{}", chain.regtest.daemon_address()),
            confirmations: DEVNET_CONFIRMATIONS,
            payout_threshold: Piconero(1),
            poll_seconds: 1,
        });
    }
    let pool = Pool::open(config).await.context("cannot start the pool")?;
    // Over TLS, as a real pool: a self-signed certificate that the
    // providers and the customer pin by its fingerprint.
    let tls = Tls::load(&TlsSource::SelfSigned {
        dir: work_path.join("pool").join("tls"),
        names: vec!["localhost".into(), "127.0.0.1".into()],
    })?;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = Endpoint {
        url: format!("https://{}", tcp.local_addr()?),
        trust: Trust {
            fingerprint: Some(tls.fingerprint),
            ..Trust::default()
        },
    };
    let listener = TlsListener::new(tcp, &tls)?;
    let url = endpoint.url.clone();
    let stop_pool = CancellationToken::new();
    let pool_task = {
        let stop = stop_pool.clone();
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.serve(listener, async move { stop.cancelled().await })
                .await
        })
    };
    let kept = match pool.dialect() {
        gradpool_pool::db::Dialect::Sqlite => {
            format!("SQLite in {}", work_path.join("pool").display())
        }
        gradpool_pool::db::Dialect::Postgres => {
            format!("PostgreSQL, blobs in {}", work_path.join("pool").display())
        }
    };
    println!(
        "pool       {url}  ({kept}; TLS certificate {})",
        tls.fingerprint
    );

    // The providers.
    let mut providers = Vec::new();
    for i in 0..agents {
        let payout = chain
            .as_ref()
            .and_then(|c| c.payout.get(i))
            .map(|s| s.address.as_str().to_owned());
        let device = a.device.provider_args(i, gpus);
        providers.push(start_provider(
            &endpoint,
            &work_path,
            i,
            a.threads,
            &device,
            payout,
            a.container,
        )?);
    }
    let on = match (a.device, gpus) {
        (DevnetDevice::Cuda, 1) => " sharing the GPU".to_owned(),
        (DevnetDevice::Cuda, n) => format!(" on {n} GPUs"),
        _ => String::new(),
    };
    println!(
        "providers  {} agents{on}, logs in {}/provider-*.log",
        agents,
        work_path.display()
    );

    let outcome = tokio::select! {
        r = drive(&a, &pool, &endpoint, (&spec_text, &data_path, &work_path), started, chain.as_ref()) => r,
        _ = crate::cmd::interrupted() => Err(anyhow::anyhow!("interrupted")),
    };

    // Shut down in order: providers first (their segments die with them),
    // then the pool.
    for p in &mut providers {
        stop_provider(p).await;
    }
    stop_pool.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), pool_task).await;
    match &a.keep {
        Some(Some(dir)) => {
            let to = dir.join("pool");
            copy_dir(&work_path.join("pool"), &to)
                .with_context(|| format!("cannot keep the pool's data in {}", to.display()))?;
            println!("kept       the pool's data directory in {}", to.display());
        }
        Some(None) => {
            let kept = work.keep();
            println!("kept       {}", kept.display());
        }
        None => {}
    }
    match outcome {
        Ok(code) => Ok(code),
        Err(e) if e.to_string() == "interrupted" => {
            eprintln!("devnet interrupted: pool and providers stopped");
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e),
    }
}

/// Waits until `n` providers registered with an encryption key.
async fn wait_for_keys(api: &Api, n: usize) -> anyhow::Result<()> {
    let waited = Instant::now();
    loop {
        let listed: Vec<gradpool_core::wire::ProviderView> = api.get("/v1/providers").await?;
        if listed.iter().filter(|p| p.encryption_key.is_some()).count() >= n {
            return Ok(());
        }
        if waited.elapsed() > Duration::from_secs(120) {
            bail!("the providers did not all register with an encryption key within 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Copies the directory `from` (files and directories) to `to`.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            copy_dir(&src, &dst)?;
        } else if entry.file_type()?.is_file() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// The example container job's spec (`examples/container-torch/job.toml`),
/// its script written into `work`, and its image (built when missing) both
/// named by absolute paths, audited in full.
fn container_example(a: &DevnetArgs, work: &Path) -> anyhow::Result<String> {
    let script = work.join("train.py");
    std::fs::write(&script, CONTAINER_SCRIPT)?;
    let image = match &a.image {
        Some(image) => image.clone(),
        None => example_image()?,
    };
    let image = std::path::absolute(&image)?;
    let mut doc: toml::Table = toml::from_str(CONTAINER_SPEC)?;
    let container = doc
        .get_mut("container")
        .and_then(|t| t.as_table_mut())
        .context("the example has no [container] table")?;
    container.insert(
        "image".into(),
        toml::Value::String(image.to_string_lossy().into_owned()),
    );
    container.insert(
        "files".into(),
        toml::Value::Array(vec![toml::Value::String(
            script.to_string_lossy().into_owned(),
        )]),
    );
    let mut verification = toml::Table::new();
    verification.insert("level".into(), toml::Value::String("paranoid".into()));
    doc.insert("verification".into(), toml::Value::Table(verification));
    Ok(toml::to_string(&doc)?)
}

/// What the example's image is built from: its build script and the
/// Python package it installs. The cached image is named by their digest,
/// so a binary built from a checkout with another package builds anew.
const IMAGE_INPUTS: [&str; 5] = [
    include_str!("../../../examples/container-torch/build-image.sh"),
    include_str!("../../../python/pyproject.toml"),
    include_str!("../../../python/gradpool/__init__.py"),
    include_str!("../../../python/gradpool/segment.py"),
    include_str!("../../../python/gradpool/safetensors.py"),
];

/// The example's image in the user's cache, built by the example's script
/// from this checkout when it is not there.
fn example_image() -> anyhow::Result<PathBuf> {
    let cache = crate::cmd::container::default_image_store()
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(std::env::temp_dir);
    let key = gradpool_core::Sha256Hex::of(IMAGE_INPUTS.concat().as_bytes());
    let image = cache.join(format!(
        "container-torch-{}.oci.tar.gz",
        key.as_str().get(..16).unwrap_or_default()
    ));
    if image.is_file() {
        return Ok(image);
    }
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/container-torch/build-image.sh");
    if !script.is_file() {
        bail!(
            "--container: no image at {} and no checkout to build it from; build it with \
             examples/container-torch/build-image.sh and pass --image FILE",
            image.display()
        );
    }
    std::fs::create_dir_all(&cache)?;
    println!("image      building the example's image from Debian's packages (about 2.5 minutes)…");
    let status = std::process::Command::new(&script)
        .arg(&image)
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !status.success() {
        bail!("building the example's image failed ({status}): it needs mmdebstrap and podman");
    }
    Ok(image)
}

/// The spec text (with --steps applied) and the data file.
fn job_input(a: &DevnetArgs, work: &Path) -> anyhow::Result<(String, PathBuf)> {
    let (text, default_data) = match &a.spec {
        Some(p) => {
            let spec = gradpool_core::JobSpec::from_file(p)?;
            (std::fs::read_to_string(p)?, spec.data.file)
        }
        None if a.container => {
            let data = work.join("tinyshakespeare.txt");
            std::fs::write(&data, SHAKESPEARE)?;
            (container_example(a, work)?, Some(data))
        }
        None => {
            let data = work.join("tinyshakespeare.txt");
            std::fs::write(&data, SHAKESPEARE)?;
            (SHAKESPEARE_SPEC.to_owned(), Some(data))
        }
    };
    let data = a
        .data
        .clone()
        .or(default_data)
        .context("no data for the spec: pass --data FILE")?;
    let mut doc: toml::Table = toml::from_str(&text)?;
    let train = doc
        .get_mut("train")
        .and_then(|t| t.as_table_mut())
        .context("the spec has no [train] table")?;
    if let Some(steps) = a.steps {
        train.insert("steps".into(), toml::Value::Integer(steps as i64));
        let every = a
            .checkpoint_every
            .unwrap_or_else(|| steps.div_ceil(6).max(1));
        train.insert(
            "checkpoint_every".into(),
            toml::Value::Integer(every as i64),
        );
        if let Some(w) = train.get("warmup_steps").and_then(|w| w.as_integer()) {
            train.insert(
                "warmup_steps".into(),
                toml::Value::Integer(w.min(steps as i64 / 10)),
            );
        }
    } else if let Some(every) = a.checkpoint_every {
        train.insert(
            "checkpoint_every".into(),
            toml::Value::Integer(every as i64),
        );
    }
    // A parallel job: a round is a segment's steps of each worker.
    if let Some(workers) = a.workers {
        let inner = train
            .get("checkpoint_every")
            .and_then(|v| v.as_integer())
            .context("--workers: the spec needs train.checkpoint_every (the steps of a round)")?;
        let mut parallel = toml::Table::new();
        parallel.insert("workers".into(), toml::Value::Integer(i64::from(workers)));
        parallel.insert("inner_steps".into(), toml::Value::Integer(inner));
        doc.insert("parallel".into(), toml::Value::Table(parallel));
    }
    if a.confidential {
        let mut privacy = toml::Table::new();
        privacy.insert("confidential".into(), toml::Value::Boolean(true));
        privacy.insert("providers".into(), toml::Value::String("any".into()));
        doc.insert("privacy".into(), toml::Value::Table(privacy));
    }
    // devnet pays its providers: a spec without a budget gets one.
    if !doc.contains_key("budget") {
        let mut budget = toml::Table::new();
        budget.insert("total_xmr".into(), toml::Value::String("0.1".into()));
        doc.insert("budget".into(), toml::Value::Table(budget));
    }
    // The pool receives the spec alone: the data goes as a blob.
    if let Some(d) = doc.get_mut("data").and_then(|t| t.as_table_mut()) {
        d.remove("file");
    }
    let text = toml::to_string(&doc)?;
    gradpool_core::JobSpec::from_toml_str(&text)?;
    Ok((text, data))
}

async fn drive(
    a: &DevnetArgs,
    pool: &Pool,
    endpoint: &Endpoint,
    (spec_text, data, work): (&str, &Path, &Path),
    started: Instant,
    chain: Option<&DevChain>,
) -> anyhow::Result<ExitCode> {
    let account = pool.create_account("devnet customer").await?;
    let api = Api::new(
        &endpoint.url,
        Some(account.api_key.clone()),
        &endpoint.trust,
    )?;
    let mut deposit_txids = Vec::new();
    match chain {
        None => {
            pool.faucet(&account.account_id, DEVNET_FUNDS).await?;
            println!(
                "customer   {}  ({} from the dev faucet)",
                account.account_id, DEVNET_FUNDS
            );
        }
        Some(chain) => {
            // The customer deposits; the operator funds the pool's fee
            // account (network fees of payouts); both wait for confirmations.
            let deposit: gradpool_core::wire::DepositAddress = api
                .post("/v1/account/deposit", &serde_json::json!({}))
                .await?;
            let fees = pool.fee_deposit_address().await?;
            deposit_txids.push(chain.send(&deposit.address, DEVNET_FUNDS).await?);
            deposit_txids.push(
                chain
                    .send(&fees.address, Piconero(DEVNET_FUNDS.0 / 10))
                    .await?,
            );
            chain.mine(DEVNET_CONFIRMATIONS).await?;
            let waited = Instant::now();
            loop {
                let b = pool.balance(&account.account_id).await?;
                if b.available >= DEVNET_FUNDS {
                    break;
                }
                if waited.elapsed() > Duration::from_secs(60) {
                    bail!("the deposit of {DEVNET_FUNDS} was not credited within a minute");
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            // Deposits are spendable by the pool's wallet 10 blocks later.
            chain.mine(10).await?;
            println!(
                "customer   {}  (deposited {} to {}…, tx {}…)",
                account.account_id,
                DEVNET_FUNDS,
                deposit.address.get(..12).unwrap_or_default(),
                deposit_txids[0].get(..16).unwrap_or_default()
            );
        }
    }
    // A confidential job's data key stays with the customer, here, and
    // is sealed to the providers registered with a key: all of them.
    let keys = KeyStore::at(&work.join("keys"));
    if a.confidential {
        let agents = a
            .providers
            .unwrap_or_else(|| 3.max(a.workers.unwrap_or(0) as usize));
        wait_for_keys(&api, agents).await?;
    }
    let key = a.confidential.then(DataKey::generate);
    let spec_text = if a.container {
        // Its image and script go up as blobs (sealed for a confidential
        // job), pinned by digest.
        let store = crate::cmd::container::default_image_store();
        let inputs = (data, store.as_path());
        crate::cmd::job::pin_container(&api, spec_text, Path::new("."), inputs, key.as_ref(), true)
            .await?
    } else {
        spec_text.to_owned()
    };
    let to = Submission {
        booking: None,
        keys: &keys,
        key,
    };
    let job = submit_into(&api, &spec_text, data, to, true).await?;
    println!(
        "job        {}  ({} steps, {} segments of {})\n",
        job.id, job.steps, job.segments_total, job.checkpoint_every
    );
    let id = job.id.to_string();
    let end = crate::watch::follow(&api, &id, true).await?;
    if !end.status.is_trained() {
        bail!(
            "job {id} {}: {}",
            end.status.as_str(),
            end.error.unwrap_or_default()
        );
    }
    // A parallel job's global checkpoint stays beside the model
    // (`checkpoint.safetensors`): what `bench diloco` evaluates.
    let (model, _) = fetch_model_with(&api, &id, &a.out, end.parallel.is_some(), &keys).await?;
    let segments: Vec<SegmentView> = api.get(&format!("/v1/jobs/{id}/segments")).await?;
    let provider_views: Vec<ProviderView> = api.get("/v1/providers").await?;
    let names: BTreeMap<String, (String, Piconero, String)> = provider_views
        .into_iter()
        .map(|p| (p.id.to_string(), (p.name, p.price_per_hour, p.class)))
        .collect();
    let verdicts: Vec<VerdictView> = api.get(&format!("/v1/jobs/{id}/verdicts")).await?;
    let mut counts: BTreeMap<String, u32> = names.keys().map(|id| (id.clone(), 0)).collect();
    for s in &segments {
        *counts.entry(s.provider.to_string()).or_default() += 1;
    }
    let mut replays: BTreeMap<String, u32> = BTreeMap::new();
    for r in verdicts.iter().flat_map(|v| &v.replays) {
        *replays.entry(r.validator.to_string()).or_default() += 1;
    }
    let outcomes = |o: AuditStatus| verdicts.iter().filter(|v| v.outcome == o).count();
    let verification = VerificationSummary {
        status: end.status.as_str().to_owned(),
        level: JobSpec::from_toml_str(&end.spec_toml)
            .map(|s| s.verification.as_str().to_owned())
            .unwrap_or_default(),
        audits: verdicts.len(),
        verified: outcomes(AuditStatus::Verified),
        provider_faults: outcomes(AuditStatus::ProviderFault),
        validator_faults: outcomes(AuditStatus::ValidatorFault),
        unserved: outcomes(AuditStatus::Unserved),
    };
    let initial_loss = segments
        .first()
        .and_then(|s| s.loss_trace.first().copied())
        .unwrap_or(f32::NAN);
    let mut final_loss = segments
        .last()
        .and_then(|s| s.loss_trace.last().copied())
        .unwrap_or(f32::NAN);
    let mut eval_losses: Vec<f32> = segments.iter().filter_map(|s| s.eval_loss).collect();
    let parallel = match end.parallel {
        Some(p) => {
            let rounds: Vec<gradpool_core::wire::RoundView> =
                api.get(&format!("/v1/jobs/{id}/rounds")).await?;
            let summary = ParallelSummary::of(&rounds, p.workers, end.checkpoint_every);
            // A parallel job's losses are its rounds': the workers' means.
            final_loss = summary.round_losses.last().copied().unwrap_or(final_loss);
            eval_losses = summary.round_eval_losses.clone();
            Some(summary)
        }
        None => None,
    };

    let job_spec = JobSpec::from_toml_str(&end.spec_toml)?;
    let image_sha256 = job_spec
        .container()
        .and_then(|c| c.image_sha256.as_ref())
        .map(|d| d.to_string());
    let sample = if job_spec.container().is_some() {
        // The script's model: gradpool's sampler does not know it.
        String::new()
    } else {
        let tokens = a.sample_tokens;
        let model_path = model.clone();
        let text = tokio::task::spawn_blocking(move || {
            sample_text(
                &model_path,
                SAMPLE_PROMPT,
                tokens,
                0.8,
                0,
                &gradpool_train::Device::Cpu,
            )
        })
        .await??;
        format!("{SAMPLE_PROMPT}{text}")
    };

    let mut incoming = Vec::new();
    if let Some(chain) = chain {
        // Wait for the pool's payout loop to pay everyone, then confirm.
        let waited = Instant::now();
        loop {
            let mut due = 0;
            for id in names.keys() {
                due += pool
                    .earnings(&ProviderId::from(id.as_str()))
                    .await?
                    .available
                    .0;
            }
            if due == 0 {
                break;
            }
            if waited.elapsed() > Duration::from_secs(60) {
                bail!("providers were not paid within a minute ({due} piconero due)");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        chain.mine(1).await?;
        chain.providers.wallet().refresh().await?;
        incoming = chain
            .providers
            .wallet()
            .get_transfers(&TransferQuery::incoming())
            .await?
            .incoming;
    }
    let mut paid = BTreeMap::new();
    let mut payout_txids = Vec::new();
    // What the providers were credited; the job's fees are its cost less that.
    let mut shares = 0u64;
    for id in names.keys() {
        let e = pool.earnings(&ProviderId::from(id.as_str())).await?;
        let credited = e.available.0 + e.pending.0 + e.paid.0;
        shares += credited;
        let received = match chain {
            None => credited,
            Some(_) => {
                for txid in e.payouts.iter().filter_map(|p| p.txid.as_ref()) {
                    if !payout_txids.contains(txid) {
                        payout_txids.push(txid.clone());
                    }
                }
                // What reached the provider's subaddress on chain.
                e.payout.first().map_or(0, |split| {
                    incoming
                        .iter()
                        .filter(|t| t.address.as_str() == split.address)
                        .map(|t| t.amount.0)
                        .sum()
                })
            }
        };
        if received > 0 {
            paid.insert(id.clone(), received);
        }
    }
    let fees = end.spent.0.saturating_sub(shares);
    let reconciliation = pool.ledger().reconcile().await?;
    let payments = Payments {
        backend: pool.config().money.backend.name().to_owned(),
        deposit_txids,
        payout_txids,
        paid_piconero: paid,
        fees_piconero: fees,
        budget_piconero: end.budget.0,
        spent_piconero: end.spent.0,
        refunded_piconero: end.budget.0 - end.spent.0,
        ledger_balanced: reconciliation.is_clean(),
    };

    let summary = Summary {
        job_id: id.clone(),
        steps: end.steps,
        checkpoint_every: end.checkpoint_every,
        initial_loss,
        final_loss,
        eval_losses,
        wall_seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        providers: counts
            .iter()
            .map(|(id, n)| {
                let (name, price, class) = names.get(id).cloned().unwrap_or_default();
                ProviderSummary {
                    id: id.clone(),
                    name,
                    segments: *n,
                    replays: replays.get(id).copied().unwrap_or(0),
                    price_per_hour_piconero: price.0,
                    earned_piconero: payments.paid_piconero.get(id).copied().unwrap_or(0),
                    class,
                }
            })
            .collect(),
        sample,
        model: model.clone(),
        pool: endpoint.url.clone(),
        pool_fingerprint: endpoint.trust.fingerprint.map(|f| f.to_string()),
        payments,
        verification,
        parallel,
        runtime: job_spec.runtime().as_str().to_owned(),
        image_sha256,
        confidential: job_spec.privacy.is_some(),
        pool_data_dir: match &a.keep {
            Some(Some(dir)) => dir.join("pool"),
            _ => work.join("pool"),
        },
        database: pool.dialect().name().to_owned(),
    };
    let summary_path = a.out.join("summary.json");
    std::fs::write(
        &summary_path,
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;

    if !summary.sample.is_empty() {
        println!("── sample ─────────────────────────────────────────────");
        println!("{}", summary.sample);
        println!("───────────────────────────────────────────────────────\n");
    }
    println!("job           {}", summary.job_id);
    if let Some(image) = &summary.image_sha256 {
        println!("runtime       container, image {image}");
    }
    if summary.confidential {
        let held = match summary.image_sha256 {
            Some(_) => "the data, image, script and checkpoints",
            None => "the data and checkpoints",
        };
        println!("privacy       confidential: the pool held {held} sealed only");
    }
    println!(
        "steps         {} in {} segments",
        summary.steps,
        segments.len()
    );
    println!(
        "loss          {:.4} → {:.4}",
        summary.initial_loss, summary.final_loss
    );
    if let (Some(first), Some(last)) = (summary.eval_losses.first(), summary.eval_losses.last()) {
        println!("held-out loss {first:.4} → {last:.4} (at the first and last checkpoints)");
    }
    if let Some(p) = &summary.parallel {
        println!(
            "parallel      {} workers × {} steps, {} rounds, {} outer steps computed again by the pool",
            p.workers, p.inner_steps, p.rounds, p.outer_steps_checked
        );
        let losses: Vec<String> = p.round_losses.iter().map(|l| format!("{l:.3}")).collect();
        println!("round loss    {}", losses.join(" → "));
        if !p.round_eval_losses.is_empty() {
            let held: Vec<String> = p
                .round_eval_losses
                .iter()
                .map(|l| format!("{l:.3}"))
                .collect();
            println!("held-out      {}", held.join(" → "));
        }
        println!(
            "per round     {} moved through the pool, {:.1} s waiting for the slowest worker",
            human_bytes(p.bytes_per_round),
            p.straggler_wait_seconds
        );
        println!(
            "per worker    {} sent and received, training {:.0}% of the rounds' time",
            human_bytes(p.bytes_per_worker),
            p.utilisation * 100.0
        );
    }
    println!("wall time     {:.1} s", summary.wall_seconds);
    println!(
        "cost          {} of a {} budget ({} refunded), fees {}, ledger {}",
        Piconero(summary.payments.spent_piconero),
        Piconero(summary.payments.budget_piconero),
        Piconero(summary.payments.refunded_piconero),
        Piconero(summary.payments.fees_piconero),
        if summary.payments.ledger_balanced {
            "balanced"
        } else {
            "NOT BALANCED"
        }
    );
    for txid in &summary.payments.payout_txids {
        println!("payout tx     {txid}");
    }
    let v = &summary.verification;
    println!(
        "audits        {} ({}): {} verified, {} providers and {} validators at fault",
        v.audits, v.level, v.verified, v.provider_faults, v.validator_faults
    );
    if v.unserved > 0 {
        println!(
            "unverified    {} drawn audits found no eligible validator: run `gradpool job verify {}`",
            v.unserved, summary.job_id
        );
    }
    println!(
        "\n{:<24} {:<12} {:>8} {:>8} {:>14} {:>16}",
        "PROVIDER", "NAME", "SEGMENTS", "REPLAYS", "XMR/HOUR", "EARNED XMR"
    );
    for p in &summary.providers {
        println!(
            "{:<24} {:<12} {:>8} {:>8} {:>14} {:>16}",
            p.id,
            p.name,
            p.segments,
            p.replays,
            Piconero(p.price_per_hour_piconero).xmr(),
            Piconero(p.earned_piconero).xmr()
        );
    }
    println!("\nwrote {} and {}", model.display(), summary_path.display());
    Ok(ExitCode::SUCCESS)
}

struct ProviderProcess {
    name: String,
    child: Child,
}

/// Where the pool answers and how its certificate is trusted.
struct Endpoint {
    url: String,
    trust: Trust,
}

fn start_provider(
    endpoint: &Endpoint,
    work: &Path,
    i: usize,
    threads: Option<u32>,
    device: &[String],
    payout: Option<String>,
    containers: bool,
) -> anyhow::Result<ProviderProcess> {
    let name = format!("devnet-{}", i + 1);
    let log = std::fs::File::create(work.join(format!("provider-{}.log", i + 1)))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("provider")
        .arg("--pool")
        .arg(&endpoint.url)
        .arg("--data-dir")
        .arg(work.join(format!("provider-{}", i + 1)))
        .arg("--name")
        .arg(&name)
        .arg("--price-xmr-per-hour")
        .arg(devnet_price(i).xmr())
        .args(device)
        // Every devnet provider also replays the others' segments.
        .arg("--validate");
    if let Some(fingerprint) = endpoint.trust.fingerprint {
        cmd.arg("--pool-fingerprint").arg(fingerprint.to_string());
    }
    if let Some(t) = threads {
        cmd.arg("--threads").arg(t.to_string());
    }
    if let Some(address) = payout {
        cmd.arg("--payout").arg(address);
    }
    if containers {
        // One image store for all: the image loads once.
        cmd.arg("--accept-containers")
            .arg("--image-store")
            .arg(crate::cmd::container::default_image_store());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        // Own process group: Ctrl-C reaches devnet, which stops providers in order.
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start provider {name}"))?;
    Ok(ProviderProcess { name, child })
}

async fn stop_provider(p: &mut ProviderProcess) {
    if let Some(pid) = p.child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(5), p.child.wait())
        .await
        .is_err()
    {
        tracing::warn!(provider = %p.name, "provider did not stop; killing it");
        let _ = p.child.kill().await;
    }
}

/// Bytes for people: `1.2 MB`.
fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GB", n as f64 / f64::from(1u32 << 30)),
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} kB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
