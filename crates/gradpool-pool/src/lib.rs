//! The gradpool pool: the coordinator between customers and providers.
//!
//! A [`Pool`] owns a database (SQLite under [`PoolConfig::data_dir`], or
//! PostgreSQL, [`PoolConfig::database`], which several pool processes may
//! share) and a content-addressed blob store, and serves the HTTP API
//! described in [`gradpool_core::wire`]:
//!
//! - [`api`]: the routes and their handlers.
//! - [`auth`]: API keys of customers and session tokens of providers.
//! - [`db`]: the engine (SQLite, or PostgreSQL), opened and migrated, and
//!   the few things the two dialects say differently.
//! - [`store`]: rows and views.
//! - [`tx`]: the write transaction every change goes through.
//! - [`queue`]: the task queue and a job's state, shared by the flows above.
//! - [`job`]: submit, cancel, requeuing a task that ended unfinished.
//! - [`registration`]: a provider's node key proven, its session opened.
//! - [`placement`]: why a queued job waits (no provider can take it now).
//! - [`lease`]: heartbeats, the claim, progress, failures, the reaper.
//! - [`sighting`]: heartbeats that change nothing else, written in batches.
//! - [`commit`]: a provider's signed claim, checked and accepted.
//! - [`audit`]: sampled replays by validators, verdicts, slashing, rollback.
//! - [`blob`]: the blob store (datasets, checkpoints), streamed and size-capped.
//! - [`events`]: the job event log and its live stream (server-sent events).
//! - [`ledger`]: double-entry bookkeeping of every piconero.
//! - [`escrow`]: budgets held from submit, segments paid, the rest refunded.
//! - [`money`]: balances, the faucet, deposits, withdrawals and stakes.
//! - [`wallet`]: Monero deposits and payouts through the pool's wallet.
//! - [`proof`]: hardware proofs (a seeded multiplication checked with
//!   Freivalds' algorithm) at registration and at random times after.
//! - [`presence`]: providers' status history, disconnections, GPUs claimed
//!   twice, what the pool pays.
//! - [`booking`]: providers reserved for a customer's window.
//! - [`model`]: the model a job trains, sized at submit and held up
//!   against every committed checkpoint.
//! - [`clock`]: where the pool reads the time (the system's, or one tests
//!   move by hand).
//! - [`challenge`]: single-use nonces that store nothing until used, under
//!   the pool's key (shared by all its processes).
//! - [`throttle`]: per-client limits on the routes anyone can call.
//! - [`tls`]: the API over TLS, with a certificate from files or one the
//!   pool makes and keeps.
//! - [`overview`]: the pool at a glance (providers by status, jobs by
//!   state, money by ledger account kind, …), read from its database.
//! - [`metrics`]: `GET /metrics`, the API's requests and the overview for
//!   Prometheus.
//!
//! ```no_run
//! # async fn run() -> Result<(), gradpool_pool::PoolError> {
//! use gradpool_pool::{Pool, PoolConfig};
//! let pool = Pool::open(PoolConfig { data_dir: "data".into(), ..PoolConfig::default() }).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7070").await?;
//! pool.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod api;
pub mod audit;
pub mod auth;
pub mod blob;
pub mod booking;
pub mod certification;
pub mod challenge;
pub mod clock;
pub mod commit;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod error;
pub mod escrow;
pub mod events;
pub mod job;
pub mod lease;
pub mod ledger;
pub mod metrics;
pub mod model;
pub mod money;
pub mod overview;
pub mod placement;
pub mod presence;
pub mod privacy;
pub mod proof;
pub mod queue;
pub mod registration;
pub mod round;
pub mod sighting;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod tx;
pub mod wallet;

pub use config::{
    MoneyBackend, MoneyConfig, ObjectStorage, PoolConfig, S3Credentials, VerificationConfig,
};
pub use error::PoolError;
pub use throttle::ThrottleConfig;

use gradpool_core::wire::{AccountCreated, JobEvent};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{broadcast, Mutex, Notify};

/// A running pool: a cheap, clonable handle to its database, blob store,
/// leases and event bus.
#[derive(Clone)]
pub struct Pool {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: PoolConfig,
    pub(crate) db: sqlx::AnyPool,
    /// Whether this process runs the background loops (one process does,
    /// across all that serve the pool).
    pub(crate) leadership: db::Leadership,
    pub(crate) blobs: blob::BlobStore,
    /// Serialises write transactions: SQLite has one writer anyway, and
    /// taking the lock up front avoids busy-snapshot failures of deferred
    /// transactions that read before they write.
    pub(crate) write_lock: Mutex<()>,
    /// Writers waiting for the lock: how far behind the pool runs, which
    /// the reaper allows for before it calls a lease or a provider lost.
    pub(crate) backlog: tx::Backlog,
    /// Woken whenever a task is queued; long-polling heartbeats wait on it.
    pub(crate) work: Notify,
    /// Every job event, after its transaction committed.
    pub(crate) events: broadcast::Sender<Arc<JobEvent>>,
    /// Cancelled when serving stops: ends event streams and long polls.
    pub(crate) stop: tokio_util::sync::CancellationToken,
    /// Single-use nonces of registrations and signed nonces.
    pub(crate) challenges: challenge::Challenges,
    /// Per-client limits on the open routes.
    pub(crate) throttle: throttle::Throttle,
    /// Heartbeats that changed nothing else, not yet written.
    pub(crate) sightings: sighting::Sightings,
    /// Heartbeats on their way to claim now ([`lease::MAX_CLAIMERS`]).
    pub(crate) claimers: std::sync::atomic::AtomicUsize,
    /// Heartbeats waiting for work now.
    pub(crate) long_polls: std::sync::atomic::AtomicUsize,
    /// What this process measured of the API (`GET /metrics`).
    pub(crate) metrics: metrics::Metrics,
}

impl Pool {
    /// How a customer adds money on this pool: the faucet on a dev pool,
    /// a deposit on a Monero one (for refusals that ask for more).
    pub(crate) fn fund_hint(&self) -> &'static str {
        match self.inner.config.money.backend {
            config::MoneyBackend::Dev => "add test money (gradpool account faucet --amount X)",
            config::MoneyBackend::Monero(_) => "deposit more (gradpool account deposit)",
        }
    }

    /// The fees taken from every segment's price.
    pub(crate) fn fees(&self) -> escrow::Fees {
        escrow::Fees {
            pool_bps: self.inner.config.money.pool_fee_bps,
            validator_bps: self.inner.config.money.validator_fee_bps,
        }
    }

    pub(crate) fn lease_ms(&self) -> i64 {
        i64::from(self.inner.config.lease_seconds) * 1000
    }

    /// Opens (or creates) the pool's data directory: the database
    /// `pool.sqlite` (WAL, busy timeout, foreign keys, migrated), or the
    /// PostgreSQL database of [`PoolConfig::database`] (migrated), and the
    /// blob store `blobs/`.
    pub async fn open(config: PoolConfig) -> Result<Pool, PoolError> {
        if config.heartbeat_seconds == 0 || 2 * config.heartbeat_seconds > config.lease_seconds {
            return Err(PoolError::BadRequest(format!(
                "lease_seconds ({}) must be at least twice heartbeat_seconds ({}, at least 1): \
                 otherwise a working provider loses its lease between two heartbeats",
                config.lease_seconds, config.heartbeat_seconds
            )));
        }
        let fees = u64::from(config.money.pool_fee_bps) + u64::from(config.money.validator_fee_bps);
        if fees > 10_000 {
            return Err(PoolError::BadRequest(format!(
                "pool_fee_bps + validator_fee_bps is {fees}: fees above 10000 basis points (100%) \
                 would take more than a segment's price"
            )));
        }
        tokio::fs::create_dir_all(&config.data_dir).await?;
        let db = db::open(
            &config.data_dir.join("pool.sqlite"),
            config.database.as_ref(),
        )
        .await?;
        let blobs = blob::BlobStore::open(
            config.data_dir.join("blobs"),
            config.object_storage.as_ref(),
        )
        .await?;
        let (events, _) = broadcast::channel(1024);
        let throttle = config.throttle;
        let leadership = db::Leadership::new(config.database.clone());
        let challenges = challenge::Challenges::open(&db).await?;
        tracing::info!(data_dir = %config.data_dir.display(), "pool opened");
        let pool = Pool {
            inner: Arc::new(Inner {
                config,
                db,
                leadership,
                blobs,
                write_lock: Mutex::new(()),
                backlog: tx::Backlog::default(),
                work: Notify::new(),
                events,
                stop: tokio_util::sync::CancellationToken::new(),
                challenges,
                throttle: throttle::Throttle::new(throttle),
                sightings: Default::default(),
                claimers: Default::default(),
                long_polls: Default::default(),
                metrics: metrics::Metrics::default(),
            }),
        };
        pool.learn_missing_models().await?;
        Ok(pool)
    }

    /// The pool's database (for operators' tools and tests that read it).
    pub fn database(&self) -> &sqlx::AnyPool {
        &self.inner.db
    }

    /// Which engine the pool's database runs on.
    pub fn dialect(&self) -> db::Dialect {
        db::Dialect::of_pool(&self.inner.db)
    }

    /// The pool's money ledger.
    pub fn ledger(&self) -> ledger::Ledger {
        ledger::Ledger::with_clock(self.inner.db.clone(), self.inner.config.clock.clone())
    }

    /// Now, by the pool's clock, in unix milliseconds.
    pub fn now(&self) -> i64 {
        self.inner.config.clock.now_ms()
    }

    /// The pool's settings.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// The HTTP API as an axum router (state included).
    pub fn router(&self) -> axum::Router {
        api::router(self.clone())
    }

    /// Serves the API on `listener` (a [`tokio::net::TcpListener`] for
    /// plain HTTP, a [`tls::TlsListener`] for HTTPS) until `shutdown`
    /// resolves; runs the lease reaper in the background meanwhile. When
    /// `shutdown` resolves, event streams and long polls end and in-flight
    /// requests finish; a pool serves once (open it again to serve again).
    pub async fn serve<L>(
        self,
        listener: L,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), PoolError>
    where
        L: axum::serve::Listener<Addr = std::net::SocketAddr>,
        api::PeerAddr:
            for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
    {
        let stop = self.inner.stop.clone();
        let reaper = tokio::spawn(self.clone().run_reaper(stop.clone()));
        let wallet = tokio::spawn(self.clone().run_wallet(stop.clone()));
        let relay = match self.dialect() {
            db::Dialect::Postgres => Some(tokio::spawn(self.clone().run_relay(stop.clone()))),
            db::Dialect::Sqlite => None,
        };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "pool listening");
        }
        let app = self.router();
        let stop_serving = stop.clone();
        let app = app.into_make_service_with_connect_info::<api::PeerAddr>();
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = shutdown => {}
                    _ = stop_serving.cancelled() => {}
                }
                stop_serving.cancel();
            })
            .await;
        stop.cancel();
        let _ = reaper.await;
        let _ = wallet.await;
        if let Some(relay) = relay {
            let _ = relay.await;
        }
        result.map_err(PoolError::Io)
    }

    /// Creates a customer account, as `POST /v1/accounts` does (but
    /// regardless of [`PoolConfig::open_signup`]).
    pub async fn create_account(&self, name: &str) -> Result<AccountCreated, PoolError> {
        auth::create_account(self, name).await
    }
}

/// The pool's modules from the bottom layer up. A module may use only the
/// modules before it: the graph is one-way, and the test below keeps it so.
/// (The [`Pool`] handle, declared here at the root, is the one type every
/// layer shares; each module adds the public methods of its concern.)
#[cfg(test)]
const LAYERS: &[&str] = &[
    "clock",
    "db",
    "ledger",
    "error",
    "sighting",
    "store",
    "challenge",
    "throttle",
    "tls",
    "tx",
    "auth",
    "model",
    "queue",
    "presence",
    "proof",
    "certification",
    "privacy",
    "overview",
    "metrics",
    "escrow",
    "money",
    "wallet",
    "config",
    "placement",
    "audit",
    "job",
    "lease",
    "registration",
    "round",
    "commit",
    "booking",
    "events",
    "blob",
    "dashboard",
    "api",
];

#[cfg(test)]
mod tests {
    use super::LAYERS;

    /// The modules a source file names through `crate::`.
    fn uses(source: &str) -> std::collections::BTreeSet<String> {
        let code: String = source
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let mut out = std::collections::BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for part in group.split(',') {
                    out.insert(part.trim().split("::").next().unwrap_or("").to_owned());
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                out.insert(name);
            }
        }
        out
    }

    #[test]
    fn every_module_uses_only_the_layers_below_it() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let module = path.file_stem().unwrap().to_str().unwrap().to_owned();
            if module == "lib" {
                continue;
            }
            let layer = LAYERS
                .iter()
                .position(|m| *m == module)
                .unwrap_or_else(|| panic!("module {module} is in no layer of LAYERS"));
            files += 1;
            for used in uses(&std::fs::read_to_string(&path).unwrap()) {
                if used == module {
                    continue;
                }
                if let Some(other) = LAYERS.iter().position(|m| *m == used) {
                    assert!(
                        other < layer,
                        "{module} uses {used}, which is not below it in LAYERS"
                    );
                }
            }
        }
        assert_eq!(files, LAYERS.len(), "a module of LAYERS has no file");
    }

    #[test]
    fn a_use_group_counts_each_module_it_names() {
        let found =
            uses("use crate::{escrow, ledger::Kind};\nlet x = crate::tx::Write; // crate::api");
        let found: Vec<&str> = found.iter().map(String::as_str).collect();
        assert_eq!(found, ["escrow", "ledger", "tx"]);
    }
}
