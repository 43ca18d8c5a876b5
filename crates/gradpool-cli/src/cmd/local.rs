//! Commands that run the native training runtime in this process:
//! `gradpool train`, `gradpool segment run`, `gradpool sample`,
//! `gradpool bench train`, `gradpool checkpoint distance`.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use gradpool_core::JobSpec;
use gradpool_provider::segment::{DeviceChoice, DeviceFlags, SegmentEvent, SegmentRun};
use gradpool_train::{Dataset, Device, StepReport};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The reference corpus, shipped inside the binary.
pub const SHAKESPEARE: &[u8] = include_bytes!("../../../../data/tinyshakespeare.txt");

/// Fixes the thread count (before any thread pool starts) and opens the
/// device the flags name.
fn open_device(flags: &DeviceFlags) -> anyhow::Result<Device> {
    if let Some(t) = flags.threads {
        // The CPU backend sizes its thread pools from this variable on
        // first use; nothing has started a thread pool yet.
        std::env::set_var("RAYON_NUM_THREADS", t.max(1).to_string());
    }
    match flags.device {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => Device::new_cuda(flags.gpu).context(
            "cannot use CUDA: this gradpool was built without `--features cuda`, or no NVIDIA driver was found",
        ),
    }
}

#[derive(Args)]
pub struct TrainArgs {
    /// The job spec (TOML).
    spec: PathBuf,
    /// The dataset (overrides `data.file` of the spec).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Writes DIR/checkpoint.safetensors after every segment and
    /// DIR/model.safetensors at the end.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: DeviceFlags,
    /// Where a container spec's image is loaded (podman storage of its
    /// own; default `~/.cache/gradpool/images`).
    #[arg(long, value_name = "DIR")]
    image_store: Option<PathBuf>,
}

#[derive(Args)]
pub struct SampleArgs {
    /// A model written by `gradpool job fetch` or `gradpool train`.
    #[arg(long)]
    model: PathBuf,
    /// Text to continue.
    #[arg(long, default_value = "\n")]
    prompt: String,
    /// Characters to generate.
    #[arg(long, default_value_t = 300)]
    tokens: usize,
    /// Sampling temperature; 0 always takes the most likely character.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: DeviceFlags,
}

/// `gradpool logits`: what a trained model computes on an input, as JSON.
#[derive(clap::Args)]
pub struct LogitsArgs {
    /// A model written by `gradpool job fetch` or `gradpool train`.
    #[arg(long)]
    model: PathBuf,
    /// For a GPT: the text (up to its context length); one row of logits
    /// per character, each predicting the next.
    #[arg(
        long,
        conflicts_with = "features",
        required_unless_present = "features"
    )]
    text: Option<String>,
    /// For an MLP: a row of raw feature values, comma-separated in the
    /// CSV's column order; repeat for more rows.
    #[arg(long, value_name = "V1,V2,…")]
    features: Vec<String>,
    #[command(flatten)]
    device: DeviceFlags,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Train the reference GPT (4 layers, 4 heads, width 128, block 64,
    /// batch 12, AdamW) and report its speed.
    Train {
        /// Print one JSON line.
        #[arg(long)]
        json: bool,
        /// The model: `reference` (the PyTorch reference's GPT) or
        /// `gpt2-small` (12 layers, width 768, context 256, batch 8: sized
        /// for a GPU; slow on a CPU).
        #[arg(long, default_value = "reference")]
        config: gradpool_train::bench::BenchConfig,
        /// Timed steps.
        #[arg(long, default_value_t = 100)]
        steps: u64,
        /// Untimed steps first.
        #[arg(long, default_value_t = 5)]
        warmup: u64,
        #[command(flatten)]
        device: DeviceFlags,
    },
    /// Time square f32 matrix multiplications and report GFLOP/s: the speed
    /// a provider advertises to its pool.
    Matmul {
        /// Print one JSON line.
        #[arg(long)]
        json: bool,
        /// The matrices' side.
        #[arg(long, default_value_t = 512)]
        n: usize,
        /// About how long to measure.
        #[arg(long, default_value_t = 0.5)]
        seconds: f64,
        #[command(flatten)]
        device: DeviceFlags,
    },
    /// Answer a hardware-proof challenge: write `A·B` for the seeded
    /// matrices as little-endian f32 (what the provider agent runs when its
    /// pool challenges it).
    Proof {
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        n: u32,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        device: DeviceFlags,
    },
    /// Train the reference GPT as a parallel (DiLoCo) job and as
    /// synchronous data-parallel training at equal tokens (one run whose
    /// batch is `workers ×` larger), and compare held-out loss and the
    /// traffic per worker, without and with int8 compression. The
    /// parallel job runs on a pool on this machine (`gradpool devnet`, one
    /// provider per worker, one thread each), which measures the bytes
    /// and the workers' utilisation; with --local every worker runs here,
    /// one after another, and the bytes are the encodings' sizes.
    Diloco {
        /// Print one JSON line.
        #[arg(long)]
        json: bool,
        /// Train every worker here instead of on a pool.
        #[arg(long)]
        local: bool,
        #[arg(long, default_value_t = 4)]
        workers: u32,
        /// Each worker's steps per round (H).
        #[arg(long, default_value_t = 50)]
        inner_steps: u64,
        #[arg(long, default_value_t = 10)]
        rounds: u64,
        #[arg(long, default_value_t = 0.7)]
        outer_lr: f64,
        #[arg(long, default_value_t = 0.9)]
        outer_momentum: f64,
        #[command(flatten)]
        device: DeviceFlags,
    },
    /// Describe a GPU as the agent sees it through NVML (its description,
    /// the reproducibility class it advertises, one telemetry reading) and,
    /// with --power-cap, set its power limit 10% lower, read it back and
    /// restore it (needs root or the driver's permission).
    Nvml {
        /// Print one JSON line.
        #[arg(long)]
        json: bool,
        /// Which GPU, by NVML's index (`nvidia-smi -i`).
        #[arg(long, default_value_t = 0)]
        gpu: u32,
        /// Also try the power cap.
        #[arg(long)]
        power_cap: bool,
    },
    /// Run pools with honest and cheating providers and validators, and
    /// report how many cheaters the audits catch, false positives, and the
    /// validators' compute against the training's (needs a build with
    /// `--features cheat`).
    Verify(super::bench_verify::VerifyBenchArgs),
    /// Run a pool process under simulated providers that register (with
    /// real signatures), heart-beat, claim and commit, and report
    /// heartbeats per second, their latency, claims, commits and errors.
    Pool(super::bench_pool::PoolBenchArgs),
}

#[derive(Subcommand)]
pub enum SegmentCommand {
    /// Train steps [FROM, TO) of a job and write the end checkpoint. Prints
    /// one JSON event per line on stdout.
    Run(SegmentRun),
}

#[derive(Subcommand)]
pub enum CheckpointCommand {
    /// Compare two checkpoints of a job; prints one JSON line.
    ///
    /// Prints
    /// `{"comparable":BOOL,"max_rel_l2":NUMBER|null,"tensor":NAME|null,"step_a":N,"step_b":N}`:
    /// the largest relative L2 distance ‖A − B‖ / ‖B‖ over all tensors
    /// (parameters and AdamW moments) and the tensor where it is largest.
    /// `max_rel_l2` is null (infinite) when the checkpoints are at different
    /// steps (`comparable` is then false) or hold NaN or infinite values. A
    /// file that is not a valid checkpoint of the job is an error (exit
    /// status 1, nothing on stdout).
    Distance(CheckpointDistanceArgs),
    /// A parallel job's outer step: the global checkpoint of a round and
    /// the pseudo-gradients of the workers that trained it give the next
    /// global checkpoint, written to OUT (and the update workers download,
    /// to --update-out). Prints one JSON line:
    /// `{"round":N,"step":N,"workers":[W,…],"sha256":HEX}`, the digest of
    /// OUT's bytes (a blob's content address at a pool), with
    /// `"update_sha256":HEX` when the update was written. Anyone can
    /// recompute a pool's outer step this way and compare the bytes.
    Outer(CheckpointOuterArgs),
    /// A parallel job's round 0 global checkpoint: the seeded initial
    /// weights, written to OUT. Prints `{"sha256":HEX}`.
    Initial(CheckpointInitialArgs),
}

#[derive(Args)]
pub struct CheckpointInitialArgs {
    /// The job spec (TOML), with its `[parallel]` table.
    #[arg(long)]
    spec: PathBuf,
    /// The job's data.
    #[arg(long)]
    data: PathBuf,
    /// Where the global checkpoint goes.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct CheckpointOuterArgs {
    /// The job spec (TOML), with its `[parallel]` table.
    #[arg(long)]
    spec: PathBuf,
    /// The job's data.
    #[arg(long)]
    data: PathBuf,
    /// The global checkpoint the round started from (absent in round 0:
    /// the seeded initial weights).
    #[arg(long)]
    global: Option<PathBuf>,
    /// A parallel container job's initial checkpoint
    /// (`container.initial_sha256`): round 0's weights, without --global.
    #[arg(long)]
    initial: Option<PathBuf>,
    /// A worker's pseudo-gradient of the round, as `W=FILE`; once per
    /// worker that entered the step, in any order.
    #[arg(long = "worker", value_name = "W=FILE", required = true)]
    workers: Vec<String>,
    /// Where the next global checkpoint goes.
    #[arg(long)]
    out: PathBuf,
    /// Where the outer update goes: what a worker holding the round's
    /// weights rebuilds the next ones from.
    #[arg(long)]
    update_out: Option<PathBuf>,
}

#[derive(Args)]
pub struct CheckpointDistanceArgs {
    /// The job spec (TOML) both checkpoints belong to.
    #[arg(long)]
    spec: PathBuf,
    /// The job's data.
    #[arg(long)]
    data: PathBuf,
    /// The first checkpoint (e.g. a replay).
    a: PathBuf,
    /// The second checkpoint, the reference of the relative distance (e.g.
    /// the claimed one).
    b: PathBuf,
}

pub fn checkpoint(c: CheckpointCommand) -> anyhow::Result<ExitCode> {
    let a = match c {
        CheckpointCommand::Distance(a) => a,
        CheckpointCommand::Outer(a) => return outer(a),
        CheckpointCommand::Initial(a) => return initial(a),
    };
    let spec = JobSpec::from_toml_str(
        &std::fs::read_to_string(&a.spec)
            .with_context(|| format!("cannot read {}", a.spec.display()))?,
    )?;
    let bytes =
        std::fs::read(&a.data).with_context(|| format!("cannot read {}", a.data.display()))?;
    let data = Dataset::from_bytes(&spec, &bytes)?;
    let d = gradpool_train::checkpoint::distance(&spec, &data, &a.a, &a.b)?;
    println!("{}", serde_json::to_string(&d)?);
    Ok(ExitCode::SUCCESS)
}

/// `checkpoint outer` of a parallel container job: the step over the
/// files alone, from the round's global checkpoint or, in round 0, the
/// initial checkpoint's weights.
fn outer_container(spec: &JobSpec, a: &CheckpointOuterArgs) -> anyhow::Result<ExitCode> {
    let p = spec.parallel.context("the spec has no [parallel] table")?;
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let global = match (&a.global, &a.initial) {
        (Some(g), _) => gradpool_core::outer::Global::from_bytes(&read(g)?)?,
        (None, Some(i)) => gradpool_core::container::initial_global(&read(i)?)
            .map_err(|e| anyhow::anyhow!("--initial {}: {e}", i.display()))?,
        (None, None) => {
            bail!("--global or, in round 0, --initial: the weights the round started from")
        }
    };
    let mut workers = Vec::with_capacity(a.workers.len());
    for w in &a.workers {
        let (index, file) = w
            .split_once('=')
            .and_then(|(i, f)| Some((i.trim().parse::<u32>().ok()?, PathBuf::from(f))))
            .with_context(|| format!("--worker {w}: expected W=FILE"))?;
        workers.push((index, read(&file)?));
    }
    let next = gradpool_core::outer::step_files(&global, &workers, &p, spec.train.steps)?;
    let bytes = next.global.to_bytes();
    gradpool_train::checkpoint::write_atomic(&a.out, &bytes)?;
    let mut line = serde_json::json!({
        "round": next.global.round,
        "step": next.global.step,
        "workers": next.global.workers,
        "sha256": gradpool_core::Sha256Hex::of(&bytes).as_str(),
    });
    if let Some(update) = &a.update_out {
        gradpool_train::checkpoint::write_atomic(update, &next.update)?;
        line["update_sha256"] = serde_json::Value::String(
            gradpool_core::Sha256Hex::of(&next.update)
                .as_str()
                .to_owned(),
        );
    }
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

fn initial(a: CheckpointInitialArgs) -> anyhow::Result<ExitCode> {
    let spec = JobSpec::from_file(&a.spec)?;
    let bytes =
        std::fs::read(&a.data).with_context(|| format!("cannot read {}", a.data.display()))?;
    let data = Dataset::from_bytes(&spec, &bytes)?;
    let global = gradpool_train::parallel::initial_global(&spec, &data)?;
    gradpool_train::checkpoint::write_atomic(&a.out, &global)?;
    println!(
        "{}",
        serde_json::json!({ "sha256": gradpool_core::Sha256Hex::of(&global).as_str() })
    );
    Ok(ExitCode::SUCCESS)
}

fn outer(a: CheckpointOuterArgs) -> anyhow::Result<ExitCode> {
    let spec = JobSpec::from_file(&a.spec)?;
    if spec.container().is_some() {
        return outer_container(&spec, &a);
    }
    let bytes =
        std::fs::read(&a.data).with_context(|| format!("cannot read {}", a.data.display()))?;
    let data = Dataset::from_bytes(&spec, &bytes)?;
    let mut workers = Vec::with_capacity(a.workers.len());
    for w in &a.workers {
        let (index, file) = w
            .split_once('=')
            .and_then(|(i, f)| Some((i.trim().parse::<u32>().ok()?, PathBuf::from(f))))
            .with_context(|| {
                format!(
                    "--worker {w}: expected W=FILE, e.g. 0=worker-0.pseudo-gradient.safetensors"
                )
            })?;
        workers.push((index, file));
    }
    workers.sort_by_key(|(w, _)| *w);
    let out = gradpool_train::parallel::OuterOut {
        global: &a.out,
        update: a.update_out.as_deref(),
    };
    let next =
        gradpool_train::parallel::outer_step(&spec, &data, a.global.as_deref(), &workers, out)?;
    let sha = |path: &std::path::Path| -> anyhow::Result<String> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(gradpool_core::Sha256Hex::of(&bytes).as_str().to_owned())
    };
    let mut line = serde_json::json!({
        "round": next.round,
        "step": next.step,
        "workers": next.workers,
        "sha256": sha(&a.out)?,
    });
    if let Some(update) = &a.update_out {
        line["update_sha256"] = serde_json::Value::String(sha(update)?);
    }
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

pub fn segment(c: SegmentCommand) -> anyhow::Result<ExitCode> {
    let SegmentCommand::Run(a) = c;
    // Die with the agent: a segment nobody waits for is wasted work.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let device = open_device(&a.device)?;
    let spec = JobSpec::from_toml_str(
        &std::fs::read_to_string(&a.spec)
            .with_context(|| format!("cannot read {}", a.spec.display()))?,
    )?;
    let bytes =
        std::fs::read(&a.data).with_context(|| format!("cannot read {}", a.data.display()))?;
    let data = Dataset::from_bytes(&spec, &bytes)?;
    let stdout = std::io::stdout();
    let emit = |e: &SegmentEvent| {
        let mut out = stdout.lock();
        // A closed stdout means the agent is gone; the death signal follows.
        let _ = serde_json::to_writer(&mut out, e);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    };
    let share_now = || {
        a.max_share_file
            .as_deref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|t| t.trim().parse::<u8>().ok())
            .filter(|s| (1..=100).contains(s))
            .unwrap_or(a.max_share)
    };
    let mut pacer = gradpool_provider::limits::Pacer::new(a.max_share);
    let mut busy_since = std::time::Instant::now();
    // Time training and time resting, as measured: the share the task
    // really got.
    let busy = std::cell::Cell::new(std::time::Duration::ZERO);
    let rested = std::cell::Cell::new(std::time::Duration::ZERO);
    let mut on_step = |r: StepReport| {
        emit(&SegmentEvent::Step {
            step: r.step,
            loss: r.loss,
            tokens_per_sec: r.tokens_per_sec,
        });
        let worked = busy_since.elapsed();
        busy.set(busy.get() + worked);
        pacer.set_share(share_now());
        let rest = pacer.rest_after(worked);
        if !rest.is_zero() {
            let resting = std::time::Instant::now();
            std::thread::sleep(rest);
            let slept = resting.elapsed();
            pacer.rested(slept);
            rested.set(rested.get() + slept);
        }
        busy_since = std::time::Instant::now();
    };
    let ms = |d: &std::cell::Cell<std::time::Duration>| {
        u64::try_from(d.get().as_millis()).unwrap_or(u64::MAX)
    };
    let outcome = if let Some(outcome) = cheated(&a, &spec, &data, &device, &mut on_step)? {
        outcome
    } else if let Some(task) = worker_task(&a) {
        let sent = a.pseudo_gradient_path();
        let out = gradpool_train::parallel::WorkerOut {
            checkpoint: &a.out,
            pseudo_gradient: &sent,
        };
        gradpool_train::parallel::run_worker_segment(
            &spec,
            &data,
            &task,
            &device,
            out,
            &mut on_step,
        )?
    } else {
        gradpool_train::run_segment(
            &spec,
            &data,
            a.start.as_deref(),
            a.from,
            a.to,
            &device,
            &a.out,
            &mut on_step,
        )?
    };
    emit(&SegmentEvent::Done {
        losses: outcome.losses,
        eval_loss: outcome.eval_loss,
        busy_ms: ms(&busy),
        rest_ms: ms(&rested),
    });
    Ok(ExitCode::SUCCESS)
}

/// The segment faked as `--cheat KIND` says, or `None` when the flag is
/// absent.
#[cfg(feature = "cheat")]
fn cheated(
    a: &SegmentRun,
    spec: &JobSpec,
    data: &Dataset,
    device: &Device,
    on_step: &mut dyn FnMut(StepReport),
) -> anyhow::Result<Option<gradpool_train::SegmentOutcome>> {
    let Some(kind) = &a.cheat else {
        return Ok(None);
    };
    let kind: gradpool_train::cheat::CheatKind =
        kind.parse().map_err(|e| anyhow::anyhow!("--cheat: {e}"))?;
    tracing::warn!("cheating: {kind}");
    if let Some(task) = worker_task(a) {
        let sent = a.pseudo_gradient_path();
        let out = gradpool_train::parallel::WorkerOut {
            checkpoint: &a.out,
            pseudo_gradient: &sent,
        };
        return Ok(Some(gradpool_train::cheat::run_worker_segment_cheating(
            kind, spec, data, &task, device, out, on_step,
        )?));
    }
    Ok(Some(gradpool_train::cheat::run_segment_cheating(
        kind,
        spec,
        data,
        a.start.as_deref(),
        a.from,
        a.to,
        device,
        &a.out,
        on_step,
    )?))
}

/// A parallel job's worker segment, when `--worker` says it is one: from
/// `--start` (the round's global checkpoint; none in round 0) and `--slot`.
fn worker_task(a: &SegmentRun) -> Option<gradpool_train::parallel::WorkerTask<'_>> {
    Some(gradpool_train::parallel::WorkerTask {
        global: a.start.as_deref(),
        slot: a.slot.as_deref(),
        worker: a.worker?,
        steps: Some((a.from, a.to)),
    })
}

/// A build without the `cheat` feature never fakes a segment.
#[cfg(not(feature = "cheat"))]
fn cheated(
    _: &SegmentRun,
    _: &JobSpec,
    _: &Dataset,
    _: &Device,
    _: &mut dyn FnMut(StepReport),
) -> anyhow::Result<Option<gradpool_train::SegmentOutcome>> {
    Ok(None)
}

pub fn train(a: TrainArgs) -> anyhow::Result<ExitCode> {
    let spec = JobSpec::from_file(&a.spec)?;
    let data_path = match (&a.data, &spec.data.file) {
        (Some(d), _) => d.clone(),
        (None, Some(f)) => f.clone(),
        (None, None) => bail!(
            "no data: pass --data FILE or set data.file in {}",
            a.spec.display()
        ),
    };
    if spec.container().is_some() {
        std::fs::create_dir_all(&a.out)
            .with_context(|| format!("cannot create {}", a.out.display()))?;
        let threads = a.device.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let store = a
            .image_store
            .clone()
            .unwrap_or_else(super::container::default_image_store);
        return super::container::train(&spec, &data_path, &a.out, threads as u32, &store);
    }
    let device = open_device(&a.device)?;
    let bytes = std::fs::read(&data_path)
        .with_context(|| format!("cannot read {}", data_path.display()))?;
    let data = Dataset::from_bytes(&spec, &bytes)?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    if spec.parallel.is_some() {
        return train_parallel(&spec, &data, &a.out, &device);
    }
    let ckpt = a.out.join("checkpoint.safetensors");
    let bar = ProgressBar::new(spec.train.steps);
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut first_loss = None;
    let mut last_loss = f32::NAN;
    for segment in 0..spec.segment_count() {
        let (from, to) = spec.segment_steps(segment);
        let start = (from > 0).then_some(ckpt.as_path());
        let next = a.out.join("checkpoint.next.safetensors");
        gradpool_train::run_segment(
            &spec,
            &data,
            start,
            from,
            to,
            &device,
            &next,
            &mut |r: StepReport| {
                first_loss.get_or_insert(r.loss);
                last_loss = r.loss;
                bar.set_position(r.step + 1);
                bar.set_message(format!("loss {:.4}  {:.0} tok/s", r.loss, r.tokens_per_sec));
            },
        )?;
        std::fs::rename(&next, &ckpt)?;
    }
    bar.finish_and_clear();
    let model = a.out.join("model.safetensors");
    gradpool_train::export_model(&spec, &ckpt, &model)?;
    println!(
        "trained {} steps: loss {:.4} → {:.4}\nwrote {} and {}",
        spec.train.steps,
        first_loss.unwrap_or(f32::NAN),
        last_loss,
        ckpt.display(),
        model.display()
    );
    if let Some(e) = gradpool_train::evaluate(&spec, &data, &ckpt, &device)? {
        println!(
            "held-out data: loss {:.4}, accuracy {:.1}%",
            e.loss,
            e.accuracy * 100.0
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `gradpool train` of a spec with `[parallel]`: every worker of every
/// round, one after another, then the outer step; what a pool's run with
/// every worker present gives, byte for byte.
fn train_parallel(
    spec: &JobSpec,
    data: &Dataset,
    out: &Path,
    device: &Device,
) -> anyhow::Result<ExitCode> {
    let p = gradpool_train::parallel::parallel_of(spec)?;
    let rounds = p.rounds(spec.train.steps);
    let bar = ProgressBar::new(spec.train.steps * u64::from(p.workers));
    bar.set_style(
        ProgressStyle::with_template(
            "[{elapsed_precise}] {bar:30} {pos}/{len} worker steps  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut first_loss = None;
    let mut evals = Vec::new();
    let global = gradpool_train::parallel::train_parallel(
        spec,
        data,
        out,
        device,
        &mut |w, r: StepReport| {
            first_loss.get_or_insert(r.loss);
            bar.inc(1);
            bar.set_message(format!("worker {w}  loss {:.4}", r.loss));
        },
        &mut |round| {
            let losses: Vec<String> = round
                .worker_losses
                .iter()
                .map(|l| format!("{l:.4}"))
                .collect();
            let held_out = round
                .eval_loss
                .map_or(String::new(), |l| format!(", held-out {l:.4}"));
            let line = format!(
                "round {}/{rounds}: workers' last loss {}{held_out}",
                round.round + 1,
                losses.join(" ")
            );
            // A hidden bar (output piped to a file) prints nothing itself.
            if bar.is_hidden() {
                println!("{line}");
            } else {
                bar.println(line);
            }
            evals.extend(round.eval_loss);
        },
    )?;
    bar.finish_and_clear();
    let model = out.join("model.safetensors");
    gradpool_train::export_model(spec, &global, &model)?;
    println!(
        "trained {rounds} rounds of {} workers × {} steps (outer lr {}, momentum {}, {}): \
         first loss {:.4}, held-out loss {}\nwrote {} and {}",
        p.workers,
        p.inner_steps,
        p.outer_lr,
        p.outer_momentum,
        p.compression.as_str(),
        first_loss.unwrap_or(f32::NAN),
        evals.last().map_or("n/a".into(), |l| format!("{l:.4}")),
        global.display(),
        model.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn sample(a: SampleArgs) -> anyhow::Result<ExitCode> {
    let device = open_device(&a.device)?;
    let text = sample_text(
        &a.model,
        &a.prompt,
        a.tokens,
        a.temperature,
        a.seed,
        &device,
    )?;
    println!("{}{text}", a.prompt);
    Ok(ExitCode::SUCCESS)
}

/// Prints `{"logits": [[…], …]}`: one row per character or feature row.
pub fn logits(a: LogitsArgs) -> anyhow::Result<ExitCode> {
    let device = open_device(&a.device)?;
    let rows = a
        .features
        .iter()
        .enumerate()
        .map(|(i, row)| {
            row.split(',')
                .map(|v| {
                    v.trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|x| x.is_finite())
                        .with_context(|| format!("--features row {}: {v:?} is not a number", i + 1))
                })
                .collect::<anyhow::Result<Vec<f32>>>()
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let input = match &a.text {
        Some(text) => gradpool_train::LogitsInput::Text(text),
        None => gradpool_train::LogitsInput::Features(&rows),
    };
    let logits = gradpool_train::logits(&a.model, input, &device)
        .with_context(|| format!("cannot run {}", a.model.display()))?;
    println!("{}", serde_json::json!({ "logits": logits }));
    Ok(ExitCode::SUCCESS)
}

pub fn sample_text(
    model: &Path,
    prompt: &str,
    tokens: usize,
    temperature: f64,
    seed: u64,
    device: &Device,
) -> anyhow::Result<String> {
    gradpool_train::sample(model, prompt, tokens, temperature, seed, device)
        .with_context(|| format!("cannot sample from {}", model.display()))
}

pub fn bench(c: BenchCommand) -> anyhow::Result<ExitCode> {
    let (json, config, steps, warmup, device) = match c {
        BenchCommand::Train {
            json,
            config,
            steps,
            warmup,
            device,
        } => (json, config, steps, warmup, device),
        BenchCommand::Matmul {
            json,
            n,
            seconds,
            device,
        } => {
            let device = open_device(&device)?;
            let report = gradpool_train::bench::matmul(n, seconds, &device)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{:.1} GFLOP/s ({} multiplications of {}×{} f32 in {:.2} s)",
                    report.gflops, report.rounds, report.n, report.n, report.seconds
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        BenchCommand::Proof {
            seed,
            n,
            out,
            device,
        } => {
            anyhow::ensure!(
                (1..=gradpool_core::proof::MAX_N).contains(&n),
                "--n: {n} is outside 1..={}",
                gradpool_core::proof::MAX_N
            );
            let device = open_device(&device)?;
            let c = gradpool_train::bench::proof_product(seed, n, &device)?;
            let tmp = out.with_extension("partial");
            std::fs::write(&tmp, gradpool_core::proof::to_bytes(&c))
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, &out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            return Ok(ExitCode::SUCCESS);
        }
        BenchCommand::Nvml {
            json,
            gpu,
            power_cap,
        } => return nvml(gpu, power_cap, json),
        BenchCommand::Diloco {
            json,
            local,
            workers,
            inner_steps,
            rounds,
            outer_lr,
            outer_momentum,
            device,
        } => {
            let options = gradpool_train::bench::DilocoOptions {
                workers,
                inner_steps,
                rounds,
                outer_lr,
                outer_momentum,
            };
            return diloco(options, &device, json, local);
        }
        BenchCommand::Verify(a) => {
            return tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(super::bench_verify::run(a));
        }
        BenchCommand::Pool(a) => {
            return tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(super::bench_pool::run(a));
        }
    };
    let device = open_device(&device)?;
    let report = gradpool_train::bench::train(config, steps, warmup, SHAKESPEARE, &device)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{}: {:.2} steps/s, {:.0} tokens/s, {} parameters, {} threads, loss {:.4} → {:.4}",
            report.config.name(),
            report.steps_per_sec,
            report.tokens_per_sec,
            report.params,
            report.threads,
            report.first_loss,
            report.last_loss
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What `gradpool bench nvml` reports.
#[derive(serde::Serialize)]
struct NvmlReport {
    gpu: gradpool_provider::gpu::GpuInfo,
    /// The reproducibility class the agent would advertise.
    class: String,
    /// SM count and cuBLAS version (a CUDA build only).
    runtime: Option<gradpool_core::hardware::CudaRuntime>,
    telemetry: gradpool_core::hardware::Telemetry,
    power_cap: Option<gradpool_provider::gpu::PowerCapCheck>,
}

fn nvml(gpu: u32, power_cap: bool, json: bool) -> anyhow::Result<ExitCode> {
    use gradpool_provider::device::{Device as _, Load};
    let device = gradpool_provider::gpu::Gpus::open()?.device(gpu)?;
    #[cfg(feature = "cuda")]
    let runtime = Some(gradpool_train::runtime::cuda_runtime(gpu as usize)?);
    #[cfg(not(feature = "cuda"))]
    let runtime: Option<gradpool_core::hardware::CudaRuntime> = None;
    let device = match runtime.clone() {
        Some(r) => device.with_runtime(r),
        None => device,
    };
    let report = NvmlReport {
        gpu: device.info().clone(),
        class: device.hardware().class(),
        runtime,
        telemetry: device.telemetry(Load {
            tasks_running: 0,
            share: 100,
        }),
        power_cap: power_cap.then(|| device.check_power_cap()),
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let g = &report.gpu;
    println!(
        "GPU {}: {} ({}), {:.1} GiB, compute capability {}, driver {}, CUDA {}",
        g.index,
        g.name,
        g.uuid,
        g.memory_bytes as f64 / (1u64 << 30) as f64,
        g.compute_capability,
        g.driver_version,
        g.cuda_version
    );
    println!("class      {}", report.class);
    let t = &report.telemetry;
    let show = |v: Option<f32>, unit: &str| v.map_or("?".to_owned(), |v| format!("{v:.0}{unit}"));
    println!(
        "telemetry  {} · {} busy · {} · {} MiB used · {} other processes",
        show(t.temperature_c, " °C"),
        show(t.utilization_pct, "%"),
        show(t.power_w, " W"),
        t.memory_used_bytes >> 20,
        t.foreign_processes
    );
    if let Some(c) = &report.power_cap {
        match (&c.error, c.set_w) {
            (None, Some(set)) => println!(
                "power cap  set {set} W (driver read back {}), restored {}",
                c.read_back_w.map_or("?".into(), |w| format!("{w} W")),
                c.restored_w.map_or("?".into(), |w| format!("{w} W"))
            ),
            (Some(e), _) => println!("power cap  not set: {e}"),
            (None, None) => println!("power cap  not tried"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The DiLoCo benchmark's parallel runs on a pool on this machine: a
/// `gradpool devnet` child per compression, one provider per worker with
/// one thread each, verification `none` (the round's own traffic); the
/// bytes per worker and the utilisation are what the pool measured, the
/// loss that of the job's final global checkpoint.
fn diloco_on_pool(
    options: gradpool_train::bench::DilocoOptions,
    device: &gradpool_train::Device,
    dir: &std::path::Path,
) -> anyhow::Result<gradpool_train::bench::DilocoReport> {
    use gradpool_core::spec::Compression;
    use gradpool_train::bench::{self, DilocoReport, DilocoRun};
    let started = std::time::Instant::now();
    let base =
        bench::diloco_baseline(options, SHAKESPEARE, dir, device, &mut |p| eprintln!("{p}"))?;
    let data = dir.join("tinyshakespeare.txt");
    std::fs::write(&data, SHAKESPEARE)?;
    let program = std::env::current_exe().context("cannot find the gradpool binary")?;
    let mut runs = Vec::new();
    for compression in [Compression::None, Compression::Int8] {
        let run = dir.join(compression.as_str());
        std::fs::create_dir_all(&run)?;
        let spec = run.join("spec.toml");
        std::fs::write(&spec, bench::diloco_spec_toml(options, compression, "0.5"))?;
        eprintln!(
            "diloco {}: {} workers on a pool on this machine",
            compression.as_str(),
            options.workers
        );
        let out = run.join("out");
        let log = run.join("devnet.log");
        let run_started = std::time::Instant::now();
        let status = std::process::Command::new(&program)
            .arg("devnet")
            .arg("--spec")
            .arg(&spec)
            .arg("--data")
            .arg(&data)
            .args(["--providers", &options.workers.to_string()])
            .args(["--threads", "1", "--device", "cpu", "--sample-tokens", "0"])
            .arg("--out")
            .arg(&out)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .status()
            .context("cannot run gradpool devnet")?;
        if !status.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            anyhow::bail!(
                "the pool run ({}) failed: {status}\n{}",
                compression.as_str(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("summary.json"))?)?;
        let p = &summary["parallel"];
        let bytes = p["bytes_per_worker"]
            .as_u64()
            .context("summary.json has no parallel.bytes_per_worker")?;
        let utilisation = p["utilisation"].as_f64();
        let global = out.join("checkpoint.safetensors");
        let loss = bench::diloco_loss(options, compression, SHAKESPEARE, &global, device)?;
        let seconds = run_started.elapsed().as_secs_f64();
        runs.push(DilocoRun::new(
            compression,
            loss,
            bytes,
            &base,
            seconds,
            utilisation,
        ));
    }
    Ok(DilocoReport::new(
        options,
        &base,
        runs,
        "pool",
        started.elapsed().as_secs_f64(),
    ))
}

fn diloco(
    options: gradpool_train::bench::DilocoOptions,
    device: &DeviceFlags,
    json: bool,
    local: bool,
) -> anyhow::Result<ExitCode> {
    // The spec's own checks, so a bad value is refused by its name.
    let check = format!(
        "name = \"bench\"\n[model]\nkind = \"gpt\"\nn_layer = 1\nn_head = 1\nn_embd = 8\n\
         block_size = 8\n[data]\nformat = \"text\"\n[train]\nseed = 1\nsteps = {}\n\
         batch_size = 1\nlr = 0.001\n[parallel]\nworkers = {}\ninner_steps = {}\n\
         outer_lr = {:?}\nouter_momentum = {:?}\n",
        options.inner_steps.saturating_mul(options.rounds),
        options.workers,
        options.inner_steps,
        options.outer_lr,
        options.outer_momentum
    );
    JobSpec::from_toml_str(&check).map_err(|e| anyhow::anyhow!("{e}"))?;
    let device = open_device(device)?;
    let dir = tempfile::Builder::new()
        .prefix("gradpool-bench-diloco-")
        .tempdir()?;
    let report = if local {
        gradpool_train::bench::diloco(options, SHAKESPEARE, dir.path(), &device, &mut |phase| {
            eprintln!("{phase}")
        })?
    } else {
        diloco_on_pool(options, &device, dir.path())?
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} workers × {} inner steps × {} rounds (outer lr {}, momentum {}), {} parameters",
        report.workers,
        report.inner_steps,
        report.rounds,
        report.outer_lr,
        report.outer_momentum,
        report.params
    );
    println!(
        "synchronous: held-out loss {:.4}, {} bytes per worker",
        report.loss_sync, report.bytes_per_worker_sync
    );
    for r in &report.runs {
        println!(
            "diloco {:<5} held-out loss {:.4} (×{:.3} of synchronous), {} bytes per worker ({:.0}× less){}",
            r.compression,
            r.loss_diloco,
            r.loss_ratio,
            r.bytes_per_worker_diloco,
            r.traffic_reduction,
            r.utilisation
                .map(|u| format!(", training {:.0}% of the time", u * 100.0))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
