//! The agent's main loop: register, heart-beat, take segments, train them,
//! commit them.

mod confidential;
mod container;
mod round;

use crate::device::Device;
use crate::limits::{Gate, PauseReason};
use crate::segment::{self, SegmentEnd, SegmentFiles, SegmentRun};
use crate::state::{DataDir, RunningAgent, Trained};
use crate::ProviderError;
use gradpool_client::{Api, ClientError};
use gradpool_core::commitment::ReplayReport;
use gradpool_core::commitment::{self, registration_message, Commitment};
use gradpool_core::wire::{self, Assignment, TaskKind};
use gradpool_core::{NodeKey, Piconero, Sha256Hex, TaskId, RUNTIME_VERSION};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// The pool's base URL (`https://pool.example:7443`, or
    /// `http://127.0.0.1:7070` on this machine).
    pub pool_url: String,
    /// How the pool's TLS certificate is trusted: pinned, remembered on
    /// first use, or signed by an authority.
    pub trust: gradpool_client::Trust,
    /// Node key, blob cache and tasks in flight.
    pub data_dir: PathBuf,
    /// A name shown in the pool's listings.
    pub name: String,
    /// The `gradpool` binary, run as `gradpool segment run …` for each segment.
    pub program: PathBuf,
    /// How many segments may train at once.
    pub max_concurrent_tasks: u32,
    /// The least this rig takes per GPU-hour (per CPU-hour on a CPU).
    pub price_per_hour: Piconero,
    /// Where payouts go, by shares. Checked against the pool's network when
    /// the provider is configured (see `gradpool_monero::Address`).
    pub payout: Vec<wire::PayoutSplit>,
    /// The device's matrix-multiplication speed in GFLOP/s, if measured:
    /// the pool caps a segment's billed time with it.
    pub benchmark_gflops: Option<f64>,
    /// Take replay tasks: re-execute other providers' segments for audits
    /// (paid at this rig's rate).
    pub validate: bool,
    /// Take training tasks; `false` (with `validate`) makes a dedicated
    /// validator.
    pub train: bool,
    /// Where the rig is, as its owner says (`eu-west`): jobs that keep to
    /// a region (`resources.region`) train only on rigs there.
    pub region: Option<String>,
    /// Run container jobs (the customer's own script in its image, under
    /// podman in a sandbox): the owner's opt-in, off by default.
    pub accept_containers: bool,
    /// The most disk the container images may take, in bytes; the least
    /// recently used are removed beyond it.
    pub image_cache_bytes: u64,
    /// Where the container images are kept: `images/` in the data
    /// directory unless given (agents of one machine may share one).
    pub image_store: Option<PathBuf>,
    /// Where a confidential job's plaintext (its dataset, checkpoints)
    /// lives while a task runs: a tmpfs, `/dev/shm` unless given. It is
    /// never written to the data directory.
    pub plaintext_dir: Option<PathBuf>,
    /// Started for the isolated tier (`tier = "isolated"`): the host's
    /// compliance checks run at every registration and go with it, signed.
    pub isolated: bool,
    /// The owner's limits; outside its schedule the agent finishes what it
    /// runs and takes nothing new.
    pub limits: crate::limits::Limits,
    /// The local time the schedule is read by (the system's; tests set
    /// their own).
    pub clock: Arc<dyn crate::limits::LocalClock>,
    /// How this provider cheats (test builds only).
    #[cfg(feature = "cheat")]
    pub cheat: crate::cheat::Cheat,
}

impl ProviderConfig {
    /// Where the container images are kept: [`ProviderConfig::image_store`]
    /// or `images/` in the data directory.
    pub fn image_store(&self) -> PathBuf {
        self.image_store
            .clone()
            .unwrap_or_else(|| self.data_dir.join("images"))
    }
}

impl Default for ProviderConfig {
    fn default() -> ProviderConfig {
        ProviderConfig {
            pool_url: "http://127.0.0.1:7070".into(),
            trust: gradpool_client::Trust::default(),
            data_dir: PathBuf::from("gradpool-provider"),
            name: "provider".into(),
            program: PathBuf::from("gradpool"),
            max_concurrent_tasks: 1,
            price_per_hour: Piconero::ZERO,
            payout: Vec::new(),
            benchmark_gflops: None,
            validate: false,
            train: true,
            region: None,
            accept_containers: false,
            image_cache_bytes: DEFAULT_IMAGE_CACHE_BYTES,
            image_store: None,
            plaintext_dir: None,
            isolated: false,
            limits: crate::limits::Limits::default(),
            clock: Arc::new(crate::limits::SystemClock),
            #[cfg(feature = "cheat")]
            cheat: crate::cheat::Cheat::default(),
        }
    }
}

/// The image cache's cap when the owner sets none: 20 GiB.
pub const DEFAULT_IMAGE_CACHE_BYTES: u64 = 20 << 30;

/// A segment process that reports nothing for this long is stuck (a hung
/// device, a deadlock): it is killed and the segment reported as failed.
const SEGMENT_STALL: Duration = Duration::from_secs(600);

/// What every task worker shares.
struct Shared {
    api: tokio::sync::RwLock<Api>,
    dir: DataDir,
    key: NodeKey,
    /// Its public half is announced at registration, signed by `key`,
    /// when the agent can hold plaintext in memory (`announce`).
    encryption: gradpool_core::privacy::EncryptionKey,
    announce: bool,
    device: Arc<dyn Device>,
    config: ProviderConfig,
    /// Each worker sends its task id here when it ends, so the loop frees
    /// its slot and asks for more work at once.
    worker_ended: mpsc::UnboundedSender<TaskId>,
    /// The percent of the time segments may train: the owner's
    /// `max_gpu_share`, lowered further while a power cap is held by
    /// resting. Segment processes re-read it from [`Shared::share_file`]
    /// at every step.
    share: AtomicU8,
    share_file: PathBuf,
    /// Segments and replays running now.
    running: AtomicU32,
    /// Checkpoints being uploaded because the pool asked for them.
    uploading: std::sync::Mutex<std::collections::HashSet<Sha256Hex>>,
    /// The container images, when the owner accepts container jobs and
    /// podman works here.
    images: Option<container::Images>,
}

impl Shared {
    fn share(&self) -> u8 {
        self.share.load(Ordering::Relaxed)
    }

    /// A segment process, training or replaying steps `[from, to)` of
    /// `files`: on the device, at the owner's share of the time (re-read
    /// from the share file while a power cap is held by resting).
    fn segment_run(&self, files: SegmentFiles, from: u64, to: u64) -> SegmentRun {
        let share = self.share();
        let paced = share < 100 || self.config.limits.power_limit_w.is_some();
        SegmentRun {
            max_share: share,
            max_share_file: paced.then(|| self.share_file.clone()),
            ..SegmentRun::new(files, from, to, self.device.segment_device())
        }
    }

    /// Sets the share and tells the running segment processes (written
    /// aside, then renamed: a process never reads half a file).
    fn set_share(&self, share: u8) {
        self.share.store(share, Ordering::Relaxed);
        let tmp = self.share_file.with_extension("tmp");
        let written = std::fs::write(&tmp, share.to_string())
            .and_then(|()| std::fs::rename(&tmp, &self.share_file));
        if let Err(e) = written {
            tracing::warn!(error = %e, file = %self.share_file.display(), "cannot write the GPU share for running segments");
        }
    }
}

struct Worker {
    cancel: CancellationToken,
    step: Arc<AtomicU64>,
    /// The most foreign processes seen on the device while it ran.
    foreign: Arc<AtomicU32>,
    handle: JoinHandle<()>,
}

/// Runs the agent until `shutdown` is cancelled. Tasks in flight at shutdown
/// are killed but stay recorded, so the next start resumes them if the pool
/// still leases them to this provider.
/// What this agent runs with, for `agent.json`.
fn running_agent(config: &ProviderConfig, key: &NodeKey, device: &dyn Device) -> RunningAgent {
    let hw = device.hardware();
    RunningAgent {
        pid: std::process::id(),
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        provider_id: key.provider_id(),
        pool: config.pool_url.clone(),
        name: config.name.clone(),
        device: format!("{} ({})", hw.name, hw.class()),
        threads: device
            .segment_device()
            .threads
            .and_then(|t| u32::try_from(t).ok()),
        max_concurrent_tasks: config.max_concurrent_tasks,
        price_per_hour: config.price_per_hour,
        payout: config.payout.clone(),
        validate: config.validate,
        train: config.train,
        limits: config.limits.clone(),
        containers: config
            .accept_containers
            .then(|| crate::state::ContainerSettings {
                image_store: config.image_store(),
                image_cache_bytes: config.image_cache_bytes,
            }),
    }
}

pub async fn run(
    config: ProviderConfig,
    device: Arc<dyn Device>,
    shutdown: CancellationToken,
) -> Result<(), ProviderError> {
    let dir = DataDir::open(&config.data_dir)?;
    let lock = dir.lock()?;
    let key = NodeKey::load_or_create(&dir.node_key_path())?;
    let encryption =
        gradpool_core::privacy::EncryptionKey::load_or_create(&dir.encryption_key_path())?;
    dir.record_agent(&lock, &running_agent(&config, &key, device.as_ref()))?;
    tracing::info!(provider = %key.provider_id(), pool = %config.pool_url,
        data_dir = %config.data_dir.display(), "provider starting");
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    // The power cap: the driver's if it lets us set it, else held here by
    // resting between steps against the measured draw.
    let mut governor = match config.limits.power_limit_w {
        None => None,
        Some(watts) => match device.set_power_limit(watts) {
            Ok(()) => {
                tracing::info!(watts, "power limit set in the driver");
                None
            }
            Err(e) => {
                tracing::warn!(watts, reason = %e, "holding the power limit by resting between steps");
                Some(crate::limits::PowerGovernor::new(
                    watts,
                    config.limits.max_gpu_share,
                ))
            }
        },
    };
    let share_file = dir.root().join("gpu-share");
    let api = Api::new(&config.pool_url, None, &config.trust)?;
    let images = if config.accept_containers {
        let store = config.image_store();
        let owner = key.provider_id().to_string();
        container::Images::open(&store, config.image_cache_bytes, &owner).await
    } else {
        None
    };
    confidential::sweep(&config, key.provider_id().as_str()).await;
    let shared = Arc::new(Shared {
        api: tokio::sync::RwLock::new(api),
        dir,
        key,
        encryption,
        announce: confidential::can_hold_plaintext(&config),
        device,
        share: AtomicU8::new(config.limits.max_gpu_share),
        config,
        worker_ended: ended_tx,
        share_file,
        running: AtomicU32::new(0),
        uploading: std::sync::Mutex::default(),
        images,
    });
    shared.set_share(shared.config.limits.max_gpu_share);
    if governor.is_some()
        && shared
            .device
            .telemetry(crate::device::Load {
                tasks_running: 0,
                share: shared.share(),
            })
            .power_w
            .is_none()
    {
        tracing::warn!(
            "power_limit_w: this device does not report its power draw, so the limit cannot be held; \
             use max_gpu_share to bound its work instead"
        );
        governor = None;
    }
    let mut workers: HashMap<TaskId, Worker> = HashMap::new();

    let in_flight: Vec<TaskId> = shared
        .dir
        .tasks_in_flight()
        .into_iter()
        .map(|a| a.task_id)
        .collect();
    let Some(mut session) = register(&shared, in_flight, &shutdown).await else {
        return Ok(());
    };
    start_resumed(&shared, &mut workers, &session, &shutdown);
    if let Some(g) = governor {
        tokio::spawn(hold_power(shared.clone(), g, shutdown.clone()));
    }

    let mut gate = Gate::new(shared.config.limits.clone());
    let mut paused: Option<PauseReason> = None;
    let mut backoff = 1u64;
    while !shutdown.is_cancelled() {
        while let Ok(id) = ended.try_recv() {
            workers.remove(&id);
        }
        let mut telemetry = shared.device.telemetry(crate::device::Load {
            tasks_running: workers.len() as u32,
            share: shared.share(),
        });

        let foreign_now = telemetry.foreign_processes;
        for w in workers.values() {
            w.foreign.fetch_max(foreign_now, Ordering::Relaxed);
        }
        let pause = gate.check(
            shared
                .config
                .limits
                .schedule
                .is_open_at(shared.config.clock.as_ref()),
            telemetry.temperature_c,
            telemetry.foreign_processes as usize,
        );
        if pause != paused {
            match pause {
                // Outside the schedule the segments in flight finish.
                Some(PauseReason::Schedule) => tracing::info!(
                    running = workers.len(),
                    "schedule closed: finishing what runs, taking no new work"
                ),
                // Too hot, or the owner wants the device: hand the work back now.
                Some(reason) => {
                    tracing::info!(%reason, temperature_c = ?telemetry.temperature_c, released = workers.len(), "pausing: handing running tasks back");
                    let api = shared.api.read().await.clone();
                    for (id, w) in &workers {
                        if let Err(e) = api.release(id, reason.as_str()).await {
                            tracing::warn!(task = %id, error = %e.report(), "cannot hand the task back; its lease will lapse");
                        }
                        w.cancel.cancel();
                    }
                    telemetry.tasks_running = 0;
                }
                None => {
                    tracing::info!(was = ?paused.map(|r| r.as_str()), temperature_c = ?telemetry.temperature_c, "resuming work")
                }
            }
            paused = pause;
        }
        let running: Vec<wire::RunningTask> = workers
            .iter()
            .map(|(id, w)| wire::RunningTask {
                task_id: id.clone(),
                step: w.step.load(Ordering::Relaxed),
            })
            .collect();
        let capacity = if paused.is_some() {
            0
        } else {
            shared
                .config
                .max_concurrent_tasks
                .saturating_sub(running.len() as u32)
        };
        // While paused, check the limits again at every heartbeat.
        let wait_seconds = if running.is_empty() && paused.is_none() {
            (session.lease_seconds / 2).max(1)
        } else {
            0
        };
        let beat = wire::Heartbeat {
            telemetry,
            running,
            capacity,
            wait_seconds,
            paused: paused.map(|r| r.as_str().to_owned()),
        };
        let api = shared.api.read().await.clone();
        let reply = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = api.heartbeat(&beat) => r,
        };
        match reply {
            Ok(reply) => {
                backoff = 1;
                for id in &reply.cancel {
                    if let Some(w) = workers.get(id) {
                        tracing::info!(task = %id, "pool cancelled the task");
                        w.cancel.cancel();
                    }
                }
                round::upload_kept(&shared, reply.wanted);
                if reply.compliance_due && shared.config.isolated {
                    let shared = shared.clone();
                    let api = api.clone();
                    tokio::spawn(async move { send_compliance(&shared, &api).await });
                }
                if let Some(challenge) = reply.proof {
                    // Beside the running tasks, whose leases the next
                    // heartbeats keep renewing.
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        answer_proof(&shared, &api, &challenge).await;
                    });
                }
                let got_work = !reply.assignments.is_empty();
                for a in reply.assignments {
                    spawn_worker(&shared, &mut workers, a, foreign_now, &shutdown);
                }
                if got_work && workers.len() < shared.config.max_concurrent_tasks as usize {
                    continue;
                }
            }
            Err(e) if e.is_unauthorized() => {
                tracing::warn!("the pool no longer knows this session; registering again");
                let ids = workers.keys().cloned().collect();
                match register(&shared, ids, &shutdown).await {
                    Some(s) => {
                        for id in &s.dropped {
                            if let Some(w) = workers.get(id) {
                                w.cancel.cancel();
                            }
                        }
                        session = s;
                    }
                    None => break,
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e.report(), retry_in_s = backoff, "heartbeat failed");
                sleep_or_shutdown(Duration::from_secs(backoff), &shutdown).await;
                backoff = (backoff * 2).min(30);
                continue;
            }
        }
        if wait_seconds == 0 || !workers.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(id) = ended.recv() => { workers.remove(&id); }
                _ = tokio::time::sleep(Duration::from_secs(u64::from(session.heartbeat_seconds.max(1)))) => {}
            }
        }
    }

    for w in workers.values() {
        w.cancel.cancel();
    }
    for (_, w) in workers {
        let _ = w.handle.await;
    }
    tracing::info!("provider stopped");
    Ok(())
}

/// Registers with the pool, retrying while it is unreachable. `None` means
/// shutdown was requested first.
async fn register(
    shared: &Arc<Shared>,
    resuming: Vec<TaskId>,
    shutdown: &CancellationToken,
) -> Option<wire::Registered> {
    let mut backoff = 1u64;
    loop {
        let api = shared.api.read().await.without_token();
        let attempt = async {
            let challenge = api.challenge().await?;
            let time = unix_now();
            let public_key = shared.key.public_key();
            let req = wire::Register {
                signature: shared.key.sign(&registration_message(
                    &public_key,
                    time,
                    &challenge.nonce,
                )),
                nonce: challenge.nonce,
                public_key,
                name: shared.config.name.clone(),
                hardware: shared.device.hardware(),
                time,
                resuming: resuming.clone(),
                price_per_hour: shared.config.price_per_hour,
                benchmark_gflops: shared.config.benchmark_gflops,
                payout: shared.config.payout.clone(),
                validate: shared.config.validate,
                train: shared.config.train,
                region: shared.config.region.clone(),
                containers: shared.images.is_some(),
                encryption_key: shared.announce.then(|| {
                    gradpool_core::privacy::AnnouncedKey::announce(&shared.key, &shared.encryption)
                }),
                compliance: shared.config.isolated.then(|| {
                    crate::compliance::run_checks(
                        &crate::compliance::SystemHost,
                        &shared.config.data_dir,
                        time,
                    )
                    .sign(&shared.key)
                }),
            };
            api.register(&req).await
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = attempt => r,
        };
        match result {
            Ok(reg) => {
                tracing::info!(provider = %reg.provider_id, resumed = reg.resume.len(), "registered with the pool");
                let mut api = api;
                api.set_token(reg.token.clone());
                if let Some(challenge) = &reg.proof {
                    answer_proof(shared, &api, challenge).await;
                }
                *shared.api.write().await = api;
                return Some(reg);
            }
            Err(e) => {
                tracing::warn!(error = %e.report(), retry_in_s = backoff, "cannot register with the pool");
                sleep_or_shutdown(Duration::from_secs(backoff), shutdown).await;
                backoff = (backoff * 2).min(30);
            }
        }
    }
}

fn start_resumed(
    shared: &Arc<Shared>,
    workers: &mut HashMap<TaskId, Worker>,
    session: &wire::Registered,
    shutdown: &CancellationToken,
) {
    for id in &session.dropped {
        tracing::info!(task = %id, "the pool gave the task to someone else; dropping it");
        shared.dir.end_task(id);
    }
    let known: Vec<&TaskId> = session
        .resume
        .iter()
        .map(|a| &a.task_id)
        .chain(&session.dropped)
        .collect();
    for a in shared.dir.tasks_in_flight() {
        if !known.contains(&&a.task_id) {
            shared.dir.end_task(&a.task_id);
        }
    }
    for a in &session.resume {
        tracing::info!(task = %a.task_id, segment = a.segment, "resuming a task from before the restart");
        spawn_worker(shared, workers, a.clone(), 0, shutdown);
    }
}

/// Starts a worker for `a`; `foreign` is how many foreign processes the
/// device runs as it starts.
fn spawn_worker(
    shared: &Arc<Shared>,
    workers: &mut HashMap<TaskId, Worker>,
    a: Assignment,
    foreign: u32,
    shutdown: &CancellationToken,
) {
    if workers.contains_key(&a.task_id) {
        return;
    }
    let cancel = shutdown.child_token();
    let step = Arc::new(AtomicU64::new(a.start_step));
    let foreign = Arc::new(AtomicU32::new(foreign));
    let id = a.task_id.clone();
    let handle = {
        let shared = shared.clone();
        let cancel = cancel.clone();
        let step = step.clone();
        let foreign = foreign.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let task = a.task_id.clone();
            shared.running.fetch_add(1, Ordering::Relaxed);
            let outcome = run_task(&shared, &a, &cancel, &step, &foreign).await;
            shared.running.fetch_sub(1, Ordering::Relaxed);
            match outcome {
                Ok(TaskEnd::Committed) => shared.dir.end_task(&task),
                Ok(TaskEnd::Cancelled) if shutdown.is_cancelled() => {
                    tracing::info!(task = %task, "task stopped by shutdown; it resumes on restart if the lease holds");
                }
                Ok(TaskEnd::Cancelled) => shared.dir.end_task(&task),
                Err(e) => {
                    tracing::warn!(task = %task, error = %e.report(), "task failed");
                    let api = shared.api.read().await.clone();
                    if let Err(e2) = api.fail(&task, &e.to_string()).await {
                        tracing::warn!(task = %task, error = %e2.report(), "cannot report the failure");
                    }
                    shared.dir.end_task(&task);
                }
            }
            let _ = shared.worker_ended.send(task);
        })
    };
    workers.insert(
        id,
        Worker {
            cancel,
            step,
            foreign,
            handle,
        },
    );
}

enum TaskEnd {
    Committed,
    Cancelled,
}

/// Trains one segment and commits it, or replays one and reports it.
async fn run_task(
    shared: &Arc<Shared>,
    a: &Assignment,
    cancel: &CancellationToken,
    step: &Arc<AtomicU64>,
    foreign: &AtomicU32,
) -> Result<TaskEnd, ProviderError> {
    match a.kind {
        TaskKind::Replay => return replay(shared, a, cancel).await,
        TaskKind::Outer => return outer_step(shared, a, cancel).await,
        TaskKind::Train => {}
    }
    let task_dir = shared.dir.begin_task(a)?;
    // A confidential job's plaintext stays on a tmpfs, gone with the task.
    let plain = confidential::Plain::open(shared, a)?;
    let out = match &plain {
        Some(p) => p.path("end.safetensors"),
        None => task_dir.join("end.safetensors"),
    };
    let (trained, compute_ms, dedication) = match shared.dir.finished(&a.task_id) {
        Some(trained) => {
            tracing::info!(task = %a.task_id, "segment was trained before the restart; committing it");
            // The training time died with the process: the pool bills what
            // it saw between lease and commit, and nothing is claimed about
            // the device's dedication.
            (trained, 0, None)
        }
        None => {
            tracing::info!(task = %a.task_id, job = %a.job_id, segment = a.segment, from = a.start_step, to = a.end_step, "training segment");
            let spec = container::spec_of(a)?;
            let ran = if spec.container().is_some() {
                let ends = (out.as_path(), plain.as_ref());
                train_container(shared, a, (&spec, &task_dir), ends, cancel, step).await?
            } else {
                let ends = (out.as_path(), plain.as_ref());
                train_native(shared, a, &task_dir, ends, cancel, step, foreign).await?
            };
            match ran {
                Some(ran) => ran,
                None => return Ok(TaskEnd::Cancelled),
            }
        }
    };
    let sent = a
        .round
        .is_some()
        .then(|| out.with_extension("pseudo-gradient.safetensors"));
    let done = Done {
        out: &out,
        sent: sent.as_deref(),
        trained,
        compute_ms,
        dedication,
        plain: plain.as_ref(),
    };
    commit(shared, a, done, cancel).await
}

/// What a trained segment measured: its losses, the billed time, and the
/// device's dedication when it is known.
type Ran = (Trained, u64, Option<wire::Dedication>);

/// Trains a native segment in a `gradpool segment run` child; `None` when
/// cancelled.
async fn train_native(
    shared: &Arc<Shared>,
    a: &Assignment,
    task_dir: &std::path::Path,
    (out, plain): (&std::path::Path, Option<&confidential::Plain>),
    cancel: &CancellationToken,
    step: &Arc<AtomicU64>,
    foreign: &AtomicU32,
) -> Result<Option<Ran>, ProviderError> {
    let spec = task_dir.join("spec.toml");
    let (data, start) = native_inputs(shared, a, &spec, plain).await?;
    let files = SegmentFiles {
        spec,
        data,
        start,
        out: out.to_owned(),
    };
    let (tx, rx) = tokio::sync::watch::channel(None::<wire::Progress>);
    let reporter = tokio::spawn(report_progress(shared.clone(), a.task_id.clone(), rx));
    let started = std::time::Instant::now();
    let mut run = shared.segment_run(files, a.start_step, a.end_step);
    worker_slot(shared, a, &mut run).await?;
    #[cfg(feature = "cheat")]
    if let Some(kind) = shared.config.cheat.kind_for(&a.task_id) {
        tracing::warn!(task = %a.task_id, kind, "cheating on this segment");
        run.cheat = Some(kind.to_owned());
    }
    let end = segment::run_child(
        &shared.config.program,
        &run,
        SEGMENT_STALL,
        cancel.clone(),
        |s, loss, tokens_per_sec| {
            step.store(s + 1, Ordering::Relaxed);
            let _ = tx.send(Some(wire::Progress {
                step: s + 1,
                loss,
                tokens_per_sec,
            }));
        },
    )
    .await
    .map_err(ProviderError::io("cannot run the segment process"))?;
    drop(tx);
    let _ = reporter.await;
    match end {
        SegmentEnd::Done {
            losses,
            eval_loss,
            busy_ms,
            rest_ms,
        } => {
            let trained = Trained { losses, eval_loss };
            shared.dir.finish_training(&a.task_id, &trained)?;
            // Billed: the segment's time less the rests the owner's
            // share imposed; the customer does not pay for those.
            let ms = u64::try_from(started.elapsed().as_millis())
                .unwrap_or(u64::MAX)
                .saturating_sub(rest_ms)
                .max(1);
            let stepping = busy_ms.saturating_add(rest_ms);
            let dedication = wire::Dedication {
                share: if stepping == 0 {
                    1.0
                } else {
                    busy_ms as f64 / stepping as f64
                },
                foreign_processes: foreign.load(Ordering::Relaxed),
            };
            Ok(Some((trained, ms, Some(dedication))))
        }
        SegmentEnd::Cancelled => Ok(None),
        SegmentEnd::Failed { reason } => Err(ProviderError::Segment(reason)),
    }
}

/// A native segment's data and start checkpoint: from the blob cache, or
/// for a confidential job opened into its plaintext directory.
async fn native_inputs(
    shared: &Arc<Shared>,
    a: &Assignment,
    spec: &std::path::Path,
    plain: Option<&confidential::Plain>,
) -> Result<(PathBuf, Option<PathBuf>), ProviderError> {
    let data = fetch(shared, &a.data_sha256).await?;
    let start = match (&a.round, &a.start_checkpoint_sha256) {
        (Some(_), _) => round::start(shared, a, Some((spec, &data))).await?,
        (None, Some(sha)) => Some(fetch(shared, sha).await?),
        (None, None) => None,
    };
    let Some(p) = plain else {
        return Ok((data, start));
    };
    let data = p.opened(&data, "data")?;
    let start = start
        .map(|s| p.opened(&s, "start.safetensors"))
        .transpose()?;
    Ok((data, start))
}

/// Trains a container segment in its sandbox; `None` when cancelled.
async fn train_container(
    shared: &Arc<Shared>,
    a: &Assignment,
    (spec, task_dir): (&gradpool_core::JobSpec, &std::path::Path),
    ends: (&std::path::Path, Option<&confidential::Plain>),
    cancel: &CancellationToken,
    step: &Arc<AtomicU64>,
) -> Result<Option<Ran>, ProviderError> {
    let (tx, rx) = tokio::sync::watch::channel(None::<wire::Progress>);
    let reporter = tokio::spawn(report_progress(shared.clone(), a.task_id.clone(), rx));
    let ran = container::run(shared, a, spec, task_dir, ends, cancel, |s, loss| {
        step.store(s + 1, Ordering::Relaxed);
        let _ = tx.send(Some(wire::Progress {
            step: s + 1,
            loss,
            tokens_per_sec: 0.0,
        }));
    })
    .await;
    drop(tx);
    let _ = reporter.await;
    let Some(container::Ran { end, ms }) = ran? else {
        return Ok(None);
    };
    let trained = Trained {
        losses: end.losses,
        eval_loss: end.eval_loss,
    };
    shared.dir.finish_training(&a.task_id, &trained)?;
    // Billed: the container's run, not the image's download and load.
    Ok(Some((trained, ms, None)))
}

/// What a trained segment leaves to commit: its checkpoint, a parallel
/// job's pseudo-gradient (which is what it sends), its losses and times.
struct Done<'a> {
    out: &'a std::path::Path,
    sent: Option<&'a std::path::Path>,
    trained: Trained,
    compute_ms: u64,
    dedication: Option<wire::Dedication>,
    /// A confidential job's: `out` is plaintext, sent sealed.
    plain: Option<&'a confidential::Plain>,
}

/// A parallel job's segment (or its replay) runs as its worker slot, from
/// the slot's checkpoint of an earlier round when it has one.
async fn worker_slot(
    shared: &Arc<Shared>,
    a: &Assignment,
    run: &mut SegmentRun,
) -> Result<(), ProviderError> {
    let Some(round) = &a.round else {
        return Ok(());
    };
    let worker = round.worker.ok_or_else(|| {
        ProviderError::Segment("a parallel job's segment without its worker slot".into())
    })?;
    run.worker = Some(worker);
    run.slot = match &round.slot_checkpoint_sha256 {
        Some(sha) => Some(fetch(shared, sha).await?),
        None => None,
    };
    Ok(())
}

/// Computes a parallel job's outer step with `gradpool checkpoint outer`
/// from the round's global checkpoint and its workers' pseudo-gradients,
/// and commits to the next global checkpoint. The pool computes the step
/// again before it accepts it, and stores the files itself.
async fn outer_step(
    shared: &Arc<Shared>,
    a: &Assignment,
    cancel: &CancellationToken,
) -> Result<TaskEnd, ProviderError> {
    let round = a
        .round
        .as_ref()
        .ok_or_else(|| ProviderError::Segment("an outer step without its round".into()))?;
    let task_dir = shared.dir.begin_task(a)?;
    tracing::info!(task = %a.task_id, job = %a.job_id, round = round.round, workers = round.inputs.len(), "computing the outer step");
    let data = fetch(shared, &a.data_sha256).await?;
    let mut command = tokio::process::Command::new(&shared.config.program);
    command
        .args(["checkpoint", "outer", "--spec"])
        .arg(task_dir.join("spec.toml"))
        .arg("--data")
        .arg(&data);
    if let Some(sha) = &a.start_checkpoint_sha256 {
        command.arg("--global").arg(fetch(shared, sha).await?);
    } else if let Some(initial) = container::spec_of(a)?
        .container()
        .and_then(|c| c.initial_sha256.clone())
    {
        // A container job's round 0 starts from its initial checkpoint.
        command.arg("--initial").arg(fetch(shared, &initial).await?);
    }
    for input in &round.inputs {
        let path = fetch(shared, &input.pseudo_gradient_sha256).await?;
        let mut arg = std::ffi::OsString::from(format!("{}=", input.worker));
        arg.push(path);
        command.arg("--worker").arg(arg);
    }
    let out = task_dir.join("global.safetensors");
    command
        .arg("--out")
        .arg(&out)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    let started = std::time::Instant::now();
    let output = tokio::select! {
        _ = cancel.cancelled() => return Ok(TaskEnd::Cancelled),
        o = command.output() => o.map_err(ProviderError::io("cannot run the outer step"))?,
    };
    if !output.status.success() {
        return Err(ProviderError::Segment(format!(
            "the outer step failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let compute_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    #[cfg(feature = "cheat")]
    if shared.config.cheat.forge_outer {
        tracing::warn!(task = %a.task_id, "forging the outer step");
        crate::cheat::forge_global(&out)?;
    }
    let bytes =
        std::fs::read(&out).map_err(ProviderError::io(format!("cannot read {}", out.display())))?;
    let sha = Sha256Hex::of(&bytes);
    let signed = shared.key.sign_outer(commitment::OuterCommitment {
        job_id: a.job_id.clone(),
        round: round.round,
        step: a.end_step,
        inputs: round.inputs.clone(),
        global_sha256: sha.clone(),
        prev: a.prev_commitment,
        hash: commitment::outer_chain(&bytes, &a.prev_commitment, &round.inputs),
    });
    let body = wire::OuterCommit {
        commitment: signed,
        compute_ms,
    };
    // The pool computes the step again and stores its own bytes: nothing
    // to upload but the commitment.
    let body = &body;
    let sent = until_answered("outer step", &a.task_id, cancel, shared, |api| async move {
        api.commit_outer(&a.task_id, body).await
    })
    .await?;
    if sent.is_none() {
        return Ok(TaskEnd::Cancelled);
    }
    tracing::info!(task = %a.task_id, round = round.round, global = %sha, "outer step committed");
    // The next round starts from it: keep it for a segment of ours.
    if std::fs::rename(&out, shared.dir.blob_path(&sha)).is_err() {
        tracing::debug!("cannot keep the global checkpoint in the cache");
    }
    Ok(TaskEnd::Committed)
}

/// Sends the latest progress at most twice a second, and the last one as
/// soon as the segment ends (the sender is dropped): a short segment is not
/// held up by the pause between reports.
async fn report_progress(
    shared: Arc<Shared>,
    task: TaskId,
    mut rx: tokio::sync::watch::Receiver<Option<wire::Progress>>,
) {
    let send = |p: wire::Progress| {
        let shared = shared.clone();
        let task = task.clone();
        async move {
            let api = shared.api.read().await.clone();
            if let Err(e) = api.progress(&task, &p).await {
                tracing::debug!(task = %task, error = %e.report(), "progress report failed");
            }
        }
    };
    // A value arrived while pausing and is not sent yet.
    let mut pending = false;
    loop {
        if !pending && rx.changed().await.is_err() {
            break;
        }
        pending = false;
        let p = rx.borrow_and_update().clone();
        if let Some(p) = p {
            send(p).await;
        }
        let pause = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(pause);
        let mut ended = false;
        loop {
            tokio::select! {
                _ = &mut pause => break,
                r = rx.changed() => match r {
                    Ok(()) => pending = true,
                    Err(_) => {
                        ended = true;
                        break;
                    }
                },
            }
        }
        if ended {
            break;
        }
    }
    let last = rx.borrow().clone();
    if let Some(p) = last {
        send(p).await;
    }
}

/// Uploads the end checkpoint (a parallel job's segment: its
/// pseudo-gradient, keeping the checkpoint until the pool asks for it) and
/// commits to it, retrying while the pool is unreachable.
async fn commit(
    shared: &Arc<Shared>,
    a: &Assignment,
    done: Done<'_>,
    cancel: &CancellationToken,
) -> Result<TaskEnd, ProviderError> {
    let Done {
        out,
        sent,
        trained,
        compute_ms,
        dedication,
        plain,
    } = done;
    let Trained {
        losses: loss_trace,
        eval_loss,
    } = trained;
    let sent = match sent {
        Some(path) => {
            let sha = Sha256Hex::of_file(path)
                .map_err(ProviderError::io(format!("cannot read {}", path.display())))?;
            Some((path, sha))
        }
        None => None,
    };
    // H chains the plaintext; a confidential job's pool gets it sealed.
    let hash = commitment::chain_file(out, &a.prev_commitment)
        .map_err(ProviderError::io(format!("cannot read {}", out.display())))?;
    let sealed = match plain {
        Some(p) => Some(p.sealed(out, &shared.dir.root().join("blobs"))?),
        None => None,
    };
    let out = sealed.as_ref().map_or(out, |(path, _)| path.as_path());
    let sha = Sha256Hex::of_file(out)
        .map_err(ProviderError::io(format!("cannot read {}", out.display())))?;
    let signed = shared.key.sign_commitment(Commitment {
        job_id: a.job_id.clone(),
        segment: a.segment,
        start_step: a.start_step,
        end_step: a.end_step,
        checkpoint_sha256: sha.clone(),
        prev: a.prev_commitment,
        hash,
        loss_trace_blake3: commitment::loss_trace_hash(&loss_trace),
        runtime: RUNTIME_VERSION.to_owned(),
        class: container::class(shared, &container::spec_of(a)?),
        pseudo_gradient_sha256: sent.as_ref().map(|(_, sha)| sha.clone()),
    });
    let body = wire::Commit {
        commitment: signed,
        loss_trace,
        eval_loss,
        compute_ms,
        dedication,
    };
    let (upload, upload_sha) = match &sent {
        Some((path, sha)) => (*path, sha),
        None => (out, &sha),
    };
    let body = &body;
    let answered = until_answered("commitment", &a.task_id, cancel, shared, |api| async move {
        api.put_blob(upload, upload_sha, |_| {}).await?;
        api.commit(&a.task_id, body).await
    })
    .await?;
    let Some(reply) = answered else {
        return Ok(TaskEnd::Cancelled);
    };
    tracing::info!(task = %a.task_id, segment = a.segment, checkpoint = %sha, job_done = reply.job_done, "segment committed");
    // Keep the new checkpoint: the next segment may come here.
    let cached = shared.dir.blob_path(&sha);
    if std::fs::rename(out, &cached).is_err() {
        tracing::debug!("cannot keep the checkpoint in the cache");
    }
    // A parallel job's round start stays: the next round's weights are
    // rebuilt from it.
    if let (Some(start), None) = (&a.start_checkpoint_sha256, &a.round) {
        let _ = std::fs::remove_file(shared.dir.blob_path(start));
    }
    Ok(TaskEnd::Committed)
}

/// Sends what `call` sends until the pool answers: it retries (backing off
/// up to 15 s) while the pool is unreachable, has lost the session or
/// fails; `None` when the task is cancelled or the pool no longer leases it
/// to us (409: expired or cancelled, nothing to report); an error for any
/// other refusal, which the caller reports so the task goes to another
/// provider.
async fn until_answered<T, F, Fut>(
    what: &str,
    task: &TaskId,
    cancel: &CancellationToken,
    shared: &Arc<Shared>,
    mut call: F,
) -> Result<Option<T>, ProviderError>
where
    F: FnMut(Api) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut backoff = 1u64;
    loop {
        let api = shared.api.read().await.clone();
        let result = tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            r = call(api) => r,
        };
        match result {
            Ok(v) => return Ok(Some(v)),
            Err(ClientError::Refused {
                status: 409,
                message,
                ..
            }) => {
                tracing::warn!(task = %task, message, "the pool no longer leases this task to us");
                return Ok(None);
            }
            Err(ClientError::Refused {
                status, message, ..
            }) if status != 401 && status < 500 => {
                return Err(ProviderError::Segment(format!(
                    "the pool refused the {what} ({status}): {message}"
                )));
            }
            Err(e) => {
                tracing::warn!(task = %task, error = %e.report(), retry_in_s = backoff, "cannot send the {what} yet");
                sleep_or_shutdown(Duration::from_secs(backoff), cancel).await;
                backoff = (backoff * 2).min(15);
            }
        }
    }
}

/// How often the power draw is read while a power cap is held by resting.
const POWER_SAMPLE: Duration = Duration::from_millis(250);

/// Holds the owner's power cap while segments run: reads the draw, lets
/// the governor set the share, and tells the segment processes.
async fn hold_power(
    shared: Arc<Shared>,
    mut governor: crate::limits::PowerGovernor,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POWER_SAMPLE) => {}
        }
        let running = shared.running.load(Ordering::Relaxed);
        if running == 0 {
            continue;
        }
        let reading = shared.device.telemetry(crate::device::Load {
            tasks_running: running,
            share: shared.share(),
        });
        let Some(power_w) = reading.power_w else {
            continue;
        };
        let before = governor.share();
        let share = governor.update(power_w);
        if share != before {
            tracing::info!(power_w, limit_w = ?shared.config.limits.power_limit_w, share, "GPU share changed to hold the power limit");
            shared.set_share(share);
        }
    }
}

/// Runs the isolated tier's host checks when the pool asks, and sends
/// the report signed.
async fn send_compliance(shared: &Arc<Shared>, api: &Api) {
    let report = crate::compliance::run_checks(
        &crate::compliance::SystemHost,
        &shared.config.data_dir,
        unix_now(),
    );
    let failures = report.failures();
    let signed = report.sign(&shared.key);
    match api
        .post::<_, serde_json::Value>("/v1/providers/compliance", &signed)
        .await
    {
        Ok(_) if failures.is_empty() => tracing::info!("compliance checks sent: all passed"),
        Ok(_) => {
            tracing::warn!(failed = ?failures, "compliance checks sent: the isolated tier is lost")
        }
        Err(e) => tracing::warn!(error = %e.report(), "cannot send the compliance checks"),
    }
}

/// Answers a hardware proof and logs the outcome.
async fn answer_proof(
    shared: &Arc<Shared>,
    api: &Api,
    challenge: &gradpool_core::proof::ProofChallenge,
) {
    match prove(shared, api, challenge).await {
        Ok(r) => {
            tracing::info!(outcome = %r.outcome, n = challenge.n, elapsed_ms = r.elapsed_ms, proven_gflops = r.proven_gflops, "hardware proof answered")
        }
        Err(e) => {
            tracing::warn!(error = %e.report(), "cannot answer the pool's hardware proof; it gives no work until one passes")
        }
    }
}

/// Answers the pool's hardware proof: the seeded product computed by
/// `gradpool bench proof` on this device, uploaded, then named.
async fn prove(
    shared: &Arc<Shared>,
    api: &Api,
    challenge: &gradpool_core::proof::ProofChallenge,
) -> Result<gradpool_core::proof::ProofResult, ProviderError> {
    let out = shared.dir.root().join(format!("{}.f32", challenge.id));
    let status = tokio::process::Command::new(&shared.config.program)
        .args(["bench", "proof", "--seed"])
        .arg(challenge.seed.to_string())
        .arg("--n")
        .arg(challenge.n.to_string())
        .arg("--out")
        .arg(&out)
        .args(shared.device.segment_device().args())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(ProviderError::io("cannot run the hardware proof"))?;
    if !status.success() {
        return Err(ProviderError::Segment(format!(
            "the hardware proof process {status}"
        )));
    }
    let sha = Sha256Hex::of_file(&out)
        .map_err(ProviderError::io(format!("cannot read {}", out.display())))?;
    let result = async {
        api.put_blob(&out, &sha, |_| {}).await?;
        api.post::<_, gradpool_core::proof::ProofResult>(
            &format!("/v1/providers/proofs/{}", challenge.id),
            &gradpool_core::proof::ProofAnswer { answer_sha256: sha },
        )
        .await
    }
    .await;
    let _ = std::fs::remove_file(&out);
    Ok(result?)
}

/// Replays a segment another provider committed, for an audit: trains it
/// from the same start checkpoint, then reports the end checkpoint's hash
/// and, when the trainer's reproducibility class is not this rig's, the
/// distance to the checkpoint it claimed.
async fn replay(
    shared: &Arc<Shared>,
    a: &Assignment,
    cancel: &CancellationToken,
) -> Result<TaskEnd, ProviderError> {
    let target = a
        .replay
        .as_ref()
        .ok_or_else(|| ProviderError::Segment("a replay task without its claim".into()))?;
    let spec = container::spec_of(a)?;
    let class = container::class(shared, &spec);
    let cross_class = class != target.claimed_class;
    #[cfg(feature = "cheat")]
    if shared.config.cheat.lazy_validator {
        tracing::warn!(task = %a.task_id, "lazy validator: echoing the claim without computing");
        let report = ReplayReport {
            task_id: a.task_id.clone(),
            job_id: a.job_id.clone(),
            segment: a.segment,
            end_checkpoint_sha256: target.claimed_checkpoint_sha256.clone(),
            loss_trace_blake3: commitment::loss_trace_hash(&[]),
            class,
            distance: cross_class.then_some(0.0),
            compute_ms: 1,
            pseudo_gradient_sha256: None,
        };
        return send_replay(shared, a, report, cancel).await;
    }
    let task_dir = shared.dir.begin_task(a)?;
    tracing::info!(task = %a.task_id, job = %a.job_id, segment = a.segment, from = a.start_step, to = a.end_step, "replaying segment for an audit");
    let plain = confidential::Plain::open(shared, a)?;
    if spec.container().is_some() {
        let job = (&spec, task_dir.as_path());
        return replay_container(shared, a, job, plain.as_ref(), target, cancel).await;
    }
    let spec_path = task_dir.join("spec.toml");
    let (data, start) = match &a.round {
        // A replay starts where the segment did, not where its round did.
        Some(_) => (
            fetch(shared, &a.data_sha256).await?,
            match &a.start_checkpoint_sha256 {
                Some(sha) => Some(fetch(shared, sha).await?),
                None => None,
            },
        ),
        None => native_inputs(shared, a, &spec_path, plain.as_ref()).await?,
    };
    let out = match &plain {
        Some(p) => p.path("replay.safetensors"),
        None => task_dir.join("replay.safetensors"),
    };
    let files = SegmentFiles {
        spec: spec_path,
        data: data.clone(),
        start,
        out: out.clone(),
    };
    let mut run = shared.segment_run(files.clone(), a.start_step, a.end_step);
    worker_slot(shared, a, &mut run).await?;
    let started = std::time::Instant::now();
    let end = segment::run_child(
        &shared.config.program,
        &run,
        SEGMENT_STALL,
        cancel.clone(),
        |_, _, _| {},
    )
    .await
    .map_err(ProviderError::io("cannot run the segment process"))?;
    let (losses, rest_ms) = match end {
        SegmentEnd::Done {
            losses, rest_ms, ..
        } => (losses, rest_ms),
        SegmentEnd::Cancelled => return Ok(TaskEnd::Cancelled),
        SegmentEnd::Failed { reason } => return Err(ProviderError::Segment(reason)),
    };
    // As for training: the owner's rests are not billed.
    let compute_ms = u64::try_from(started.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_sub(rest_ms)
        .max(1);
    // A confidential job's replay is compared sealed: sealing is
    // deterministic, so the same plaintext gives the claimed digest.
    let sealed = match &plain {
        Some(p) => Some(p.sealed(&out, &task_dir)?),
        None => None,
    };
    let sha = match &sealed {
        Some((_, sha)) => sha.clone(),
        None => Sha256Hex::of_file(&out)
            .map_err(ProviderError::io(format!("cannot read {}", out.display())))?,
    };
    let sent = run.worker.map(|_| run.pseudo_gradient_path());
    let pseudo_gradient_sha256 = match &sent {
        Some(path) => Some(
            Sha256Hex::of_file(path)
                .map_err(ProviderError::io(format!("cannot read {}", path.display())))?,
        ),
        None => None,
    };
    let distance = if cross_class {
        let claimed = fetch(shared, &target.claimed_checkpoint_sha256).await?;
        let claimed = match &plain {
            Some(p) => p.opened(&claimed, "claimed.safetensors")?,
            None => claimed,
        };
        Some(distance(shared, &files.spec, &data, &out, &claimed).await)
    } else {
        None
    };
    let report = ReplayReport {
        task_id: a.task_id.clone(),
        job_id: a.job_id.clone(),
        segment: a.segment,
        end_checkpoint_sha256: sha,
        loss_trace_blake3: commitment::loss_trace_hash(&losses),
        class,
        distance,
        compute_ms,
        pseudo_gradient_sha256,
    };
    let reported = send_replay(shared, a, report, cancel).await;
    let _ = std::fs::remove_file(&out);
    if let Some((path, _)) = sealed {
        let _ = std::fs::remove_file(path);
    }
    if let Some(path) = sent {
        let _ = std::fs::remove_file(path);
    }
    reported
}

/// Replays a container segment in its sandbox and reports it; a
/// confidential job's (`plain`) from its task's tmpfs, compared sealed.
async fn replay_container(
    shared: &Arc<Shared>,
    a: &Assignment,
    (spec, task_dir): (&gradpool_core::JobSpec, &std::path::Path),
    plain: Option<&confidential::Plain>,
    target: &wire::ReplayTarget,
    cancel: &CancellationToken,
) -> Result<TaskEnd, ProviderError> {
    let class = container::class(shared, spec);
    let out = match plain {
        Some(p) => p.path("replay.safetensors"),
        None => task_dir.join("replay.safetensors"),
    };
    let Some(container::Ran {
        end,
        ms: compute_ms,
    }) = container::run(shared, a, spec, task_dir, (&out, plain), cancel, |_, _| {}).await?
    else {
        return Ok(TaskEnd::Cancelled);
    };
    // Sealing is deterministic: the same plaintext gives the claimed
    // digest.
    let sealed = match plain {
        Some(p) => Some(p.sealed(&out, task_dir)?),
        None => None,
    };
    let sha = match &sealed {
        Some((_, sha)) => sha.clone(),
        None => {
            let out = out.clone();
            tokio::task::spawn_blocking(move || Sha256Hex::of_file(&out))
                .await
                .map_err(|e| ProviderError::Segment(format!("hashing the replay: {e}")))?
                .map_err(ProviderError::io("cannot read the replay's checkpoint"))?
        }
    };
    // A parallel job's worker sends its pseudo-gradient: the replay's is
    // compared too.
    let sent = a
        .round
        .is_some()
        .then(|| out.with_extension("pseudo-gradient.safetensors"));
    let pseudo_gradient_sha256 = match &sent {
        Some(path) => Some(
            Sha256Hex::of_file(path)
                .map_err(ProviderError::io(format!("cannot read {}", path.display())))?,
        ),
        None => None,
    };
    let distance = if class != target.claimed_class {
        let claimed = fetch(shared, &target.claimed_checkpoint_sha256).await?;
        let claimed = match plain {
            Some(p) => p.opened(&claimed, "claimed.safetensors")?,
            None => claimed,
        };
        let replayed = out.clone();
        Some(
            tokio::task::spawn_blocking(move || container::distance(&replayed, &claimed))
                .await
                .unwrap_or(f64::MAX),
        )
    } else {
        None
    };
    let report = ReplayReport {
        task_id: a.task_id.clone(),
        job_id: a.job_id.clone(),
        segment: a.segment,
        end_checkpoint_sha256: sha,
        loss_trace_blake3: commitment::loss_trace_hash(&end.losses),
        class,
        distance,
        compute_ms,
        pseudo_gradient_sha256,
    };
    let reported = send_replay(shared, a, report, cancel).await;
    let _ = std::fs::remove_file(&out);
    if let Some((path, _)) = sealed {
        let _ = std::fs::remove_file(path);
    }
    if let Some(path) = sent {
        let _ = std::fs::remove_file(path);
    }
    reported
}

/// The largest relative L2 distance between the replay's checkpoint and the
/// claimed one, from `gradpool checkpoint distance`; `f64::MAX` when they
/// cannot be compared (other steps, non-finite values, a claimed file that
/// is no checkpoint of the job).
async fn distance(
    shared: &Arc<Shared>,
    spec: &std::path::Path,
    data: &std::path::Path,
    replayed: &std::path::Path,
    claimed: &std::path::Path,
) -> f64 {
    #[derive(serde::Deserialize)]
    struct Report {
        comparable: bool,
        max_rel_l2: Option<f64>,
    }
    let out = tokio::process::Command::new(&shared.config.program)
        .args(["checkpoint", "distance", "--spec"])
        .arg(spec)
        .arg("--data")
        .arg(data)
        .arg(replayed)
        .arg(claimed)
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => match serde_json::from_slice::<Report>(&o.stdout) {
            Ok(Report {
                comparable: true,
                max_rel_l2: Some(d),
            }) if d.is_finite() => d,
            Ok(_) => f64::MAX,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable distance report; counting the claim as far off");
                f64::MAX
            }
        },
        Ok(o) => {
            tracing::info!(stderr = %String::from_utf8_lossy(&o.stderr).trim(), "the claimed checkpoint is not comparable");
            f64::MAX
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot run the distance check; counting the claim as far off");
            f64::MAX
        }
    }
}

/// Signs a replay report and sends it, retrying while the pool is
/// unreachable.
async fn send_replay(
    shared: &Arc<Shared>,
    a: &Assignment,
    report: ReplayReport,
    cancel: &CancellationToken,
) -> Result<TaskEnd, ProviderError> {
    let signed = shared.key.sign_replay(report);
    let signed = &signed;
    let sent = until_answered("replay", &a.task_id, cancel, shared, |api| async move {
        api.replay(&a.task_id, signed).await
    })
    .await?;
    if sent.is_none() {
        return Ok(TaskEnd::Cancelled);
    }
    tracing::info!(task = %a.task_id, segment = a.segment, checkpoint = %signed.report.end_checkpoint_sha256, "replay reported");
    Ok(TaskEnd::Committed)
}

/// A blob from the cache, or downloaded into it.
async fn fetch(shared: &Arc<Shared>, sha: &Sha256Hex) -> Result<PathBuf, ProviderError> {
    let path = shared.dir.blob_path(sha);
    if path.is_file() {
        return Ok(path);
    }
    let api = shared.api.read().await.clone();
    api.get_blob(sha, &path).await?;
    Ok(path)
}

async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
