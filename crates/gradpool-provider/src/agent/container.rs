//! A container job's segments and replays on this agent: the job's image
//! loaded once per digest into the agent's own image store, its files
//! staged in the task's directory, and one `podman run` in the sandbox per
//! segment ([`crate::container`]).
//!
//! A cancelled segment (the lease lost, the owner's pause) has its
//! container removed at once; one left running by a crashed agent is
//! removed when the agent starts again ([`Images::open`]). Agents on one
//! machine (one per GPU) may share a store: each image is then loaded and
//! kept once.

use super::confidential::Plain;
use super::{fetch, Shared};
use crate::container::{job_env, worker_env, ContainerEnd, ContainerSegment, ImageStore, Sandbox};
use crate::ProviderError;
use gradpool_core::container::Layout;
use gradpool_core::hardware::DeviceKind;
use gradpool_core::spec::{ContainerConfig, DeviceRequest, JobSpec};
use gradpool_core::wire::{Assignment, RoundTask};
use gradpool_core::Sha256Hex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The agent's image store, when its owner accepts container jobs and
/// podman works here.
pub(super) struct Images {
    store: ImageStore,
    /// One image loads at a time: two segments of one job must not load
    /// its archive twice.
    loading: tokio::sync::Mutex<()>,
}

impl Images {
    /// The store in `dir`, checked to work, with what `owner` (this
    /// agent) left running there removed; `None` (with the reason logged)
    /// when podman does not run here.
    pub(super) async fn open(dir: &Path, cap_bytes: u64, owner: &str) -> Option<Images> {
        let store = match ImageStore::open(dir, cap_bytes) {
            Ok(store) => store,
            Err(e) => {
                tracing::warn!(error = %e, "accept_containers: cannot open the image store; taking no container jobs");
                return None;
            }
        };
        if let Err(e) = store.check().await {
            tracing::warn!(error = %e, "accept_containers: podman does not work here; taking no container jobs");
            return None;
        }
        // Before this agent runs anything: what runs there of its own was
        // left by a crash.
        store.remove_containers_of(owner).await;
        tracing::info!(store = %dir.display(), cap_gib = cap_bytes >> 30, rootless = store.rootless(), "taking container jobs");
        Some(Images {
            store,
            loading: tokio::sync::Mutex::new(()),
        })
    }
}

/// The job's spec, parsed from its assignment.
pub(super) fn spec_of(a: &Assignment) -> Result<JobSpec, ProviderError> {
    JobSpec::from_toml_str(&a.spec_toml)
        .map_err(|e| ProviderError::Segment(format!("the job's spec: {e}")))
}

/// The reproducibility class this agent signs for a segment of `spec`.
pub(super) fn class(shared: &Shared, spec: &JobSpec) -> String {
    let hardware = shared.device.hardware();
    match spec.container().and_then(|c| c.image_sha256.as_ref()) {
        Some(image) => gradpool_core::container::class(image, &hardware, on_gpu(spec, &hardware)),
        None => hardware.class(),
    }
}

/// Whether a container segment of `spec` runs on the rig's GPU: when the
/// job asks for CUDA and the rig has it.
fn on_gpu(spec: &JobSpec, hardware: &gradpool_core::hardware::Hardware) -> bool {
    spec.resources.device == DeviceRequest::Cuda && hardware.device == DeviceKind::Cuda
}

/// A finished container segment and the time it is billed for, in
/// milliseconds: its container's run (not the image's download or load)
/// times the owner's share of the CPUs it ran under.
pub(super) struct Ran {
    pub end: ContainerEnd,
    pub ms: u64,
}

/// Runs steps `[a.start_step, a.end_step)` of a container job in its
/// sandbox, writing the canonical end checkpoint to `out`; `None` when
/// cancelled. A confidential job's (`plain`) runs from its task's tmpfs:
/// image, files, data and checkpoints opened there, the image loaded into
/// a store of the task's own, removed with it.
pub(super) async fn run(
    shared: &Arc<Shared>,
    a: &Assignment,
    spec: &JobSpec,
    task_dir: &Path,
    (out, plain): (&Path, Option<&Plain>),
    cancel: &CancellationToken,
    on_step: impl FnMut(u64, f32),
) -> Result<Option<Ran>, ProviderError> {
    let c = spec
        .container()
        .ok_or_else(|| ProviderError::Segment("not a container job".into()))?;
    let images = shared.images.as_ref().ok_or_else(|| {
        ProviderError::Segment(
            "a container job, and this provider does not run containers (accept_containers)".into(),
        )
    })?;
    let Some(p) = plain else {
        let inputs = inputs(shared, a, c, task_dir, Loading::Shared(images));
        return run_in(
            shared,
            a,
            (spec, c),
            (&images.store, inputs),
            out,
            cancel,
            on_step,
        )
        .await;
    };
    if a.round.is_some() {
        return Err(ProviderError::Segment(
            "a confidential job cannot be parallel".into(),
        ));
    }
    let store = ImageStore::open(&p.path("images"), images.store.cap_bytes())
        .map_err(|e| ProviderError::Segment(format!("the task's image store: {e}")))?;
    let inputs = inputs(shared, a, c, task_dir, Loading::Private(p, &store));
    let ran = run_in(shared, a, (spec, c), (&store, inputs), out, cancel, on_step).await;
    if let Err(e) = store.remove_all().await {
        tracing::warn!(task = %a.task_id, error = %e, "cannot remove a confidential task's image store");
    }
    ran
}

/// What a container segment runs from.
struct Inputs {
    image: String,
    data: PathBuf,
    job_files: PathBuf,
    start: Start,
    /// The directory the container's `/out` lies under.
    work: PathBuf,
}

/// Where a segment's image is loaded.
#[derive(Clone, Copy)]
enum Loading<'a> {
    /// The agent's image store, once per digest.
    Shared(&'a Images),
    /// A confidential task's own store on its tmpfs, beside its plaintext.
    Private(&'a Plain, &'a ImageStore),
}

/// Fetches (for a confidential job: and opens) what a segment of `a`
/// runs from, loading its image as `loading` says.
async fn inputs(
    shared: &Arc<Shared>,
    a: &Assignment,
    c: &ContainerConfig,
    task_dir: &Path,
    loading: Loading<'_>,
) -> Result<Inputs, ProviderError> {
    let (image, plain) = match loading {
        Loading::Shared(images) => (load_image(shared, images, c).await?, None),
        Loading::Private(p, store) => (load_private(shared, c, p, store).await?, Some(p)),
    };
    let data = fetch(shared, &a.data_sha256).await?;
    let (data, job_files, work) = match plain {
        Some(p) => (p.opened(&data, "data")?, p.path("job"), p.path("container")),
        None => (data, task_dir.join("job"), task_dir.join("container")),
    };
    stage_files(shared, c, &job_files, plain).await?;
    let start = match (&a.round, &a.start_checkpoint_sha256) {
        (Some(round), _) => Start::Worker(worker_start(shared, a, round, c, task_dir).await?),
        (None, Some(sha)) => {
            let path = fetch(shared, sha).await?;
            let path = match plain {
                Some(p) => p.opened(&path, "start.safetensors")?,
                None => path,
            };
            Start::Previous(path, sha.clone())
        }
        (None, None) => Start::None,
    };
    Ok(Inputs {
        image,
        data,
        job_files,
        start,
        work,
    })
}

/// Runs a container segment from `inputs` (fetched while a cancel can
/// stop them) with its image in `store`.
async fn run_in(
    shared: &Arc<Shared>,
    a: &Assignment,
    (spec, c): (&JobSpec, &ContainerConfig),
    (store, inputs): (
        &ImageStore,
        impl std::future::Future<Output = Result<Inputs, ProviderError>>,
    ),
    out: &Path,
    cancel: &CancellationToken,
    on_step: impl FnMut(u64, f32),
) -> Result<Option<Ran>, ProviderError> {
    // Downloads and a load of up to the pool's image cap: a cancel (a
    // pause, a lost lease) stops them too.
    let Inputs {
        image,
        data,
        job_files,
        start,
        work,
    } = tokio::select! {
        _ = cancel.cancelled() => return Ok(None),
        inputs = inputs => inputs?,
    };
    let (start, layout, worker) = match start {
        Start::Previous(path, sha) => {
            let layout = start_layout(path.clone(), &sha).await?;
            (Some(path), Some(layout), None)
        }
        Start::Worker(w) => (Some(w.start.clone()), Some(w.layout.clone()), Some(w)),
        Start::None => (None, None, None),
    };
    let hardware = shared.device.hardware();
    let share = shared.share().max(1);
    let cuda = on_gpu(spec, &hardware);
    let threads = hardware.threads.max(1);
    let mut env = job_env(spec, threads, if cuda { "cuda" } else { "cpu" });
    if let Some(w) = &worker {
        env.extend(worker_env(w.slot, w.parallel.workers));
    }
    let segment = ContainerSegment {
        image,
        command: c.command.clone(),
        data,
        job_files,
        start,
        work,
        from: a.start_step,
        to: a.end_step,
        env,
        owner: shared.key.provider_id().to_string(),
    };
    let sandbox = Sandbox {
        cpus: f64::from(threads) * f64::from(share) / 100.0,
        gpu: cuda.then(|| u32::try_from(shared.device.segment_device().gpu).unwrap_or(0)),
        ..Sandbox::new(
            c.memory_gib,
            threads,
            Duration::from_secs(u64::from(c.segment_minutes) * 60),
        )
    };
    #[cfg(feature = "cheat")]
    let cheat = shared
        .config
        .cheat
        .kind_for(&a.task_id)
        .filter(|_| a.kind == gradpool_core::wire::TaskKind::Train);
    #[cfg(feature = "cheat")]
    let segment = match cheat {
        Some(kind) => {
            // Trains the first half of its steps and claims them all.
            tracing::warn!(task = %a.task_id, kind, "cheating on this container segment");
            ContainerSegment {
                to: a.start_step + (a.end_step - a.start_step).div_ceil(2),
                ..segment
            }
        }
        None => segment,
    };
    let started = std::time::Instant::now();
    let ran = tokio::select! {
        _ = cancel.cancelled() => None,
        r = segment.run(store, &sandbox, layout.as_ref(), out, on_step) => Some(r),
    };
    let Some(end) = ran else {
        store.remove_container(&segment.name()).await;
        return Ok(None);
    };
    #[allow(unused_mut)]
    let mut end = end?;
    #[cfg(feature = "cheat")]
    if cheat.is_some() {
        crate::cheat::forge_container_step(out, a.end_step)?;
        let last = end.losses.last().copied().unwrap_or(0.0);
        end.losses.resize(
            usize::try_from(a.end_step - a.start_step).unwrap_or(0),
            last,
        );
    }
    // Held to the owner's share of the CPUs, the container took longer
    // than the work needs: the customer pays for that share of the time,
    // as for a native segment's rests.
    let ms = u64::try_from(started.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_mul(u64::from(share.min(100)))
        / 100;
    if let Some(w) = worker {
        w.send(a, out).await?;
    }
    Ok(Some(Ran { end, ms: ms.max(1) }))
}

/// Where a container segment starts.
enum Start {
    /// The job's first segment: the script's own initial weights.
    None,
    /// The checkpoint the segment before committed, by path and digest.
    Previous(PathBuf, Sha256Hex),
    /// A parallel job's worker segment.
    Worker(Worker),
}

/// A parallel container job's worker segment (or its replay): the start
/// composed from the round's weights and the slot's own state, and the
/// weights its pseudo-gradient is taken against.
struct Worker {
    slot: u32,
    parallel: gradpool_core::spec::ParallelConfig,
    round: u64,
    /// The composed start checkpoint.
    start: PathBuf,
    /// The layout the end checkpoint must continue: the slot's own
    /// checkpoint's, or the initial checkpoint's weights alone.
    layout: Layout,
    /// The round's global weights.
    weights: Arc<gradpool_core::outer::Tensors>,
}

impl Worker {
    /// Writes the pseudo-gradient of the end checkpoint at `out` beside
    /// it, where the commit finds what a parallel segment sends.
    async fn send(self, a: &Assignment, out: &Path) -> Result<(), ProviderError> {
        let (out, end_step) = (out.to_owned(), a.end_step);
        tokio::task::spawn_blocking(move || {
            let end = std::fs::read(&out)
                .map_err(ProviderError::io(format!("cannot read {}", out.display())))?;
            let bytes = gradpool_core::container::pseudo_gradient(
                &self.weights,
                &end,
                (self.slot, &self.parallel),
                (self.round, end_step),
            )
            .map_err(|e| ProviderError::Segment(format!("the pseudo-gradient: {e}")))?;
            super::round::write_atomic(&out.with_extension("pseudo-gradient.safetensors"), &bytes)
        })
        .await
        .map_err(|e| ProviderError::Segment(format!("the pseudo-gradient: {e}")))?
    }
}

/// The start of worker segment `round` of a parallel container job: the
/// round's global weights (round 0: the job's initial checkpoint's) over
/// the slot's own last checkpoint (none yet: the initial checkpoint),
/// written into `task_dir`. Round 0's global checkpoint is cached as the
/// pool computes it, so that round 1 starts from the outer update alone.
async fn worker_start(
    shared: &Arc<Shared>,
    a: &Assignment,
    round: &RoundTask,
    c: &ContainerConfig,
    task_dir: &Path,
) -> Result<Worker, ProviderError> {
    let slot = round.worker.ok_or_else(|| {
        ProviderError::Segment("a parallel job's segment without its worker slot".into())
    })?;
    let parallel = spec_of(a)?
        .parallel
        .ok_or_else(|| ProviderError::Segment("a round of a job without [parallel]".into()))?;
    let initial_sha = c
        .initial_sha256
        .as_ref()
        .ok_or_else(|| ProviderError::Segment("container.initial_sha256: not pinned".into()))?;
    let initial = fetch(shared, initial_sha).await?;
    let global = match &a.start_checkpoint_sha256 {
        Some(_) => super::round::start(shared, a, None).await?,
        None => None,
    };
    let base = match &round.slot_checkpoint_sha256 {
        Some(sha) => Some(fetch(shared, sha).await?),
        None => None,
    };
    let start = task_dir.join("start.safetensors");
    let (shared2, step) = (shared.clone(), a.start_step);
    let composed = start.clone();
    let (layout, weights) = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let global = global.as_deref().map(read).transpose()?;
        let slot = match &base {
            Some(path) => Some(read(path)?),
            None => None,
        };
        let w = gradpool_core::container::worker_start(
            global.as_deref(),
            &read(&initial)?,
            slot.as_deref(),
            step,
        )
        .map_err(|e| e.to_string())?;
        if let Some(g) = &w.initial_global {
            let bytes = g.to_bytes();
            let cached = shared2.dir.blob_path(&Sha256Hex::of(&bytes));
            if !cached.is_file() && super::round::write_atomic(&cached, &bytes).is_err() {
                tracing::debug!("cannot cache round 0's global checkpoint");
            }
        }
        std::fs::write(&composed, &w.checkpoint)
            .map_err(|e| format!("{}: {e}", composed.display()))?;
        Ok((w.layout, w.weights))
    })
    .await
    .map_err(|e| ProviderError::Segment(format!("the worker's start: {e}")))?
    .map_err(|e| ProviderError::Segment(format!("the worker's start: {e}")))?;
    Ok(Worker {
        slot,
        parallel,
        round: round.round,
        start,
        layout,
        weights: Arc::new(weights),
    })
}

/// The layout of the start checkpoint at `path` (digest `sha`), read off
/// the async threads.
async fn start_layout(path: PathBuf, sha: &Sha256Hex) -> Result<Layout, ProviderError> {
    let read = tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path)?;
        Ok::<_, std::io::Error>(Layout::of(&bytes))
    })
    .await
    .map_err(|e| ProviderError::Segment(format!("reading the start checkpoint: {e}")))?
    .map_err(ProviderError::io(format!(
        "cannot read the start checkpoint {sha}"
    )))?;
    read.map_err(|e| ProviderError::Segment(format!("the start checkpoint {sha}: {e}")))
}

/// The job's image in the store: loaded from its archive (downloaded,
/// then dropped from the blob cache: the store holds it now) unless it is
/// there already. An archive larger than the store's cap is refused.
async fn load_image(
    shared: &Arc<Shared>,
    images: &Images,
    c: &ContainerConfig,
) -> Result<String, ProviderError> {
    let digest = pinned_image(c)?;
    let _loading = images.loading.lock().await;
    let now = super::unix_now();
    if images.store.contains(digest).await? {
        return Ok(images.store.ensure(digest, || None, now).await?);
    }
    let archive = fetch_archive(shared, digest, images.store.cap_bytes()).await?;
    tracing::info!(image = %digest, "loading a job's image");
    let name = images
        .store
        .ensure(digest, || Some(archive.clone()), now)
        .await;
    let _ = std::fs::remove_file(&archive);
    Ok(name?)
}

/// A confidential job's image: its sealed archive opened on the task's
/// tmpfs and loaded into the task's own `store` there. Neither the opened
/// archive nor the sealed one is kept: the next task downloads it again.
async fn load_private(
    shared: &Arc<Shared>,
    c: &ContainerConfig,
    p: &Plain,
    store: &ImageStore,
) -> Result<String, ProviderError> {
    let digest = pinned_image(c)?;
    let sealed = fetch_archive(shared, digest, store.cap_bytes()).await?;
    let opened = p.opened_apart(&sealed, "image.oci").await;
    let _ = std::fs::remove_file(&sealed);
    let opened = opened?;
    tracing::info!(image = %digest, "loading a confidential job's image into the task's memory");
    let id = store
        .ensure(digest, || Some(opened.clone()), super::unix_now())
        .await;
    let _ = std::fs::remove_file(&opened);
    Ok(id?)
}

/// The image digest the job pins.
fn pinned_image(c: &ContainerConfig) -> Result<&Sha256Hex, ProviderError> {
    c.image_sha256
        .as_ref()
        .ok_or_else(|| ProviderError::Segment("container.image_sha256: not pinned".into()))
}

/// The image archive `digest`, downloaded into the blob cache unless it is
/// larger than `cap` (asked before the download: an image larger than the
/// whole cache is refused without fetching it).
async fn fetch_archive(
    shared: &Arc<Shared>,
    digest: &Sha256Hex,
    cap: u64,
) -> Result<PathBuf, ProviderError> {
    let too_large = |size: u64| {
        ProviderError::Segment(format!(
            "the job's image ({} MiB) is larger than this rig's image cache ({} MiB, image_cache_gib)",
            size >> 20,
            cap >> 20
        ))
    };
    let announced = shared.api.read().await.clone().blob_size(digest).await?;
    if let Some(size) = announced.filter(|s| *s > cap) {
        return Err(too_large(size));
    }
    let archive = fetch(shared, digest).await?;
    let size = std::fs::metadata(&archive)
        .map_err(ProviderError::io(format!(
            "cannot read {}",
            archive.display()
        )))?
        .len();
    if size > cap {
        let _ = std::fs::remove_file(&archive);
        return Err(too_large(size));
    }
    Ok(archive)
}

/// The job's files, fetched and copied under `dir` by their names (a
/// confidential job's opened there).
async fn stage_files(
    shared: &Arc<Shared>,
    c: &ContainerConfig,
    dir: &Path,
    plain: Option<&Plain>,
) -> Result<(), ProviderError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .map_err(ProviderError::io(format!("cannot clear {}", dir.display())))?;
    }
    std::fs::create_dir_all(dir).map_err(ProviderError::io(format!(
        "cannot create {}",
        dir.display()
    )))?;
    for f in &c.files {
        let sha: &Sha256Hex = f.sha256.as_ref().ok_or_else(|| {
            ProviderError::Segment(format!("container.file_sha256.{}: not pinned", f.name))
        })?;
        let blob = fetch(shared, sha).await?;
        let to = dir.join(&f.name);
        match plain {
            Some(p) => p.open_to(&blob, &to)?,
            None => {
                std::fs::copy(&blob, &to).map_err(ProviderError::io(format!(
                    "cannot stage the job file {}",
                    f.name
                )))?;
            }
        }
    }
    Ok(())
}

/// How far a replayed container checkpoint lies from the claimed one
/// ([`gradpool_core::container::distance`]); `f64::MAX` when they cannot
/// be compared.
pub(super) fn distance(replayed: &Path, claimed: &Path) -> f64 {
    match (std::fs::read(replayed), std::fs::read(claimed)) {
        (Ok(a), Ok(b)) => gradpool_core::container::distance(&a, &b).unwrap_or(f64::MAX),
        _ => f64::MAX,
    }
}
