//! `gradpool job …`: the customer's view of training jobs.

use super::confidential::KeyStore;
use crate::credentials::CustomerArgs;
use anyhow::{bail, Context};
use clap::Subcommand;
use gradpool_client::Api;
use gradpool_core::privacy::DataKey;
use gradpool_core::wire::{self, JobStatus, JobView};
use gradpool_core::{JobSpec, Piconero, Sha256Hex};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum JobCommand {
    /// Upload the data and submit a job spec; prints the job id.
    Submit {
        /// The job spec (TOML).
        spec: PathBuf,
        /// The dataset (overrides `data.file` of the spec).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Follow the job's progress after submitting.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        overrides: SpecOverrides,
        #[command(flatten)]
        customer: CustomerArgs,
    },
    /// Follow a job live: step, loss, tokens/s, provider.
    Watch {
        /// The job's id (`job_…`, as `job submit` and `job list` print it).
        id: String,
        #[command(flatten)]
        customer: CustomerArgs,
    },
    /// Download a job's last accepted checkpoint as DIR/model.safetensors,
    /// with DIR/summary.json (its step, loss, status and verification): the
    /// trained model once the job trained to the end, the last paid
    /// checkpoint of a running, cancelled or failed one.
    Fetch {
        /// The job's id (`job_…`, as `job submit` and `job list` print it).
        id: String,
        /// The directory to write `model.safetensors` (or the checkpoint) into;
        /// made if missing.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Also keep the full final checkpoint (weights and optimizer state).
        #[arg(long)]
        checkpoint: bool,
        /// Where a confidential job's data key was kept at submit (default
        /// ~/.gradpool/keys).
        #[arg(long, value_name = "DIR")]
        keys_dir: Option<PathBuf>,
        #[command(flatten)]
        customer: CustomerArgs,
    },
    /// List your jobs.
    List {
        #[command(flatten)]
        customer: CustomerArgs,
    },
    /// Show one job and its committed segments.
    Show {
        /// The job's id (`job_…`, as `job submit` and `job list` print it).
        id: String,
        #[command(flatten)]
        customer: CustomerArgs,
    },
    /// Check the pool's claims: every commitment's signature and chain
    /// link, and N random segments downloaded and trained again here; prints
    /// a pass/fail table and exits non-zero on any failure.
    Verify {
        /// The job's id (`job_…`, as `job submit` and `job list` print it).
        id: String,
        /// How many segments to replay (all when larger than the job).
        #[arg(long, default_value_t = 3)]
        segments: usize,
        /// CPU threads for the replays (default: all).
        #[arg(long)]
        threads: Option<u32>,
        /// Where a container job's image is loaded to replay it (default:
        /// `~/.cache/gradpool/images`).
        #[arg(long, value_name = "DIR")]
        image_store: Option<PathBuf>,
        /// Where a confidential job's data key was kept at submit (default
        /// ~/.gradpool/keys).
        #[arg(long, value_name = "DIR")]
        keys_dir: Option<PathBuf>,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        customer: CustomerArgs,
    },
    /// Cancel a job.
    Cancel {
        /// The job's id (`job_…`, as `job submit` and `job list` print it).
        id: String,
        #[command(flatten)]
        customer: CustomerArgs,
    },
}

pub async fn run(c: JobCommand) -> anyhow::Result<ExitCode> {
    match c {
        JobCommand::Submit {
            spec,
            data,
            watch,
            overrides,
            customer,
        } => {
            let api = customer.api()?;
            let job = submit(&api, &spec, data.as_deref(), &overrides, true).await?;
            println!("{}", job.id);
            if let Some(why) = &job.waiting {
                eprintln!("warning: the job is queued, but {why}");
            }
            if watch {
                let end = crate::watch::follow(&api, &job.id.to_string(), true).await?;
                return Ok(status_code(end.status));
            }
        }
        JobCommand::Watch { id, customer } => {
            let end = crate::watch::follow(&customer.api()?, &id, true).await?;
            return Ok(status_code(end.status));
        }
        JobCommand::Fetch {
            id,
            out,
            checkpoint,
            keys_dir,
            customer,
        } => {
            let api = customer.api()?;
            let keys = keys_dir
                .as_deref()
                .map_or_else(KeyStore::default, KeyStore::at);
            let (path, summary) = fetch_model_with(&api, &id, &out, checkpoint, &keys).await?;
            println!(
                "wrote {} and summary.json: the checkpoint of step {}/{} (loss {}{}) of a {} job",
                path.display(),
                summary.step,
                summary.steps,
                summary
                    .loss
                    .map(|l| format!("{l:.4}"))
                    .unwrap_or_else(|| "-".into()),
                summary
                    .eval_loss
                    .map(|l| format!(", held-out {l:.4}"))
                    .unwrap_or_default(),
                summary.status.as_str()
            );
            if !summary.status.is_trained() {
                eprintln!(
                    "note: job {id} is {}: this is its last accepted checkpoint, not a finished model",
                    summary.status.as_str()
                );
            }
            if summary.audits_unserved > 0 {
                eprintln!(
                    "warning: {} drawn audits of job {id} were never served by a validator; \
                     check the work with `gradpool job verify {id}`",
                    summary.audits_unserved
                );
            }
        }
        JobCommand::List { customer } => {
            let jobs: Vec<JobView> = customer.api()?.get("/v1/jobs").await?;
            // LOSS: the last accepted checkpoint's training loss; HELD-OUT:
            // its loss on the job's held-out data.
            println!(
                "{:<22} {:<20} {:<10} {:>11} {:>9} {:>9}  CREATED",
                "JOB", "NAME", "STATUS", "STEP", "LOSS", "HELD-OUT"
            );
            let show = |l: Option<f32>| l.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into());
            for j in jobs {
                println!(
                    "{:<22} {:<20} {:<10} {:>11} {:>9} {:>9}  {}",
                    j.id,
                    truncate(&j.name, 20),
                    j.status.as_str(),
                    format!("{}/{}", j.step, j.steps),
                    show(j.last_loss),
                    show(j.eval_loss),
                    j.created_at
                );
            }
        }
        JobCommand::Show { id, customer } => {
            let api = customer.api()?;
            let j: JobView = api.get(&format!("/v1/jobs/{id}")).await?;
            let segments: Vec<wire::SegmentView> =
                api.get(&format!("/v1/jobs/{id}/segments")).await?;
            println!(
                "job        {}\nname       {}\nstatus     {}",
                j.id,
                j.name,
                j.status.as_str()
            );
            println!(
                "step       {}/{} ({} of {} segments)",
                j.step, j.steps, j.segments_done, j.segments_total
            );
            if let Some(p) = &j.parallel {
                if p.round < p.rounds {
                    println!(
                        "parallel   {} workers, round {} of {}",
                        p.workers,
                        p.round + 1,
                        p.rounds
                    );
                } else {
                    println!(
                        "parallel   {} workers, all {} rounds trained",
                        p.workers, p.rounds
                    );
                }
            }
            if let Some(l) = j.last_loss {
                match j.eval_loss {
                    Some(e) => println!("loss       {l:.4} (training batch), held-out {e:.4}"),
                    None => println!("loss       {l:.4}"),
                }
            }
            if let Some(p) = &j.provider {
                println!("provider   {p}");
            }
            // An unverified job's note is the `verified` line below.
            if let Some(e) = j
                .error
                .as_ref()
                .filter(|_| j.status != JobStatus::Unverified)
            {
                let label = if j.status == JobStatus::Failed {
                    "error"
                } else {
                    "note"
                };
                println!("{label:<10} {e}");
            }
            if let Some(why) = &j.waiting {
                println!("waiting    {why}");
            }
            if let Some(b) = &j.booking {
                println!("booking    {b} (trains only on its providers, inside its window)");
            }
            if j.audits_waiting > 0 {
                println!(
                    "audits     {}",
                    crate::watch::audits_waiting_line(j.audits_waiting)
                );
            }
            if j.audits_unserved > 0 {
                println!(
                    "verified   no: {} drawn audits were never served; check with `gradpool job verify {}`",
                    j.audits_unserved, j.id
                );
            }
            println!(
                "cost       {} of a {} budget ({} in escrow)",
                j.spent, j.budget, j.escrow
            );
            println!("data       {}", j.data_sha256);
            if j.parallel.is_some() {
                let rounds: Vec<wire::RoundView> =
                    api.get(&format!("/v1/jobs/{id}/rounds")).await?;
                print_rounds(&rounds);
            }
            if !segments.is_empty() {
                // DEVICE: the share of the segment's time the device trained
                // it; FOREIGN: other processes seen on the device meanwhile.
                println!(
                    "\n{:>4} {:>13} {:<22} {:>9} {:>9} {:>6} {:>7}  COMMITMENT",
                    "SEG", "STEPS", "PROVIDER", "LOSS", "HELD-OUT", "DEVICE", "FOREIGN"
                );
                for s in segments {
                    let (share, foreign) = match s.dedication {
                        Some(d) => (
                            format!("{:.0}%", d.share * 100.0),
                            d.foreign_processes.to_string(),
                        ),
                        None => ("-".to_owned(), "-".to_owned()),
                    };
                    println!(
                        "{:>4} {:>6}-{:<6} {:<22} {:>9} {:>9} {:>6} {:>7}  {}…",
                        s.segment,
                        s.start_step,
                        s.end_step,
                        s.provider,
                        s.loss_trace
                            .last()
                            .map(|l| format!("{l:.4}"))
                            .unwrap_or_default(),
                        s.eval_loss
                            .map(|l| format!("{l:.4}"))
                            .unwrap_or_else(|| "-".into()),
                        share,
                        foreign,
                        &s.commitment.commitment.hash.to_string()[..16]
                    );
                }
            }
        }
        JobCommand::Verify {
            id,
            segments,
            threads,
            image_store,
            keys_dir,
            json,
            customer,
        } => {
            let api = customer.api()?;
            let work = tempfile::tempdir()?;
            let opts = super::verify::VerifyOptions {
                segments,
                threads,
                program: std::env::current_exe()?,
                work_dir: work.path().to_owned(),
                image_store: image_store.unwrap_or_else(super::container::default_image_store),
                keys: keys_dir
                    .as_deref()
                    .map_or_else(KeyStore::default, KeyStore::at),
            };
            let report = super::verify::verify_job(&api, &id, &opts).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                super::verify::print_report(&report);
            }
            return Ok(if report.pass {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        JobCommand::Cancel { id, customer } => {
            let j: JobView = customer
                .api()?
                .post(&format!("/v1/jobs/{id}/cancel"), &())
                .await?;
            println!("{} {}", j.id, j.status.as_str());
            println!(
                "refunded   {} to your balance (spent {} of a {} budget)",
                Piconero(j.budget.0.saturating_sub(j.spent.0)),
                j.spent,
                j.budget
            );
            if j.checkpoint_sha256.is_some() {
                println!(
                    "checkpoint step {}/{}: `gradpool job fetch {} --out DIR` downloads it",
                    j.step, j.steps, j.id
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A parallel job's rounds: each worker slot's provider and loss, how
/// long the round waited for its slowest worker, and who computed its
/// outer step (which the pool computed again).
fn print_rounds(rounds: &[wire::RoundView]) {
    if rounds.is_empty() {
        return;
    }
    println!(
        "\n{:>5} {:>13} {:>6} {:<22} {:>9} {:>9} {:>8}  OUTER STEP",
        "ROUND", "STEPS", "WORKER", "PROVIDER", "LOSS", "HELD-OUT", "WAIT"
    );
    let show = |l: Option<f32>| l.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into());
    for r in rounds {
        let outer = match &r.outer {
            Some(o) => format!(
                "by {}, global {}…",
                o.provider,
                &o.global_sha256.as_str()[..12]
            ),
            None => "not yet".to_owned(),
        };
        println!(
            "{:>5} {:>6}-{:<6} {:>6} {:<22} {:>9} {:>9} {:>7.1}s  {outer}",
            r.round,
            r.start_step,
            r.end_step,
            "all",
            format!("{} workers", r.workers.len()),
            show(r.outer.as_ref().and_then(|o| o.loss)),
            show(r.outer.as_ref().and_then(|o| o.eval_loss)),
            r.wait_seconds,
        );
        for w in &r.workers {
            println!(
                "{:>5} {:>13} {:>6} {:<22} {:>9} {:>9}",
                "",
                "",
                w.worker,
                w.provider,
                show(w.loss),
                show(w.eval_loss)
            );
        }
    }
}

/// 0 succeeded, 2 unverified (trained, but some drawn audits unserved),
/// 1 otherwise.
fn status_code(s: JobStatus) -> ExitCode {
    match s {
        JobStatus::Succeeded => ExitCode::SUCCESS,
        JobStatus::Unverified => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}

/// What `job submit` may set over the spec file, for a quick try without
/// editing it.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct SpecOverrides {
    /// Training steps (`train.steps`; `train.checkpoint_every` shrinks to
    /// it when larger).
    #[arg(long)]
    pub steps: Option<u64>,
    /// The job's budget in XMR (`budget.total_xmr`), held from submit.
    #[arg(long, value_name = "XMR")]
    pub budget: Option<Piconero>,
    /// The most it pays a provider, XMR per hour
    /// (`budget.max_price_xmr_per_hour`).
    #[arg(long, value_name = "XMR")]
    pub max_price: Option<Piconero>,
    /// The job's name (`name`).
    #[arg(long)]
    pub name: Option<String>,
    /// Train inside this booking of yours (`gradpool book list`): only its
    /// providers take the job, inside its window.
    #[arg(long, value_name = "BOOKING")]
    pub booking: Option<String>,
    /// A parallel container job: the image store its initial checkpoint is
    /// made in (the script run for no steps; default
    /// ~/.cache/gradpool/images).
    #[arg(long, value_name = "DIR")]
    pub image_store: Option<PathBuf>,
    /// A confidential job: where its data key is kept (default
    /// ~/.gradpool/keys).
    #[arg(long, value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,
}

impl SpecOverrides {
    /// The spec text with the overrides written in, comments kept.
    pub fn apply(&self, spec_toml: &str) -> anyhow::Result<String> {
        if self.steps.is_none()
            && self.budget.is_none()
            && self.max_price.is_none()
            && self.name.is_none()
        {
            return Ok(spec_toml.to_owned());
        }
        let mut doc: toml_edit::DocumentMut = spec_toml.parse().context("the spec is not TOML")?;
        if let Some(name) = &self.name {
            doc["name"] = toml_edit::value(name.as_str());
        }
        if let Some(steps) = self.steps {
            let steps = i64::try_from(steps).context("--steps: too large")?;
            doc["train"]["steps"] = toml_edit::value(steps);
            let every = doc["train"]["checkpoint_every"].as_integer();
            if every.is_some_and(|e| e > steps) {
                doc["train"]["checkpoint_every"] = toml_edit::value(steps);
            }
        }
        if let Some(b) = self.budget {
            doc["budget"]["total_xmr"] = toml_edit::value(b.xmr().to_string());
        }
        if let Some(p) = self.max_price {
            doc["budget"]["max_price_xmr_per_hour"] = toml_edit::value(p.xmr().to_string());
        }
        Ok(doc.to_string())
    }
}

/// Validates the spec locally, uploads the data (with a progress bar when
/// `progress`), and submits the job.
pub async fn submit(
    api: &Api,
    spec_path: &Path,
    data: Option<&Path>,
    overrides: &SpecOverrides,
    progress: bool,
) -> anyhow::Result<JobView> {
    let spec_toml = std::fs::read_to_string(spec_path)
        .with_context(|| format!("cannot read the spec {}", spec_path.display()))?;
    let spec_toml = overrides.apply(&spec_toml)?;
    let spec = JobSpec::from_toml_str(&spec_toml)
        .with_context(|| format!("spec {} refused", spec_path.display()))?;
    // A relative data.file is read from the spec's directory.
    let data = match (data, &spec.data.file) {
        (Some(d), _) => d.to_owned(),
        (None, Some(f)) => match spec_path.parent() {
            Some(dir) if f.is_relative() => dir.join(f),
            _ => f.clone(),
        },
        (None, None) => bail!(
            "no data: pass --data FILE or set data.file in {}",
            spec_path.display()
        ),
    };
    if spec.privacy.is_some() && spec.parallel.is_some() {
        bail!(
            "privacy.confidential: a parallel job cannot be confidential yet (the pool would \
             read its pseudo-gradients to take the outer steps)"
        );
    }
    // A confidential job's image and files are sealed under its data key
    // too: the key is made before anything is.
    let key = spec.privacy.is_some().then(DataKey::generate);
    let spec_toml = match spec.container() {
        Some(_) => {
            let dir = spec_path.parent().unwrap_or(Path::new("."));
            let store = overrides
                .image_store
                .clone()
                .unwrap_or_else(super::container::default_image_store);
            let sealing = key.as_ref();
            pin_container(api, &spec_toml, dir, (&data, &store), sealing, progress).await?
        }
        None => spec_toml,
    };
    let keys = overrides
        .keys_dir
        .as_deref()
        .map_or_else(KeyStore::default, KeyStore::at);
    let to = Submission {
        booking: overrides.booking.clone(),
        keys: &keys,
        key,
    };
    submit_into(api, &spec_toml, &data, to, progress).await
}

/// Where a job goes, and where a confidential job's data key is.
pub struct Submission<'a> {
    /// The booking it trains inside, if any.
    pub booking: Option<String>,
    /// Where a confidential job's data key is kept.
    pub keys: &'a KeyStore,
    /// A confidential job's data key when its container image and files
    /// were sealed under it already ([`pin_container`]); else one is made.
    pub key: Option<DataKey>,
}

impl<'a> Submission<'a> {
    /// A job outside any booking, a confidential one's key made at submit
    /// and kept in `keys`.
    pub fn keeping_keys_in(keys: &'a KeyStore) -> Submission<'a> {
        Submission {
            booking: None,
            keys,
            key: None,
        }
    }
}

/// A confidential job: nothing leaves this machine unsealed. The data key
/// is kept before anything is uploaded, under the sealed dataset's digest,
/// then under the job's id.
async fn submit_sealed(
    api: &Api,
    (spec_toml, spec): (&str, &JobSpec),
    data: &Path,
    to: Submission<'_>,
    progress: bool,
) -> anyhow::Result<JobView> {
    let Submission { booking, keys, key } = to;
    let key = match key {
        Some(key) => key,
        None if spec.container().is_some() => bail!(
            "a confidential container job's image and files are sealed under its data key \
             before submit (`gradpool job submit` does both)"
        ),
        None => DataKey::generate(),
    };
    let work = tempfile::tempdir().context("cannot make a working directory")?;
    let sealed = super::confidential::seal_job(api, spec, (data, key), work.path()).await?;
    let pending = sealed.data_sha256.to_string();
    keys.save(&pending, &sealed.key)?;
    upload(api, &sealed.data, &sealed.data_sha256, progress).await?;
    let job: JobView = api
        .post(
            "/v1/jobs",
            &wire::SubmitJob {
                spec_toml: spec_toml.to_owned(),
                data_sha256: sealed.data_sha256.clone(),
                booking,
                sealed_keys: sealed.keys.clone(),
                data_shape: sealed.shape,
            },
        )
        .await?;
    let kept = keys.rename(&pending, job.id.as_str())?;
    eprintln!(
        "confidential: data sealed, its key sealed to {} providers and kept in {} (without it \
         the job's model cannot be opened)",
        sealed.keys.len(),
        kept.display()
    );
    Ok(job)
}

/// Uploads a container spec's image and files (paths relative to `dir`)
/// and returns the spec with each pinned by its digest
/// (`container.image_sha256`, `[container.file_sha256]`), comments kept.
/// A digest the spec pins already must be the file's.
pub async fn pin_container(
    api: &Api,
    spec_toml: &str,
    dir: &Path,
    (data, store): (&Path, &Path),
    sealing: Option<&DataKey>,
    progress: bool,
) -> anyhow::Result<String> {
    let mut spec = JobSpec::from_toml_str(spec_toml)?;
    spec.resolve_paths(dir);
    let Some(c) = spec.container() else {
        return Ok(spec_toml.to_owned());
    };
    // A confidential job's image and files go up sealed, pinned by the
    // sealed files' digests.
    let work = tempfile::tempdir().context("cannot make a working directory")?;
    let sealed = |path: &Path, sha: Sha256Hex, name: &str| match sealing {
        Some(key) => super::confidential::seal_into(key, path, work.path(), name),
        None => Ok((path.to_owned(), sha)),
    };
    let mut doc: toml_edit::DocumentMut = spec_toml.parse().context("the spec is not TOML")?;
    let table = doc
        .get_mut("container")
        .and_then(toml_edit::Item::as_table_like_mut)
        .context("container: not a table")?;
    if let Some(image) = &c.image {
        let sha = super::container::pinned_digest(
            image,
            "container.image",
            c.image_sha256.as_ref(),
            "container.image_sha256",
        )?;
        let (image, sha) = sealed(image, sha, "image")?;
        upload(api, &image, &sha, progress).await?;
        table.insert("image_sha256", toml_edit::value(sha.as_str()));
    }
    let mut pins = toml_edit::InlineTable::new();
    for f in &c.files {
        let field = format!("container.file_sha256.{}", f.name);
        let sha =
            super::container::pinned_digest(&f.path, "container.files", f.sha256.as_ref(), &field)?;
        let (path, sha) = sealed(&f.path, sha, &format!("file-{}", f.name))?;
        upload(api, &path, &sha, progress).await?;
        pins.insert(f.name.as_str(), sha.as_str().into());
    }
    if !pins.is_empty() {
        table.insert("file_sha256", toml_edit::value(pins));
    }
    if spec.parallel.is_some() && c.initial_sha256.is_none() {
        let tmp = tempfile::tempdir().context("cannot make a working directory")?;
        let path = tmp.path().join("initial.safetensors");
        let bytes = initial_checkpoint(&spec, (data, store), tmp.path()).await?;
        std::fs::write(&path, &bytes)?;
        let sha = Sha256Hex::of(&bytes);
        upload(api, &path, &sha, progress).await?;
        table.insert("initial_sha256", toml_edit::value(sha.as_str()));
        eprintln!("initial checkpoint {sha} (round 0's weights) uploaded");
    }
    Ok(doc.to_string())
}

/// A parallel container job's initial checkpoint: `container.initial` in
/// canonical form, else made by running the job's script for no steps in
/// the sandbox here (podman, the image loaded into `store`).
async fn initial_checkpoint(
    spec: &JobSpec,
    (data, store): (&Path, &Path),
    work: &Path,
) -> anyhow::Result<Vec<u8>> {
    let (spec, data, work, store) = (
        spec.clone(),
        data.to_owned(),
        work.to_owned(),
        store.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        if let Some(path) = spec.container().and_then(|c| c.initial.as_ref()) {
            return super::container::canonical_initial(path);
        }
        super::container::Local::open(&spec, &data, &work, 1, &store)
            .context("container.initial: none given, and the script cannot run here to make it")?
            .initial()
    })
    .await
    .context("making the initial checkpoint")?
}

/// Uploads `data` and submits `spec_toml`.
pub async fn submit_text(
    api: &Api,
    spec_toml: &str,
    data: &Path,
    progress: bool,
) -> anyhow::Result<JobView> {
    let keys = KeyStore::default();
    submit_into(
        api,
        spec_toml,
        data,
        Submission::keeping_keys_in(&keys),
        progress,
    )
    .await
}

/// Uploads `data` and submits `spec_toml` as `to` says; a confidential
/// job's data sealed, its key kept.
pub async fn submit_into(
    api: &Api,
    spec_toml: &str,
    data: &Path,
    to: Submission<'_>,
    progress: bool,
) -> anyhow::Result<JobView> {
    let spec = JobSpec::from_toml_str(spec_toml)?;
    if spec.privacy.is_some() {
        return submit_sealed(api, (spec_toml, &spec), data, to, progress).await;
    }
    let booking = to.booking;
    let sha =
        super::container::pinned_digest(data, "data", spec.data.sha256.as_ref(), "data.sha256")?;
    if spec.data.format == gradpool_core::spec::DataFormat::Text {
        let file = std::fs::File::open(data)
            .with_context(|| format!("cannot read data file {}", data.display()))?;
        for w in gradpool_core::data::text_warnings(std::io::BufReader::new(file))? {
            eprintln!("warning: {}: {w}", data.display());
        }
    }
    upload(api, data, &sha, progress).await?;
    let job: JobView = api
        .post(
            "/v1/jobs",
            &wire::SubmitJob {
                spec_toml: spec_toml.to_owned(),
                data_sha256: sha,
                booking,
                sealed_keys: Vec::new(),
                data_shape: None,
            },
        )
        .await?;
    Ok(job)
}

/// Uploads the file `path` of digest `sha` as a blob, with a progress bar
/// when `progress`; nothing when the pool has it for this customer already
/// (a container job's image, submitted again).
async fn upload(api: &Api, path: &Path, sha: &Sha256Hex, progress: bool) -> anyhow::Result<()> {
    if api.has_blob(sha).await? {
        return Ok(());
    }
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let bar = if progress {
        let bar = ProgressBar::new(size);
        bar.set_style(
            ProgressStyle::with_template(
                "uploading {msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let b = bar.clone();
    api.put_blob(path, sha, move |n| b.inc(n))
        .await
        .with_context(|| format!("cannot upload {}", path.display()))?;
    bar.finish_and_clear();
    Ok(())
}

/// What `job fetch` writes beside the model: which checkpoint it is, how
/// the job stands, and whether its audits were all served.
#[derive(Debug, serde::Serialize)]
pub struct FetchSummary {
    pub job_id: String,
    pub name: String,
    /// The job's status when fetched (`running`, `succeeded`,
    /// `unverified`, `failed`, `cancelled`).
    pub status: JobStatus,
    /// The step of the checkpoint fetched, of `steps`.
    pub step: u64,
    pub steps: u64,
    pub segments_done: u32,
    pub segments_total: u32,
    pub checkpoint_sha256: String,
    /// The training loss at that checkpoint (one batch's).
    pub loss: Option<f32>,
    /// The loss on the job's held-out data at that checkpoint.
    pub eval_loss: Option<f32>,
    /// `none`, `standard` or `paranoid`.
    pub verification: String,
    /// Drawn audits no eligible validator served before their deadline.
    pub audits_unserved: u32,
    /// Drawn audits still waiting for an eligible validator.
    pub audits_waiting: u32,
    pub spent_piconero: u64,
    pub budget_piconero: u64,
}

/// Downloads a job's last accepted checkpoint (the trained model once it
/// trained to the end; the last paid one of a running, cancelled or failed
/// job) and writes `out/model.safetensors` (weights only; a container
/// job's under its script's `state_dict` names) and `out/summary.json`.
pub async fn fetch_model(
    api: &Api,
    id: &str,
    out: &Path,
    keep_checkpoint: bool,
) -> anyhow::Result<(PathBuf, FetchSummary)> {
    fetch_model_with(api, id, out, keep_checkpoint, &KeyStore::default()).await
}

/// [`fetch_model`], a confidential job's checkpoint opened with its key
/// from `keys`.
pub async fn fetch_model_with(
    api: &Api,
    id: &str,
    out: &Path,
    keep_checkpoint: bool,
    keys: &KeyStore,
) -> anyhow::Result<(PathBuf, FetchSummary)> {
    let job: JobView = api.get(&format!("/v1/jobs/{id}")).await?;
    let Some(sha) = job.checkpoint_sha256.clone() else {
        bail!(
            "job {id} is {} and has no accepted checkpoint yet (step 0 of {})",
            job.status.as_str(),
            job.steps
        );
    };
    let spec = JobSpec::from_toml_str(&job.spec_toml)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let ckpt = out.join("checkpoint.safetensors");
    if spec.privacy.is_some() {
        // Sealed at the pool: opened here, with the key kept at submit.
        let sealed = out.join("checkpoint.sealed");
        api.get_blob(&sha, &sealed).await?;
        super::confidential::open(keys, id, &sealed, &ckpt)?;
        std::fs::remove_file(&sealed)?;
    } else {
        api.get_blob(&sha, &ckpt).await?;
    }
    let model = out.join("model.safetensors");
    let invalid = || format!("checkpoint {sha} of job {id} is not a valid checkpoint for its spec");
    if spec.container().is_some() {
        // The script's weights under their state_dict names; a parallel
        // job's from its last global checkpoint.
        let bytes = std::fs::read(&ckpt)?;
        let weights = if spec.parallel.is_some() {
            let global = gradpool_core::outer::Global::from_bytes(&bytes).with_context(invalid)?;
            gradpool_core::container::global_model(&global)
        } else {
            gradpool_core::container::model_weights(&bytes).with_context(invalid)?
        };
        std::fs::write(&model, weights)
            .with_context(|| format!("cannot write {}", model.display()))?;
    } else {
        gradpool_train::export_model(&spec, &ckpt, &model).with_context(invalid)?;
    }
    if !keep_checkpoint {
        std::fs::remove_file(&ckpt)?;
    }
    let summary = FetchSummary {
        job_id: job.id.to_string(),
        name: job.name,
        status: job.status,
        step: job.step,
        steps: job.steps,
        segments_done: job.segments_done,
        segments_total: job.segments_total,
        checkpoint_sha256: sha.to_string(),
        loss: job.last_loss,
        eval_loss: job.eval_loss,
        verification: spec.verification.as_str().to_owned(),
        audits_unserved: job.audits_unserved,
        audits_waiting: job.audits_waiting,
        spent_piconero: job.spent.0,
        budget_piconero: job.budget.0,
    };
    let path = out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok((model, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_written_into_the_spec_keeping_its_comments() {
        let spec = "# my run\nname = \"a\"\n[train]\nsteps = 100 # long\ncheckpoint_every = 50\n";
        let o = SpecOverrides {
            steps: Some(20),
            budget: Some("0.05".parse().unwrap()),
            max_price: Some("0.5".parse().unwrap()),
            name: Some("quick".into()),
            booking: None,
            image_store: None,
            keys_dir: None,
        };
        let out = o.apply(spec).unwrap();
        assert!(out.starts_with("# my run\n"), "{out}");
        let v: toml::Table = out.parse().unwrap();
        assert_eq!(v["name"].as_str(), Some("quick"));
        assert_eq!(v["train"]["steps"].as_integer(), Some(20));
        // A segment is never longer than the job.
        assert_eq!(v["train"]["checkpoint_every"].as_integer(), Some(20));
        assert_eq!(v["budget"]["total_xmr"].as_str(), Some("0.05"));
        assert_eq!(v["budget"]["max_price_xmr_per_hour"].as_str(), Some("0.5"));
        // Nothing to override: the text as it was.
        assert_eq!(SpecOverrides::default().apply(spec).unwrap(), spec);
    }
}
