//! `gradpool train` of a container spec: every segment here, one after
//! another, each one `podman run` of the job's image in the sandbox a
//! provider uses, from the checkpoint the one before wrote; a parallel
//! spec's workers one after another, round after round, with the outer
//! step between rounds.

use anyhow::{bail, Context};
use gradpool_core::container::{
    compose, global_model, initial_global, parallel_weights, pseudo_gradient, Layout,
};
use gradpool_core::spec::{ContainerConfig, JobSpec, ParallelConfig};
use gradpool_core::Sha256Hex;
use gradpool_provider::container::{
    job_env, worker_env, ContainerEnd, ContainerSegment, ImageStore, Sandbox,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Where `gradpool train` keeps container images: `$XDG_CACHE_HOME` or
/// `~/.cache`, under `gradpool/images`.
pub fn default_image_store() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("gradpool").join("images")
}

/// The sha256 of `path` (the file of spec field `field`), refused unless
/// it is the spec's pin `pin` (named `pin_field`) when there is one.
pub(crate) fn pinned_digest(
    path: &Path,
    field: &str,
    pin: Option<&Sha256Hex>,
    pin_field: &str,
) -> anyhow::Result<Sha256Hex> {
    let sha = Sha256Hex::of_file(path)
        .with_context(|| format!("{field}: cannot read {}", path.display()))?;
    match pin {
        Some(want) if *want != sha => bail!(
            "{pin_field}: the spec expects {want}, {} has {sha}",
            path.display()
        ),
        _ => Ok(sha),
    }
}

/// Copies the job's files into `dir` (mounted at `/job`).
fn stage_files(c: &ContainerConfig, dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for f in &c.files {
        pinned_digest(
            &f.path,
            "container.files",
            f.sha256.as_ref(),
            &format!("container.file_sha256.{}", f.name),
        )?;
        std::fs::copy(&f.path, dir.join(&f.name))
            .with_context(|| format!("cannot copy {}", f.path.display()))?;
    }
    Ok(())
}

/// The image's archive and digest, checked against the spec's pin.
fn image_archive(c: &ContainerConfig) -> anyhow::Result<(PathBuf, Sha256Hex)> {
    let Some(path) = &c.image else {
        bail!("container.image: give the OCI archive to train here");
    };
    let sha = pinned_digest(
        path,
        "container.image",
        c.image_sha256.as_ref(),
        "container.image_sha256",
    )?;
    Ok((path.clone(), sha))
}

/// What every segment of a container spec trained here shares: the image
/// loaded into the store, the job's files staged, the sandbox.
pub(crate) struct Local<'a> {
    spec: &'a JobSpec,
    c: &'a ContainerConfig,
    runtime: tokio::runtime::Runtime,
    store: ImageStore,
    image: String,
    job_files: PathBuf,
    data: PathBuf,
    sandbox: Sandbox,
    threads: u32,
    work: PathBuf,
}

impl<'a> Local<'a> {
    /// Loads the spec's image into the store at `store_dir` (once per
    /// digest) and stages its files under `dir`.
    pub(crate) fn open(
        spec: &'a JobSpec,
        data: &Path,
        dir: &Path,
        threads: u32,
        store_dir: &Path,
    ) -> anyhow::Result<Local<'a>> {
        let Some(c) = spec.container() else {
            bail!("not a container spec");
        };
        let (archive, digest) = image_archive(c)?;
        let store = ImageStore::open(store_dir, gradpool_provider::DEFAULT_IMAGE_CACHE_BYTES)?;
        let runtime = tokio::runtime::Runtime::new()?;
        // The sandbox whole or not at all, here as on a provider.
        runtime.block_on(store.check())?;
        let job_files = dir.join("job");
        stage_files(c, &job_files)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        eprintln!("loading image {digest} (once per digest)…");
        let image = runtime.block_on(store.ensure(&digest, || Some(archive), now))?;
        Ok(Local {
            spec,
            c,
            runtime,
            store,
            image,
            job_files,
            data: data.to_owned(),
            sandbox: Sandbox::new(c.memory_gib, threads, Duration::from_secs(24 * 3600)),
            threads,
            work: dir.join("work"),
        })
    }

    /// Runs steps `[from, to)` from `start` (whose layout the end must
    /// continue), as worker `worker` of a parallel job when given, and
    /// writes the canonical end checkpoint to `out`.
    fn segment(
        &self,
        (from, to): (u64, u64),
        start: Option<(&Path, &Layout)>,
        worker: Option<u32>,
        out: &Path,
        on_step: impl FnMut(u64, f32),
    ) -> anyhow::Result<ContainerEnd> {
        let mut env = job_env(self.spec, self.threads, "cpu");
        if let (Some(w), Some(p)) = (worker, &self.spec.parallel) {
            env.extend(worker_env(w, p.workers));
        }
        let run = ContainerSegment {
            image: self.image.clone(),
            command: self.c.command.clone(),
            data: self.data.clone(),
            job_files: self.job_files.clone(),
            start: start.map(|(p, _)| p.to_owned()),
            work: self.work.clone(),
            from,
            to,
            env,
            owner: "gradpool-train".into(),
        };
        let layout = start.map(|(_, l)| l);
        Ok(self
            .runtime
            .block_on(run.run(&self.store, &self.sandbox, layout, out, on_step))?)
    }

    /// A parallel job's initial checkpoint: the spec's `container.initial`
    /// in canonical form, else the script's own weights, from running it
    /// for the empty step range `[0, 0)`.
    pub(crate) fn initial(&self) -> anyhow::Result<Vec<u8>> {
        if let Some(path) = &self.c.initial {
            return canonical_initial(path);
        }
        eprintln!("making the initial checkpoint: the script, for no steps…");
        let out = self.work.with_extension("initial.safetensors");
        self.segment((0, 0), None, None, &out, |_, _| {})
            .context("container.initial: running the script for the steps [0, 0)")?;
        let bytes =
            std::fs::read(&out).with_context(|| format!("cannot read {}", out.display()))?;
        let _ = std::fs::remove_file(&out);
        parallel_weights(&bytes).map_err(|e| anyhow::anyhow!("container.initial: {e}"))?;
        Ok(bytes)
    }
}

/// The initial checkpoint at `path` in canonical form: a checkpoint of the
/// job at step 0 whose weights the outer step can average.
pub(crate) fn canonical_initial(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("container.initial: cannot read {}", path.display()))?;
    let (bytes, _) = gradpool_core::container::canonical(&bytes, 0, None)
        .map_err(|e| anyhow::anyhow!("container.initial: {}: {e}", path.display()))?;
    parallel_weights(&bytes)
        .map_err(|e| anyhow::anyhow!("container.initial: {}: {e}", path.display()))?;
    Ok(bytes)
}

/// A progress bar over a job's steps.
fn step_bar(steps: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Trains every segment of a container spec here.
pub fn train(
    spec: &JobSpec,
    data: &Path,
    out: &Path,
    threads: u32,
    store_dir: &Path,
) -> anyhow::Result<ExitCode> {
    let local = Local::open(spec, data, out, threads, store_dir)?;
    if let Some(p) = &spec.parallel {
        return train_parallel(&local, p, out);
    }
    let ckpt = out.join("checkpoint.safetensors");
    let bar = step_bar(spec.train.steps);
    let (mut first, mut last, mut layout, mut eval) = (None, f32::NAN, None::<Layout>, None);
    for segment in 0..spec.segment_count() {
        let (from, to) = spec.segment_steps(segment);
        let start = out.join("start.safetensors");
        if from > 0 {
            std::fs::rename(&ckpt, &start)?;
        }
        let from_start = layout
            .as_ref()
            .filter(|_| from > 0)
            .map(|l| (start.as_path(), l));
        let end = local
            .segment((from, to), from_start, None, &ckpt, |step, loss| {
                first.get_or_insert(loss);
                last = loss;
                bar.set_position(step + 1);
                bar.set_message(format!("loss {loss:.4}"));
            })
            .with_context(|| format!("segment {segment} (steps {from}..{to})"))?;
        layout = Some(end.layout);
        eval = end.eval_loss.or(eval);
        let _ = std::fs::remove_file(&start);
    }
    bar.finish_and_clear();
    println!(
        "trained {} steps in {} container segments: loss {:.4} → {last:.4}",
        spec.train.steps,
        spec.segment_count(),
        first.unwrap_or(f32::NAN),
    );
    if let Some(e) = eval {
        println!("held-out data: loss {e:.4}");
    }
    println!(
        "wrote {} (sha256 {})",
        ckpt.display(),
        Sha256Hex::of_file(&ckpt)?
    );
    Ok(ExitCode::SUCCESS)
}

/// A parallel container job here, worker after worker, round after round:
/// what a pool's run of the same spec gives, global checkpoint for global
/// checkpoint. Writes `initial.safetensors`, `global.safetensors` (the
/// last global checkpoint) and `model.safetensors` (its weights under
/// their `state_dict` names).
fn train_parallel(local: &Local<'_>, p: &ParallelConfig, out: &Path) -> anyhow::Result<ExitCode> {
    let spec = local.spec;
    let initial = local.initial()?;
    let initial_path = out.join("initial.safetensors");
    std::fs::write(&initial_path, &initial)?;
    let mut global =
        initial_global(&initial).map_err(|e| anyhow::anyhow!("container.initial: {e}"))?;
    let slot = |w: u32| out.join(format!("worker-{w}.safetensors"));
    let bar = step_bar(spec.train.steps);
    let mut losses = Vec::new();
    for round in 0..p.rounds(spec.train.steps) {
        let (from, to) = p.round_steps(round, spec.train.steps);
        let mut workers = Vec::new();
        for w in 0..p.workers {
            let base = if round == 0 {
                initial_path.clone()
            } else {
                slot(w)
            };
            let base =
                std::fs::read(&base).with_context(|| format!("cannot read {}", base.display()))?;
            let start_bytes = compose(&global.params, &base, from)
                .map_err(|e| anyhow::anyhow!("worker {w}'s start: {e}"))?;
            let layout = Layout::of(&base)?;
            let start = out.join("start.safetensors");
            std::fs::write(&start, &start_bytes)?;
            let end = local
                .segment(
                    (from, to),
                    Some((&start, &layout)),
                    Some(w),
                    &slot(w),
                    |step, loss| {
                        bar.set_position(step + 1);
                        bar.set_message(format!("round {round} worker {w}: loss {loss:.4}"));
                    },
                )
                .with_context(|| format!("round {round}, worker {w} (steps {from}..{to})"))?;
            losses.push(end.losses.last().copied().unwrap_or(f32::NAN));
            let bytes = std::fs::read(slot(w))?;
            let sent = pseudo_gradient(&global.params, &bytes, (w, p), (round, to))
                .map_err(|e| anyhow::anyhow!("worker {w}'s pseudo-gradient: {e}"))?;
            let d = gradpool_core::delta::decode(
                &sent,
                gradpool_core::delta::DeltaKind::PseudoGradient,
            )?;
            workers.push((w, d.values));
            let _ = std::fs::remove_file(&start);
        }
        global = gradpool_core::outer::outer_step(&global, &workers, p, to)?.global;
    }
    bar.finish_and_clear();
    let global_path = out.join("global.safetensors");
    std::fs::write(&global_path, global.to_bytes())?;
    let model = out.join("model.safetensors");
    std::fs::write(&model, global_model(&global))?;
    println!(
        "trained {} steps on {} workers in {} rounds: last round's worker losses {}",
        spec.train.steps,
        p.workers,
        p.rounds(spec.train.steps),
        losses
            .iter()
            .rev()
            .take(p.workers as usize)
            .rev()
            .map(|l| format!("{l:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "wrote {} (sha256 {}) and {}",
        global_path.display(),
        Sha256Hex::of_file(&global_path)?,
        model.display()
    );
    Ok(ExitCode::SUCCESS)
}
