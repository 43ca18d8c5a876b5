//! `gradpool train` of a container spec: every segment here, one after
//! another, each one `podman run` of the job's image in the sandbox a
//! provider uses, from the checkpoint the one before wrote.

use anyhow::{bail, Context};
use gradpool_core::spec::{ContainerConfig, JobSpec};
use gradpool_core::Sha256Hex;
use gradpool_provider::container::{job_env, ContainerSegment, ImageStore, Sandbox};
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

/// Trains every segment of a container spec here.
pub fn train(
    spec: &JobSpec,
    data: &Path,
    out: &Path,
    threads: u32,
    store_dir: &Path,
) -> anyhow::Result<ExitCode> {
    let Some(c) = spec.container() else {
        bail!("not a container spec");
    };
    let (archive, digest) = image_archive(c)?;
    let store = ImageStore::open(store_dir, gradpool_provider::DEFAULT_IMAGE_CACHE_BYTES)?;
    let runtime = tokio::runtime::Runtime::new()?;
    // The sandbox whole or not at all, here as on a provider.
    runtime.block_on(store.check())?;
    let job_files = out.join("job");
    stage_files(c, &job_files)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    eprintln!("loading image {digest} (once per digest)…");
    let image = runtime.block_on(store.ensure(&digest, || Some(archive), now))?;
    let sandbox = Sandbox::new(c.memory_gib, threads, Duration::from_secs(24 * 3600));
    let ckpt = out.join("checkpoint.safetensors");
    let bar = ProgressBar::new(spec.train.steps);
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut first, mut last, mut layout, mut eval) = (None, f32::NAN, None, None);
    for segment in 0..spec.segment_count() {
        let (from, to) = spec.segment_steps(segment);
        let start = out.join("start.safetensors");
        if from > 0 {
            std::fs::rename(&ckpt, &start)?;
        }
        let run = ContainerSegment {
            image: image.clone(),
            command: c.command.clone(),
            data: data.to_owned(),
            job_files: job_files.clone(),
            start: (from > 0).then(|| start.clone()),
            work: out.join("work"),
            from,
            to,
            env: job_env(spec, threads, "cpu"),
            owner: "gradpool-train".into(),
        };
        let end = runtime
            .block_on(
                run.run(&store, &sandbox, layout.as_ref(), &ckpt, |step, loss| {
                    first.get_or_insert(loss);
                    last = loss;
                    bar.set_position(step + 1);
                    bar.set_message(format!("loss {loss:.4}"));
                }),
            )
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
