//! `job verify` of a container job: its image and files downloaded from
//! the pool (checked against the digests the job pins), the image loaded
//! into the customer's image store, and each sampled segment run again in
//! the sandbox a provider uses. A confidential job's image and files are
//! opened with its data key.

use anyhow::Context;
use gradpool_client::Api;
use gradpool_core::privacy::DataKey;
use gradpool_core::spec::{ContainerConfig, JobSpec};
use gradpool_core::wire::SegmentView;
use gradpool_core::Sha256Hex;
use gradpool_provider::container::{job_env, worker_env, ContainerSegment, ImageStore, Sandbox};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A container job made ready to replay here.
pub(super) struct Staged {
    store: ImageStore,
    image: String,
    job_files: PathBuf,
    threads: u32,
}

/// The job's pinned image digest.
fn image_of(c: &ContainerConfig) -> anyhow::Result<&Sha256Hex> {
    c.image_sha256
        .as_ref()
        .context("the job's spec pins no image (container.image_sha256)")
}

/// The class a replay here belongs to.
pub(super) fn class(
    c: &ContainerConfig,
    hardware: &gradpool_core::hardware::Hardware,
) -> anyhow::Result<String> {
    // Replays here run on the CPU.
    Ok(gradpool_core::container::class(
        image_of(c)?,
        hardware,
        false,
    ))
}

/// Downloads the job's image and files into `work` and loads the image
/// into the store at `store_dir`.
pub(super) async fn stage(
    api: &Api,
    c: &ContainerConfig,
    (work, store_dir): (&Path, &Path),
    key: Option<&DataKey>,
    threads: u32,
) -> anyhow::Result<Staged> {
    let digest = image_of(c)?;
    let store = ImageStore::open(store_dir, gradpool_provider::DEFAULT_IMAGE_CACHE_BYTES)?;
    let archive = work.join("image.oci");
    if !store.contains(digest).await? {
        eprintln!("downloading the job's image {digest}…");
        download(api, digest, &archive, key)
            .await
            .with_context(|| format!("cannot download the job's image {digest}"))?;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let image = store
        .ensure(digest, || Some(archive.clone()), now)
        .await
        .context("cannot load the job's image")?;
    let _ = std::fs::remove_file(&archive);
    let job_files = work.join("job");
    std::fs::create_dir_all(&job_files)?;
    for f in &c.files {
        let sha = f
            .sha256
            .as_ref()
            .with_context(|| format!("container.file_sha256.{}: not pinned", f.name))?;
        download(api, sha, &job_files.join(&f.name), key)
            .await
            .with_context(|| format!("cannot download the job file {}", f.name))?;
    }
    Ok(Staged {
        store,
        image,
        job_files,
        threads,
    })
}

/// Downloads the blob `sha` to `to`; a confidential job's (sealed under
/// `key`) opened there.
async fn download(
    api: &Api,
    sha: &Sha256Hex,
    to: &Path,
    key: Option<&DataKey>,
) -> anyhow::Result<()> {
    let Some(key) = key else {
        return Ok(api.get_blob(sha, to).await?);
    };
    let sealed = to.with_extension("sealed");
    api.get_blob(sha, &sealed).await?;
    let opened = gradpool_core::privacy::open_file(key, &sealed, to)
        .context("it does not open with the job's data key");
    let _ = std::fs::remove_file(&sealed);
    opened.map(drop)
}

/// A parallel job's worker segment, as `job verify` replays it.
pub(super) struct WorkerReplay<'a> {
    pub worker: u32,
    /// The slot's checkpoint of an earlier round, if it has one.
    pub slot: Option<PathBuf>,
    /// The job's initial checkpoint (`container.initial_sha256`).
    pub initial: &'a Path,
}

/// The start of a parallel container job's worker segment, composed as
/// the agent composes it: the round's weights (`global`, else the initial
/// checkpoint's) over the slot's checkpoint (else the initial one), with
/// the layout the end must continue.
pub(super) fn worker_start(
    w: &WorkerReplay<'_>,
    global: Option<&Path>,
    step: u64,
    out: &Path,
) -> anyhow::Result<gradpool_core::container::Layout> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let global = global.map(read).transpose()?;
    let slot = w.slot.as_deref().map(read).transpose()?;
    let start = gradpool_core::container::worker_start(
        global.as_deref(),
        &read(w.initial)?,
        slot.as_deref(),
        step,
    )
    .map_err(|e| anyhow::anyhow!("the worker's start: {e}"))?;
    std::fs::write(out, start.checkpoint)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(start.layout)
}

/// Runs segment `s` again in the sandbox and compares the result with
/// `claimed`: by hash inside the trainer's class, by distance across.
#[allow(clippy::too_many_arguments)]
pub(super) async fn replay(
    staged: &Staged,
    spec: &JobSpec,
    (data, work): (&Path, &Path),
    start: Option<PathBuf>,
    worker: Option<WorkerReplay<'_>>,
    s: &SegmentView,
    claimed: &Path,
    class: &str,
) -> anyhow::Result<(String, Option<f64>)> {
    let c = spec.container().context("not a container job")?;
    let mut env = job_env(spec, staged.threads, "cpu");
    let (start, layout) = match (&worker, &spec.parallel) {
        (Some(w), Some(p)) => {
            env.extend(worker_env(w.worker, p.workers));
            let composed = work.join(format!("start-{}.safetensors", s.segment));
            let layout = worker_start(w, start.as_deref(), s.start_step, &composed)?;
            (Some(composed), Some(layout))
        }
        _ => {
            let layout = match &start {
                Some(path) => Some(
                    gradpool_core::container::Layout::of(&std::fs::read(path)?)
                        .map_err(|e| anyhow::anyhow!("the start checkpoint: {e}"))?,
                ),
                None => None,
            };
            (start, layout)
        }
    };
    let segment = ContainerSegment {
        image: staged.image.clone(),
        command: c.command.clone(),
        data: data.to_owned(),
        job_files: staged.job_files.clone(),
        start,
        work: work.join(format!("container-{}", s.segment)),
        from: s.start_step,
        to: s.end_step,
        env,
        owner: "gradpool-job-verify".into(),
    };
    let sandbox = Sandbox::new(
        c.memory_gib,
        staged.threads,
        Duration::from_secs(u64::from(c.segment_minutes) * 60),
    );
    let out = work.join(format!("replay-{}.safetensors", s.segment));
    if let Err(e) = segment
        .run(&staged.store, &sandbox, layout.as_ref(), &out, |_, _| {})
        .await
    {
        return Ok((format!("replay failed: {e}"), None));
    }
    if s.commitment.commitment.class == class {
        let sha = Sha256Hex::of_file(&out)?;
        // A confidential job's claim was opened: compared in the clear.
        if spec.privacy.is_some() {
            return Ok(super::by_hash(&sha, &Sha256Hex::of_file(claimed)?));
        }
        return Ok(super::by_hash(&sha, &s.checkpoint_sha256));
    }
    let d = gradpool_core::container::distance(&std::fs::read(&out)?, &std::fs::read(claimed)?);
    let tolerance = c.cross_class_tolerance;
    Ok(match d {
        Some(d) if d <= tolerance => (format!("within tolerance ({d:.1e})"), Some(d)),
        Some(d) => (
            format!("MISMATCH: {d:.1e} apart (tolerance {tolerance:.1e})"),
            Some(d),
        ),
        None => (
            "MISMATCH: the claimed checkpoint cannot be compared with the replay".to_owned(),
            None,
        ),
    })
}
