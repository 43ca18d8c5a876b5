//! `gradpool pool`: serve a pool, `gradpool pool reconcile` its ledger, or list
//! its payouts (`gradpool pool payouts`).

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use gradpool_core::verification::Sampling;
use gradpool_core::Piconero;
use gradpool_pool::db::DatabaseUrl;
use gradpool_pool::ledger::Ledger;
use gradpool_pool::tls::{Tls, TlsListener, TlsSource};
use gradpool_pool::wallet::MoneroBackend;
use gradpool_pool::{
    MoneyBackend, MoneyConfig, ObjectStorage, Pool, PoolConfig, ThrottleConfig, VerificationConfig,
};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PoolArgs {
    #[command(subcommand)]
    command: Option<PoolCommand>,
    /// Where the pool keeps its database (pool.sqlite) and blobs.
    #[arg(long, default_value = "gradpool-pool")]
    data_dir: PathBuf,
    /// Keep the pool's state in this PostgreSQL database
    /// (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`) instead of
    /// DATA_DIR/pool.sqlite. Several pool processes may serve one pool on
    /// it (with blobs in --blob-store, or a data directory they share).
    /// Read from GRADPOOL_DATABASE when not given, which keeps a password
    /// off the command line.
    #[arg(long, value_name = "URL", env = "GRADPOOL_DATABASE")]
    database: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// Serve HTTPS with this certificate chain (PEM), e.g. one from a
    /// certificate authority.
    #[arg(long, requires = "tls_key", conflicts_with = "tls_self_signed")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a certificate the pool makes for itself and keeps
    /// in DATA_DIR/tls; it prints its fingerprint for clients to pin.
    #[arg(long)]
    tls_self_signed: bool,
    /// Serve plain HTTP on an address other machines can reach (keys and
    /// data cross the network in the clear). Without TLS the pool
    /// otherwise listens only on loopback.
    #[arg(long)]
    insecure_plain_http: bool,
    /// A lease expires when its provider has not heart-beaten for this long.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u32,
    /// How often providers heart-beat while they work.
    #[arg(long, default_value_t = 3)]
    heartbeat_seconds: u32,
    /// Keep blobs in S3-compatible object storage (`s3://BUCKET[/PREFIX]`),
    /// with DATA_DIR/blobs as the local copies the pool computes with.
    /// The access key comes from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY.
    #[arg(long, value_name = "S3_URL")]
    blob_store: Option<String>,
    /// The object storage service (MinIO, Garage, Ceph…), e.g.
    /// `https://s3.example.net`; without it, AWS's for --s3-region.
    #[arg(long, requires = "blob_store")]
    s3_endpoint: Option<String>,
    /// The object storage's region.
    #[arg(long, default_value = "us-east-1", requires = "blob_store")]
    s3_region: String,
    /// Largest blob (dataset, checkpoint) accepted, in MiB.
    #[arg(long, default_value_t = 4096)]
    max_blob_mib: u64,
    /// Largest container image (OCI archive) a job may bring, in MiB.
    #[arg(long, default_value_t = 2048)]
    max_image_mib: u64,
    /// Refuse `POST /v1/accounts`: accounts are created by the operator only.
    #[arg(long)]
    closed_signup: bool,
    /// Show every provider's page on the dashboard (standing, telemetry)
    /// to anyone, not only to signed-in customers.
    #[arg(long)]
    public_providers: bool,
    /// The pool's fee on every verified segment, in basis points (200 = 2%).
    #[arg(long, default_value_t = 200)]
    pool_fee_bps: u32,
    /// The validators' fee on every verified segment, in basis points.
    #[arg(long, default_value_t = 100)]
    validator_fee_bps: u32,
    /// Jobs with a budget above this (XMR) go only to staked providers.
    #[arg(long, default_value = "1")]
    stake_required_above_xmr: Piconero,
    /// The stake (XMR) a provider needs for those jobs.
    #[arg(long, default_value = "0.1")]
    min_stake_xmr: Piconero,
    /// Hours between a provider asking for its stake back and getting it.
    #[arg(long, default_value_t = 168)]
    unstake_cooldown_hours: u64,
    /// Pay and be paid in Monero through this `monero-wallet-rpc` (the
    /// pool's wallet open in it), e.g. http://127.0.0.1:18083. Without it the
    /// pool is a dev pool with a faucet.
    #[arg(long, requires = "monero_daemon")]
    monero_wallet_rpc: Option<String>,
    /// The `monerod` RPC the wallet uses, e.g. http://127.0.0.1:18081.
    #[arg(long)]
    monero_daemon: Option<String>,
    /// The network payout and withdrawal addresses must belong to (a
    /// regtest chain uses mainnet addresses).
    #[arg(long, value_enum, default_value = "mainnet")]
    network: super::provider::NetworkArg,
    /// Confirmations before a deposit is credited.
    #[arg(long, default_value_t = 10)]
    deposit_confirmations: u64,
    /// Provider earnings below this (XMR) wait for a later payout.
    #[arg(long, default_value = "0.01")]
    payout_threshold_xmr: Piconero,
    /// Seconds between deposit checks and payout rounds.
    #[arg(long, default_value_t = 60)]
    payout_interval_seconds: u64,
    /// The probability that a segment of a provider with no record is
    /// audited; it falls as the provider's streak of verified segments grows.
    #[arg(long, default_value_t = 0.2, value_parser = probability)]
    audit_p_new: f64,
    /// The audit probability never falls below this.
    #[arg(long, default_value_t = 0.02, value_parser = probability)]
    audit_floor: f64,
    /// The probability that an audit comes with a planted one (a verified
    /// segment presented with a wrong claim) to catch validators that answer
    /// without computing.
    #[arg(long, default_value_t = 0.05, value_parser = probability)]
    plant_rate: f64,
    /// How long a drawn audit waits for an eligible validator (connected,
    /// not the trainer, another payout address), in seconds. Meanwhile the
    /// segment's earnings stay pending; past it the audit is unserved and
    /// its job, once trained, ends `unverified`.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    audit_deadline_s: u64,
    /// Do not challenge providers to prove their hardware at registration
    /// (a pool of machines its operator owns).
    #[arg(long)]
    no_hardware_proof: bool,
    /// The mean time between a provider's hardware proofs after its
    /// registration, in seconds (each comes at a random time); 0: only at
    /// registration.
    #[arg(long, default_value_t = 6 * 3600, value_name = "SECONDS")]
    proof_interval_s: u64,
    /// The most memory a job may take to train, in GiB: larger jobs are
    /// refused at submit (as are jobs larger than every provider's device).
    #[arg(long, default_value_t = 256, value_name = "GIB")]
    max_job_memory_gib: u64,
    /// Accounts one client address may create an hour (0: no limit).
    #[arg(long, default_value_t = ThrottleConfig::default().signups_per_hour)]
    signups_per_hour: u32,
    /// Faucet calls one client address may make an hour (0: no limit).
    #[arg(long, default_value_t = ThrottleConfig::default().faucet_per_hour)]
    faucet_per_hour: u32,
    /// Challenges, registrations and signed nonces one client address may
    /// ask for a minute (0: no limit).
    #[arg(long, default_value_t = ThrottleConfig::default().anonymous_per_minute)]
    anonymous_per_minute: u32,
}

/// A probability from 0 to 1.
fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a probability (from 0 to 1)"))
    }
}

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Check the money ledger: recompute every balance and entry from the
    /// postings; exits non-zero if an invariant is broken.
    Reconcile(ReconcileArgs),
    /// Money leaving the pool: every provider payout and customer
    /// withdrawal with its address, amount, status and transaction, newest
    /// first, and the balance of the pool's fee account (which pays the
    /// network fees of payouts).
    Payouts(PayoutsArgs),
    /// Certify a provider into a tier for a number of days, after
    /// reviewing its compliance report (`GET /v1/providers`): refused
    /// unless the report passes.
    Certify(CertifyArgs),
    /// End a provider's certification now.
    Revoke(RevokeArgs),
    /// The pool at a glance: providers by status, jobs by state, the
    /// training queue, the last hour's throughput, money in escrow,
    /// payouts pending (read from its database, as `GET /metrics` is).
    Status(StatusArgs),
}

/// Where an operator's command finds the pool's database.
#[derive(Args)]
pub struct PoolDatabase {
    /// The pool's data directory (holding pool.sqlite).
    #[arg(long, default_value = "gradpool-pool")]
    data_dir: PathBuf,
    /// The pool's PostgreSQL database, when it runs on one (as `gradpool
    /// pool --database`).
    #[arg(long, value_name = "URL", env = "GRADPOOL_DATABASE")]
    database: Option<String>,
}

impl PoolDatabase {
    /// Opens (and migrates) the database.
    async fn open(&self) -> anyhow::Result<gradpool_pool::db::AnyPool> {
        let url = self
            .database
            .as_deref()
            .map(DatabaseUrl::parse)
            .transpose()?;
        let path = match &url {
            Some(_) => self.data_dir.join("pool.sqlite"),
            None => db_path(&self.data_dir)?,
        };
        let db = gradpool_pool::db::open(&path, url.as_ref())
            .await
            .with_context(|| match &url {
                Some(url) => format!("cannot open {}", url.redacted()),
                None => format!("cannot open {}", path.display()),
            })?;
        Ok(db)
    }
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    store: PoolDatabase,
    /// The pool's lease, as it was started with (`--lease-seconds`): a
    /// provider silent for longer counts as disconnected.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u32,
    /// Print the overview as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct CertifyArgs {
    /// The provider (`prov_…`).
    provider: String,
    /// The tier.
    #[arg(long, default_value = "isolated")]
    tier: String,
    /// How long it holds, in days (1 to 366).
    #[arg(long)]
    days: u32,
    #[command(flatten)]
    store: PoolDatabase,
}

#[derive(Args)]
pub struct RevokeArgs {
    /// The provider (`prov_…`).
    provider: String,
    /// Why, as the record keeps it.
    #[arg(long, default_value = "revoked by the operator")]
    reason: String,
    #[command(flatten)]
    store: PoolDatabase,
}

#[derive(Args)]
pub struct PayoutsArgs {
    #[command(flatten)]
    store: PoolDatabase,
    /// How many to show.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    store: PoolDatabase,
}

pub async fn run(a: PoolArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        Some(PoolCommand::Reconcile(args)) => reconcile(args).await,
        Some(PoolCommand::Payouts(p)) => payouts(p).await,
        Some(PoolCommand::Certify(c)) => certify(c).await,
        Some(PoolCommand::Revoke(r)) => revoke(r).await,
        Some(PoolCommand::Status(st)) => status(st).await,
        None => serve(a).await,
    }
}

/// The database file of the pool in `data_dir`, which must exist.
fn db_path(data_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("pool.sqlite");
    anyhow::ensure!(
        path.is_file(),
        "no pool database at {} (is --data-dir the pool's data directory?)",
        path.display()
    );
    Ok(path)
}

async fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let db = a.store.open().await?;
    let mut conn = db.acquire().await?;
    let o = gradpool_pool::overview::read(&mut conn, now_ms(), a.lease_seconds).await?;
    if a.json {
        println!("{}", serde_json::to_string(&o)?);
        return Ok(ExitCode::SUCCESS);
    }
    let line = |counts: &std::collections::BTreeMap<String, u64>| {
        let total: u64 = counts.values().sum();
        let parts: Vec<String> = counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        match parts.is_empty() {
            true => "0".to_owned(),
            false => format!("{total}: {}", parts.join(", ")),
        }
    };
    let xmr = |p: i64| gradpool_core::Piconero(u64::try_from(p).unwrap_or(0)).to_string();
    println!("providers     {}", line(&o.providers));
    println!("jobs          {}", line(&o.jobs));
    println!(
        "queue         {} segments waiting for a provider",
        o.queue_depth
    );
    println!(
        "last hour     {} segments committed, {} steps",
        o.segments_last_hour, o.steps_last_hour
    );
    println!("audits        {}", line(&o.audits));
    println!("escrow        {}", xmr(o.escrow()));
    println!(
        "owed          {} to providers (pending), {} available to withdraw",
        xmr(o.ledger.get("provider_pending").copied().unwrap_or(0)),
        xmr(o.ledger.get("provider_available").copied().unwrap_or(0))
    );
    println!(
        "payouts       {} pending ({})",
        o.payouts_pending(),
        line(&o.payouts)
    );
    println!(
        "blobs         {} ({:.1} MiB)",
        o.blobs,
        o.blob_bytes as f64 / f64::from(1u32 << 20)
    );
    Ok(ExitCode::SUCCESS)
}

async fn payouts(a: PayoutsArgs) -> anyhow::Result<ExitCode> {
    let db = a.store.open().await?;
    let lines = gradpool_pool::money::payout_lines(&db, a.limit).await?;
    let fees = Ledger::new(db.clone())
        .balance(&gradpool_pool::escrow::pool_fees_account())
        .await?;
    if a.json {
        for l in &lines {
            println!("{}", serde_json::to_string(l)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "fee account  {} (pays the network fees of payouts)",
        gradpool_core::Piconero(u64::try_from(fees).unwrap_or(0))
    );
    if lines.is_empty() {
        println!("no payouts yet");
    }
    for l in &lines {
        println!(
            "{}  {:<10} {:<9} {:>18}  {}…  {}  {}",
            l.created_at,
            l.kind,
            l.status,
            l.amount.to_string(),
            l.address.get(..12).unwrap_or(&l.address),
            l.account,
            l.txid.as_deref().unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the pool keeps its state, for the line it prints when it starts.
fn where_kept(pool: &Pool) -> String {
    let config = pool.config();
    match &config.database {
        Some(url) => format!(
            "data in {}, database {}",
            config.data_dir.display(),
            url.redacted()
        ),
        None => format!("data in {}", config.data_dir.display()),
    }
}

/// Milliseconds since the epoch, the pool's clock on this machine.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn certify(a: CertifyArgs) -> anyhow::Result<ExitCode> {
    let tier: gradpool_core::state::ProviderTier =
        a.tier.parse().map_err(|e| anyhow::anyhow!("--tier: {e}"))?;
    let db = a.store.open().await?;
    let mut conn = db.acquire().await?;
    let c = gradpool_pool::certification::certify(&mut conn, &a.provider, tier, a.days, now_ms())
        .await?;
    println!(
        "certified {} into the {} tier until {}",
        c.provider,
        c.tier,
        time::OffsetDateTime::from_unix_timestamp(c.expires_at / 1000)
            .ok()
            .and_then(|t| t
                .format(&time::format_description::well_known::Rfc3339)
                .ok())
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

async fn revoke(a: RevokeArgs) -> anyhow::Result<ExitCode> {
    let db = a.store.open().await?;
    let mut conn = db.acquire().await?;
    let ended =
        gradpool_pool::certification::revoke(&mut conn, &a.provider, &a.reason, now_ms()).await?;
    println!("{ended} certification(s) of {} ended", a.provider);
    Ok(ExitCode::SUCCESS)
}

async fn reconcile(a: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let db = a.store.open().await?;
    let report = Ledger::new(db)
        .reconcile()
        .await
        .context("cannot reconcile the ledger")?;
    println!("{report}");
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn serve(a: PoolArgs) -> anyhow::Result<ExitCode> {
    let object_storage = a
        .blob_store
        .as_deref()
        .map(|url| ObjectStorage::parse(url, a.s3_endpoint.as_deref(), &a.s3_region))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let config = PoolConfig {
        data_dir: a.data_dir.clone(),
        lease_seconds: a.lease_seconds,
        heartbeat_seconds: a.heartbeat_seconds,
        max_blob_bytes: a.max_blob_mib * 1024 * 1024,
        max_image_bytes: a.max_image_mib * 1024 * 1024,
        open_signup: !a.closed_signup,
        public_providers: a.public_providers,
        money: MoneyConfig {
            backend: match (a.monero_wallet_rpc, a.monero_daemon) {
                (Some(wallet_rpc), Some(daemon_rpc)) => MoneyBackend::Monero(MoneroBackend {
                    wallet_rpc,
                    daemon_rpc,
                    confirmations: a.deposit_confirmations.max(1),
                    payout_threshold: a.payout_threshold_xmr,
                    poll_seconds: a.payout_interval_seconds.max(1),
                }),
                _ => MoneyBackend::Dev,
            },
            network: a.network.into(),
            pool_fee_bps: a.pool_fee_bps,
            validator_fee_bps: a.validator_fee_bps,
            stake_required_above: a.stake_required_above_xmr,
            min_stake: a.min_stake_xmr,
            unstake_cooldown_seconds: a.unstake_cooldown_hours.saturating_mul(3600),
            ..MoneyConfig::default()
        },
        verification: VerificationConfig {
            sampling: Sampling {
                p_new: a.audit_p_new,
                floor: a.audit_floor,
            },
            plant_rate: a.plant_rate,
            audit_deadline_seconds: a.audit_deadline_s,
        },
        hardware_proof: !a.no_hardware_proof,
        proof_interval_seconds: a.proof_interval_s,
        max_job_memory_bytes: a.max_job_memory_gib.saturating_mul(1 << 30),
        throttle: ThrottleConfig {
            signups_per_hour: a.signups_per_hour,
            faucet_per_hour: a.faucet_per_hour,
            anonymous_per_minute: a.anonymous_per_minute,
        },
        object_storage,
        database: a.database.as_deref().map(DatabaseUrl::parse).transpose()?,
        ..PoolConfig::default()
    };
    let pool = Pool::open(config)
        .await
        .with_context(|| format!("cannot open the pool in {}", a.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    let tls = match (&a.tls_cert, &a.tls_key, a.tls_self_signed) {
        (Some(cert), Some(key), _) => Some(TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (_, _, true) => Some(TlsSource::SelfSigned {
            dir: a.data_dir.join("tls"),
            names: certificate_names(addr),
        }),
        _ => None,
    };
    let Some(source) = tls else {
        if !addr.ip().is_loopback() && !a.insecure_plain_http {
            bail!(
                "refusing to serve plain HTTP on {addr}, which other machines can reach: API keys, \
                 signed nonces and data would cross the network in the clear. Serve HTTPS with \
                 --tls-self-signed (or --tls-cert and --tls-key), or pass --insecure-plain-http"
            );
        }
        tracing::info!(%addr, data_dir = %a.data_dir.display(), "pool listening");
        println!("pool listening on http://{addr} ({})", where_kept(&pool));
        pool.serve(listener, super::interrupted()).await?;
        return Ok(ExitCode::SUCCESS);
    };
    let tls = Tls::load(&source).context("cannot set up TLS")?;
    tracing::info!(%addr, data_dir = %a.data_dir.display(), fingerprint = %tls.fingerprint, "pool listening over TLS");
    println!("pool listening on https://{addr} ({})", where_kept(&pool));
    if tls.self_signed {
        println!(
            "certificate {} (self-signed; clients pass --pool-fingerprint {} or accept it on first use)",
            tls.fingerprint, tls.fingerprint
        );
    } else {
        println!("certificate {}", tls.fingerprint);
    }
    let listener = TlsListener::new(listener, &tls)?;
    pool.serve(listener, super::interrupted()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The names a self-signed certificate is made for: this machine's, and the
/// address listened on.
fn certificate_names(addr: std::net::SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if let Some(host) = super::provider::host_name().filter(|h| !h.is_empty()) {
        names.push(host);
    }
    if !addr.ip().is_unspecified() && !addr.ip().is_loopback() {
        names.push(addr.ip().to_string());
    }
    names
}
