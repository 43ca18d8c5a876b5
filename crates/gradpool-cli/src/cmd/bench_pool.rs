//! `gradpool bench pool`: how much load one pool process takes on this
//! machine.
//!
//! A real pool runs as its own process (this binary, `gradpool pool`, on
//! 127.0.0.1, a fresh data directory, hardware proofs and the per-address
//! limits off: every simulated provider comes from one address). Beside it,
//! in this process, `--providers` simulated providers each register with a
//! real signature over a real challenge and then heart-beat every
//! `--interval-seconds`, starting at random offsets. A customer submits
//! sequential jobs (a small GPT, one-step segments, no verification); a
//! provider that is handed a segment uploads a well-formed checkpoint for
//! it and commits it signed, as an agent would, while it goes on beating.
//!
//! Measured over `--seconds` after every provider registered: heartbeats
//! and their latency (p50, p99, max), claims (segments handed out) and
//! commits (accepted) per second, and errors (any failed call). One JSON
//! line with `--json`.

use anyhow::{bail, Context};
use clap::Args;
use gradpool_client::Api;
use gradpool_core::commitment::{chain, loss_trace_hash, registration_message, Commitment};
use gradpool_core::hardware::{DeviceKind, Hardware, Telemetry};
use gradpool_core::wire::{self, Assignment, Heartbeat, RunningTask};
use gradpool_core::{NodeKey, Sha256Hex};
use std::io::BufRead;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `gradpool bench pool` options.
#[derive(Args, Debug, Clone)]
pub struct PoolBenchArgs {
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Simulated providers.
    #[arg(long, default_value_t = 20_000)]
    pub providers: u32,
    /// Seconds between one provider's heartbeats.
    #[arg(long, default_value_t = 5)]
    pub interval_seconds: u32,
    /// Seconds measured, after every provider registered.
    #[arg(long, default_value_t = 30)]
    pub seconds: u32,
    /// Jobs the customer keeps running (each hands out one segment at a
    /// time).
    #[arg(long, default_value_t = 16)]
    pub jobs: u32,
    /// The pool's database: `sqlite` (a file in a fresh data directory),
    /// `postgres` (a throwaway cluster the bench starts: Debian's
    /// `postgresql`), or a `postgres://` URL of an empty database.
    #[arg(long, default_value = "sqlite")]
    pub database: String,
}

/// What one run measured.
#[derive(Debug, serde::Serialize)]
pub struct PoolBenchReport {
    pub database: String,
    pub providers: u32,
    pub interval_seconds: u32,
    pub seconds: f64,
    /// What the providers ask for: `providers / interval_seconds`.
    pub offered_heartbeats_per_sec: f64,
    pub heartbeats: u64,
    pub heartbeats_per_sec: f64,
    pub heartbeat_p50_ms: f64,
    pub heartbeat_p99_ms: f64,
    pub heartbeat_max_ms: f64,
    pub claims: u64,
    pub claims_per_sec: f64,
    pub commits: u64,
    pub commits_per_sec: f64,
    pub errors: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
    /// How long registering every provider took.
    pub registration_seconds: f64,
    /// Providers the pool counted as disconnected at the window's end
    /// though every one was beating (`None`: the pool did not say).
    pub providers_disconnected: Option<u32>,
}

pub async fn run(a: PoolBenchArgs) -> anyhow::Result<ExitCode> {
    if a.providers == 0 || a.interval_seconds == 0 || a.seconds == 0 {
        bail!("--providers, --interval-seconds and --seconds: at least 1");
    }
    let dir = tempfile::tempdir().context("cannot make the pool's data directory")?;
    let (cluster, database) = match a.database.as_str() {
        "sqlite" => (None, None),
        "postgres" => {
            let cluster = crate::postgres::Cluster::start()
                .context("cannot start a PostgreSQL cluster for --database postgres")?;
            let url = cluster.url.clone();
            (Some(cluster), Some(url))
        }
        url => {
            gradpool_pool::db::DatabaseUrl::parse(url)?;
            (None, Some(url.to_owned()))
        }
    };
    let (pool, url) = start_pool(
        &dir.path().join("pool"),
        a.interval_seconds,
        database.as_deref(),
    )?;
    let result = measure(&a, &url).await;
    drop(pool);
    drop(cluster);
    let report = result?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// The pool process, killed when dropped.
struct PoolProcess(std::process::Child);

impl Drop for PoolProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `gradpool pool` on a free port; its process and URL.
fn start_pool(
    dir: &std::path::Path,
    interval: u32,
    database: Option<&str>,
) -> anyhow::Result<(PoolProcess, String)> {
    let exe = std::env::current_exe().context("cannot find this program")?;
    let lease = (3 * interval).max(15).to_string();
    let mut command = std::process::Command::new(exe);
    if let Some(database) = database {
        command.env("GRADPOOL_DATABASE", database);
    }
    let mut child = command
        .args(["pool", "--listen", "127.0.0.1:0", "--no-hardware-proof"])
        .args(["--heartbeat-seconds", &interval.to_string()])
        .args(["--lease-seconds", &lease])
        .args(["--anonymous-per-minute", "0", "--signups-per-hour", "0"])
        .args(["--faucet-per-hour", "0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the pool")?;
    let stdout = child.stdout.take().context("the pool's output")?;
    let pool = PoolProcess(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .with_context(|| format!("the pool did not say where it listens: {line:?}"))?
        .to_owned();
    Ok((pool, url))
}

/// Counters the simulated providers share.
#[derive(Default)]
struct Tally {
    /// Set once every provider registered: from then on, calls count.
    measuring: AtomicBool,
    heartbeats: AtomicU64,
    claims: AtomicU64,
    commits: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Heartbeat latencies while measuring, in microseconds.
    latencies: Mutex<Vec<u32>>,
}

impl Tally {
    fn error(&self, what: &str, e: impl std::fmt::Display) {
        if self.measuring.load(Ordering::Relaxed) {
            self.errors.fetch_add(1, Ordering::Relaxed);
            let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| format!("{what}: {e}"));
        }
    }
}

async fn measure(a: &PoolBenchArgs, url: &str) -> anyhow::Result<PoolBenchReport> {
    let api = Api::new(url, None, &gradpool_client::Trust::default())?;
    let customer = submit_jobs(&api, a.jobs).await?;
    let tally = Arc::new(Tally::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let sessions = register_all(&api, a.providers).await?;
    let registration_seconds = started.elapsed().as_secs_f64();
    let interval = Duration::from_secs(u64::from(a.interval_seconds));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, s) in sessions.into_iter().enumerate() {
        // Spread evenly over one interval, as independent rigs would be.
        let offset = interval.mul_f64(i as f64 / f64::from(a.providers));
        tasks.spawn(beat(s, offset, interval, tally.clone(), stop.clone()));
    }
    // One interval for every provider to have beaten once, then measure.
    tokio::time::sleep(interval).await;
    let keep_busy = tokio::spawn(keep_jobs_running(customer, a.jobs, stop.clone()));
    tally.measuring.store(true, Ordering::Relaxed);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(u64::from(a.seconds))).await;
    tally.measuring.store(false, Ordering::Relaxed);
    let seconds = window.elapsed().as_secs_f64();
    // Providers the pool counted as gone while they were beating.
    let connected = api
        .get::<wire::PoolInfo>("/v1/pool")
        .await
        .map(|i| i.providers_connected);
    stop.cancel();
    keep_busy.abort();
    tasks.shutdown().await;
    let mut lat = std::mem::take(&mut *tally.latencies.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort_unstable();
    let quantile = |q: f64| {
        lat.get(((lat.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    let first_error = tally
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let per_sec = |n: u64| n as f64 / seconds;
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Ok(PoolBenchReport {
        database: match a.database.as_str() {
            "sqlite" => "sqlite".to_owned(),
            _ => "postgres".to_owned(),
        },
        providers: a.providers,
        interval_seconds: a.interval_seconds,
        seconds,
        offered_heartbeats_per_sec: f64::from(a.providers) / f64::from(a.interval_seconds),
        heartbeats: count(&tally.heartbeats),
        heartbeats_per_sec: per_sec(count(&tally.heartbeats)),
        heartbeat_p50_ms: quantile(0.50),
        heartbeat_p99_ms: quantile(0.99),
        heartbeat_max_ms: quantile(1.0),
        claims: count(&tally.claims),
        claims_per_sec: per_sec(count(&tally.claims)),
        commits: count(&tally.commits),
        commits_per_sec: per_sec(count(&tally.commits)),
        errors: count(&tally.errors),
        first_error,
        registration_seconds,
        providers_disconnected: connected.ok().map(|c| a.providers.saturating_sub(c)),
    })
}

/// A small GPT in one-step segments, trained by whoever claims them.
const SPEC: &str = r#"name = "bench"
[model]
kind = "gpt"
n_layer = 1
n_head = 1
n_embd = 8
block_size = 8
[data]
format = "text"
[train]
seed = 7
steps = 100000
batch_size = 2
checkpoint_every = 1
lr = 0.001
[verification]
level = "none"
[budget]
total_xmr = "1"
"#;

/// A funded customer with `jobs` jobs submitted.
async fn submit_jobs(api: &Api, jobs: u32) -> anyhow::Result<Api> {
    let created: wire::AccountCreated = api
        .post(
            "/v1/accounts",
            &wire::CreateAccount {
                name: "bench".into(),
            },
        )
        .await?;
    let mut customer = api.clone();
    customer.set_token(created.api_key);
    let _: serde_json::Value = customer
        .post(
            "/v1/account/faucet",
            &wire::Faucet {
                amount: gradpool_core::Piconero::from_xmr_str("100")?,
            },
        )
        .await?;
    for _ in 0..jobs {
        submit_one(&customer).await?;
    }
    Ok(customer)
}

async fn submit_one(customer: &Api) -> anyhow::Result<()> {
    let data = b"To be, or not to be, that is the question.\n".repeat(4);
    let sha = Sha256Hex::of(&data);
    let tmp = tempfile::NamedTempFile::new()?;
    std::fs::write(tmp.path(), &data)?;
    customer.put_blob(tmp.path(), &sha, |_| {}).await?;
    let _: wire::JobView = customer
        .post(
            "/v1/jobs",
            &wire::SubmitJob {
                spec_toml: SPEC.to_owned(),
                data_sha256: sha,
                booking: None,
                sealed_keys: Vec::new(),
                data_shape: None,
            },
        )
        .await?;
    Ok(())
}

/// Keeps `jobs` jobs running: one that ended is replaced.
async fn keep_jobs_running(customer: Api, jobs: u32, stop: tokio_util::sync::CancellationToken) {
    while !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(list) = customer.get::<Vec<wire::JobView>>("/v1/jobs").await else {
            continue;
        };
        let running = list.iter().filter(|j| !j.status.is_final()).count();
        for _ in running..jobs as usize {
            let _ = submit_one(&customer).await;
        }
    }
}

/// A registered simulated provider.
struct Session {
    key: NodeKey,
    api: Api,
    hardware: Hardware,
}

fn hardware() -> Hardware {
    Hardware {
        device: DeviceKind::Cpu,
        name: "simulated cpu".into(),
        threads: 1,
        memory_bytes: 8 << 30,
        isa: "x86-64-v3".into(),
        uuid: None,
        host_isa: None,
        host_memory_bytes: None,
    }
}

/// Registers `n` providers, 64 at a time.
async fn register_all(api: &Api, n: u32) -> anyhow::Result<Vec<Session>> {
    use futures::StreamExt;
    let registered: Vec<anyhow::Result<Session>> = futures::stream::iter(0..n)
        .map(|i| register(api.clone(), i))
        .buffer_unordered(64)
        .collect()
        .await;
    registered.into_iter().collect()
}

async fn register(api: Api, i: u32) -> anyhow::Result<Session> {
    let key = NodeKey::generate();
    let challenge = api.challenge().await?;
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let public_key = key.public_key();
    let hardware = hardware();
    let req = wire::Register {
        signature: key.sign(&registration_message(&public_key, time, &challenge.nonce)),
        nonce: challenge.nonce,
        public_key,
        name: format!("sim-{i}"),
        hardware: hardware.clone(),
        time,
        resuming: Vec::new(),
        price_per_hour: gradpool_core::Piconero(0),
        benchmark_gflops: None,
        payout: Vec::new(),
        validate: false,
        train: true,
        region: None,
        containers: false,
        encryption_key: None,
        compliance: None,
    };
    let registered = api.register(&req).await?;
    let mut api = api;
    api.set_token(registered.token);
    Ok(Session { key, api, hardware })
}

/// One provider's life: a heartbeat every `interval` from `offset`, and
/// any segment it is handed trained at once (a checkpoint made up, well
/// formed) and committed.
async fn beat(
    s: Session,
    offset: Duration,
    interval: Duration,
    tally: Arc<Tally>,
    stop: tokio_util::sync::CancellationToken,
) {
    let s = Arc::new(s);
    let running: Arc<Mutex<Option<RunningTask>>> = Arc::default();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let current = running.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let hb = Heartbeat {
            telemetry: Telemetry {
                tasks_running: u32::from(current.is_some()),
                ..Telemetry::default()
            },
            capacity: u32::from(current.is_none()),
            running: current.into_iter().collect(),
            wait_seconds: 0,
            paused: None,
        };
        let sent = Instant::now();
        let reply = s.api.heartbeat(&hb).await;
        let took = sent.elapsed();
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                tally.error("heartbeat", e);
                continue;
            }
        };
        if tally.measuring.load(Ordering::Relaxed) {
            tally.heartbeats.fetch_add(1, Ordering::Relaxed);
            let us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
            tally
                .latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(us);
        }
        for a in reply.assignments {
            if tally.measuring.load(Ordering::Relaxed) {
                tally.claims.fetch_add(1, Ordering::Relaxed);
            }
            *running.lock().unwrap_or_else(|p| p.into_inner()) = Some(RunningTask {
                task_id: a.task_id.clone(),
                step: a.start_step,
            });
            let (s, running, tally) = (s.clone(), running.clone(), tally.clone());
            tokio::spawn(async move {
                match commit(&s, &a).await {
                    Ok(()) if tally.measuring.load(Ordering::Relaxed) => {
                        tally.commits.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(()) => {}
                    Err(e) => tally.error("commit", e),
                }
                *running.lock().unwrap_or_else(|p| p.into_inner()) = None;
            });
        }
    }
}

/// Uploads a well-formed checkpoint for `a` and commits it, signed.
async fn commit(s: &Session, a: &Assignment) -> anyhow::Result<()> {
    let ckpt = checkpoint(a);
    let sha = Sha256Hex::of(&ckpt);
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), &ckpt)?;
    s.api.put_blob(file.path(), &sha, |_| {}).await?;
    let steps = usize::try_from(a.end_step - a.start_step)?;
    let loss_trace: Vec<f32> = (0..steps).map(|i| 4.0 - i as f32 * 0.01).collect();
    let commitment = Commitment {
        job_id: a.job_id.clone(),
        segment: a.segment,
        start_step: a.start_step,
        end_step: a.end_step,
        checkpoint_sha256: sha,
        prev: a.prev_commitment,
        hash: chain(&ckpt, &a.prev_commitment),
        loss_trace_blake3: loss_trace_hash(&loss_trace),
        runtime: gradpool_core::RUNTIME_VERSION.into(),
        class: s.hardware.class(),
        pseudo_gradient_sha256: None,
    };
    let body = wire::Commit {
        commitment: s.key.sign_commitment(commitment),
        loss_trace,
        eval_loss: None,
        compute_ms: 10,
        dedication: None,
    };
    s.api.commit(&a.task_id, &body).await?;
    Ok(())
}

/// A checkpoint of `a`'s model at its end step: every tensor the model
/// has, values in [0, 1), different for every segment.
fn checkpoint(a: &Assignment) -> Vec<u8> {
    use gradpool_core::checkpoint::{to_bytes, TensorRef, CHECKPOINT_FORMAT};
    let mut rng = gradpool_core::rng::Rng::new(a.end_step ^ (u64::from(a.segment) << 32));
    let mut values = std::collections::BTreeMap::new();
    for p in a.model.params() {
        for prefix in gradpool_core::model::CHECKPOINT_PREFIXES {
            let data: Vec<f32> = (0..p.numel()).map(|_| rng.next_f64() as f32).collect();
            values.insert(format!("{prefix}{}", p.name), (p.shape.clone(), data));
        }
    }
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("format".to_owned(), CHECKPOINT_FORMAT.to_owned());
    meta.insert("step".to_owned(), a.end_step.to_string());
    meta.insert(
        "model".to_owned(),
        serde_json::to_string(&a.model).unwrap_or_default(),
    );
    let tensors = values
        .iter()
        .map(|(k, (shape, data))| (k.clone(), TensorRef { shape, data }))
        .collect();
    to_bytes(&tensors, &meta)
}

fn print_report(r: &PoolBenchReport) {
    println!(
        "pool on {} with {} providers beating every {} s ({:.0}/s offered), {:.1} s measured",
        r.database, r.providers, r.interval_seconds, r.offered_heartbeats_per_sec, r.seconds
    );
    println!(
        "heartbeats  {:.0}/s   p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        r.heartbeats_per_sec, r.heartbeat_p50_ms, r.heartbeat_p99_ms, r.heartbeat_max_ms
    );
    println!(
        "claims      {:.1}/s   commits {:.1}/s   errors {}",
        r.claims_per_sec, r.commits_per_sec, r.errors
    );
    if let Some(e) = &r.first_error {
        println!("first error {e}");
    }
    println!("registered  in {:.1} s", r.registration_seconds);
    if let Some(n) = r.providers_disconnected {
        println!("disconnected at the end: {n}");
    }
}
