//! How a pool is set up.

pub use crate::wallet::MoneroBackend;
use gradpool_core::verification::Sampling;
use gradpool_core::Piconero;
use gradpool_monero::address::Network;
use std::path::PathBuf;

/// Settings of a pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Where the database (`pool.sqlite`) and the blob store (`blobs/`) live.
    pub data_dir: PathBuf,
    /// How long a lease lasts without a heartbeat, in seconds.
    pub lease_seconds: u32,
    /// How often providers should heart-beat, in seconds.
    pub heartbeat_seconds: u32,
    /// The largest blob (dataset, checkpoint) the pool accepts, in bytes.
    pub max_blob_bytes: u64,
    /// The largest container image (its OCI archive) a job may bring, in
    /// bytes: larger ones are refused at submit. Every provider of the job
    /// downloads and stores it.
    pub max_image_bytes: u64,
    /// Whether anyone may create an account with `POST /v1/accounts`.
    pub open_signup: bool,
    /// Show providers' pages (`GET /v1/providers/{id}` and its telemetry)
    /// to anyone, not only to callers with a key.
    pub public_providers: bool,
    /// Fees, stakes and where the money lives.
    pub money: MoneyConfig,
    /// How segments are audited.
    pub verification: VerificationConfig,
    /// Challenge every provider at registration to prove its hardware
    /// (see [`crate::proof`]); until it passes it gets no work.
    pub hardware_proof: bool,
    /// The mean time between hardware proofs after registration, in
    /// seconds: each next one comes at an exponentially distributed random
    /// time, so a provider cannot predict it. 0: only at registration.
    pub proof_interval_seconds: u64,
    /// The mean time between an isolated-tier provider's compliance
    /// checks after its certification, in seconds (exponential, so the
    /// next one cannot be foreseen); 0 asks for none between
    /// registrations.
    pub compliance_interval_seconds: u64,
    /// The most memory a job may take to train, in bytes: larger jobs are
    /// refused at submit, as are jobs larger than every provider's device.
    pub max_job_memory_bytes: u64,
    /// Per-client limits on sign-ups, the faucet and the anonymous routes.
    pub throttle: crate::throttle::ThrottleConfig,
    /// Once a parallel job's round has `parallel.min_workers` committed
    /// segments, how long the pool waits for the others, in seconds,
    /// before it closes the round without them (see [`crate::round`]).
    pub round_grace_seconds: u64,
    /// Where blobs are kept: `None`, the data directory (`blobs/`); or
    /// S3-compatible object storage, with `blobs/` as the local copies the
    /// pool computes with.
    pub object_storage: Option<ObjectStorage>,
    /// Where the database lives: `None`, SQLite in the data directory
    /// (`pool.sqlite`); or a PostgreSQL database, which several pool
    /// processes may serve together.
    pub database: Option<crate::db::DatabaseUrl>,
    /// Where the pool reads the time (the system's clock; tests move a
    /// [`ManualClock`](crate::clock::ManualClock) by hand).
    pub clock: std::sync::Arc<dyn crate::clock::Clock>,
}

/// How committed segments are audited (see [`gradpool_core::verification`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VerificationConfig {
    /// The audit probability of a new provider and its floor.
    pub sampling: Sampling,
    /// The probability that an audit is accompanied by a planted one: a
    /// replay of an already verified segment presented with a wrong claim,
    /// so that a validator that answers without computing is caught.
    pub plant_rate: f64,
    /// How long a drawn audit waits for an eligible validator (one that is
    /// connected, is not the trainer and does not share its payout
    /// address), in seconds. Until then the segment's earnings stay pending
    /// and its job does not end; past it the audit is `unserved` and a job
    /// that trained to the end ends `unverified`.
    pub audit_deadline_seconds: u64,
}

impl Default for VerificationConfig {
    fn default() -> Self {
        VerificationConfig {
            sampling: Sampling::default(),
            plant_rate: 0.05,
            audit_deadline_seconds: 3600,
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            data_dir: PathBuf::from("gradpool-data"),
            lease_seconds: 15,
            heartbeat_seconds: 3,
            max_blob_bytes: 4 << 30,
            max_image_bytes: 2 << 30,
            open_signup: true,
            public_providers: false,
            money: MoneyConfig::default(),
            verification: VerificationConfig::default(),
            hardware_proof: true,
            proof_interval_seconds: 6 * 3600,
            compliance_interval_seconds: 6 * 3600,
            max_job_memory_bytes: 256 << 30,
            throttle: crate::throttle::ThrottleConfig::default(),
            round_grace_seconds: 60,
            object_storage: None,
            database: None,
            clock: std::sync::Arc::new(crate::clock::SystemClock),
        }
    }
}

/// S3-compatible object storage for the pool's blobs. The credentials
/// come from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// optionally `AWS_SESSION_TOKEN`), never from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStorage {
    /// The bucket, and a prefix in it for this pool's objects.
    pub bucket: String,
    pub prefix: String,
    /// The service's URL (`https://s3.example.net`, MinIO's, Garage's…);
    /// `None`: AWS's, from the region.
    pub endpoint: Option<String>,
    pub region: String,
    /// `None`: from the environment, as the AWS tools read them.
    pub credentials: Option<S3Credentials>,
}

/// An access key for object storage.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"…")
            .finish()
    }
}

impl ObjectStorage {
    /// Reads `s3://bucket[/prefix]`, with the service at `endpoint`. A
    /// plain `http://` endpoint is refused unless it is on this machine
    /// (blobs would cross the network in the clear).
    pub fn parse(url: &str, endpoint: Option<&str>, region: &str) -> Result<ObjectStorage, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("--blob-store {url:?}: expected s3://BUCKET[/PREFIX]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !valid_bucket {
            return Err(format!(
                "--blob-store {url:?}: {bucket:?} is not a bucket name (3 to 63 lowercase \
                 letters, digits, '-' and '.')"
            ));
        }
        if let Some(e) = endpoint {
            let url = url::Url::parse(e)
                .map_err(|_| format!("--s3-endpoint {e:?}: expected http(s)://HOST[:PORT]"))?;
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            match url.scheme() {
                "https" if url.host().is_some() => {}
                "http" if loopback => {}
                "http" => {
                    return Err(format!(
                        "--s3-endpoint {e:?}: plain http only on this machine; use https"
                    ))
                }
                _ => {
                    return Err(format!(
                        "--s3-endpoint {e:?}: expected http(s)://HOST[:PORT]"
                    ))
                }
            }
        }
        Ok(ObjectStorage {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            endpoint: endpoint.map(str::to_owned),
            region: region.to_owned(),
            credentials: None,
        })
    }
}

/// Where money enters and leaves the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoneyBackend {
    /// No Monero: a faucet credits customers for local use, and payouts are
    /// recorded but sent nowhere.
    Dev,
    /// Real Monero through the pool's wallet in `monero-wallet-rpc`:
    /// deposits to subaddresses, batched payouts.
    Monero(MoneroBackend),
}

impl MoneyBackend {
    /// `dev` or `monero`.
    pub fn name(&self) -> &'static str {
        match self {
            MoneyBackend::Dev => "dev",
            MoneyBackend::Monero(_) => "monero",
        }
    }
}

/// Fees, stakes and payouts.
#[derive(Debug, Clone)]
pub struct MoneyConfig {
    pub backend: MoneyBackend,
    /// The network payout and withdrawal addresses must belong to (a
    /// regtest chain uses mainnet addresses).
    pub network: Network,
    /// The pool's fee on every verified segment, in basis points (200 = 2%).
    pub pool_fee_bps: u32,
    /// The validators' fee on every verified segment, in basis points; it
    /// goes to the validator fund that pays for replays.
    pub validator_fee_bps: u32,
    /// Jobs with a budget above this go only to providers with a stake of
    /// at least [`MoneyConfig::min_stake`].
    pub stake_required_above: Piconero,
    /// The stake a provider needs for large jobs.
    pub min_stake: Piconero,
    /// How long a provider waits between asking for its stake back and
    /// getting it, in seconds (time for a late fraud verdict to slash it).
    pub unstake_cooldown_seconds: u64,
    /// The most one faucet call gives (dev backend only).
    pub faucet_limit: Piconero,
    /// The share of a slashed stake that goes to the validator that caught
    /// the fraud, in basis points; the rest goes to the customer harmed.
    pub slash_validator_bps: u32,
}

impl Default for MoneyConfig {
    fn default() -> Self {
        MoneyConfig {
            backend: MoneyBackend::Dev,
            network: Network::Mainnet,
            pool_fee_bps: 200,
            validator_fee_bps: 100,
            stake_required_above: Piconero(1_000_000_000_000),
            min_stake: Piconero(100_000_000_000),
            unstake_cooldown_seconds: 7 * 24 * 3600,
            faucet_limit: Piconero(100_000_000_000_000),
            slash_validator_bps: 1_000,
        }
    }
}
