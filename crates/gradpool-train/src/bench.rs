//! The training benchmark: the reference character GPT of
//! `shared/bench/torch_gpt.py` (4 layers, 4 heads, width 128, block 64,
//! batch 12, AdamW lr 1e-3, weight decay 0.1, betas (0.9, 0.999), no
//! clipping, constant learning rate), timed the same way: `warmup` untimed
//! steps, then `steps` timed ones. [`BenchConfig::Gpt2Small`] is a model
//! sized for a GPU (GPT-2 small's 12 layers, 12 heads, width 768, context
//! 256, batch 8) with the same optimizer; on a CPU it is honestly slow.

use crate::dataset::Dataset;
use crate::model::Model;
use crate::optim::AdamW;
use crate::segment::train_step;
use crate::TrainError;
use candle_core::Device;
use gradpool_core::spec::{
    Budget, Compression, DataFormat, DataSpec, GptConfig, JobSpec, ModelConfig, ParallelConfig,
    Resources, TrainConfig, VerificationLevel,
};
use std::time::Instant;

/// What one benchmark run measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BenchReport {
    /// Always `"gradpool-native"`.
    pub runtime: String,
    /// The model trained.
    pub config: BenchConfig,
    /// Timed steps per second.
    pub steps_per_sec: f64,
    /// Timed tokens (`batch * block` per step) per second.
    pub tokens_per_sec: f64,
    /// Number of scalar parameters.
    pub params: usize,
    /// Loss of the first (warm-up) step.
    pub first_loss: f32,
    /// Loss of the last step.
    pub last_loss: f32,
    /// Timed steps.
    pub steps: u64,
    /// Seconds the timed steps took.
    pub seconds: f64,
    /// Worker threads of the CPU backend.
    pub threads: usize,
}

/// Which model the training benchmark trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchConfig {
    /// The PyTorch reference's GPT: 4 layers, width 128, context 64, batch 12.
    #[default]
    Reference,
    /// GPT-2 small's shape (12 layers, 12 heads, width 768, context 256)
    /// with a character vocabulary, batch 8: where a GPU pays.
    Gpt2Small,
}

impl BenchConfig {
    /// The config's name, as `--config` takes it.
    pub fn name(self) -> &'static str {
        match self {
            BenchConfig::Reference => "reference",
            BenchConfig::Gpt2Small => "gpt2-small",
        }
    }

    /// The model and the batch size.
    fn shape(self) -> (GptConfig, usize) {
        match self {
            BenchConfig::Reference => (
                GptConfig {
                    n_layer: 4,
                    n_head: 4,
                    n_embd: 128,
                    block_size: 64,
                },
                12,
            ),
            BenchConfig::Gpt2Small => (
                GptConfig {
                    n_layer: 12,
                    n_head: 12,
                    n_embd: 768,
                    block_size: 256,
                },
                8,
            ),
        }
    }
}

impl std::str::FromStr for BenchConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reference" => Ok(BenchConfig::Reference),
            "gpt2-small" => Ok(BenchConfig::Gpt2Small),
            other => Err(format!("{other:?}: reference or gpt2-small")),
        }
    }
}

/// The reference spec the benchmark trains.
pub fn reference_spec(total_steps: u64) -> JobSpec {
    bench_spec(BenchConfig::Reference, total_steps)
}

/// The spec the benchmark trains for `config`.
pub fn bench_spec(config: BenchConfig, total_steps: u64) -> JobSpec {
    let (gpt, batch_size) = config.shape();
    JobSpec {
        name: format!("bench-{}", config.name()),
        model: ModelConfig::Gpt(gpt),
        data: DataSpec {
            format: DataFormat::Text,
            file: None,
            label_column: None,
            sha256: None,
            eval_fraction: 0.0,
        },
        train: TrainConfig {
            seed: 1337,
            steps: total_steps.max(1),
            batch_size,
            checkpoint_every: total_steps.max(1),
            lr: 1e-3,
            min_lr: 1e-3,
            warmup_steps: 0,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            grad_clip: None,
        },
        resources: Resources::default(),
        verification: VerificationLevel::default(),
        budget: Budget::default(),
        parallel: None,
        privacy: None,
    }
}

/// Trains the reference GPT on `data` (UTF-8 text) for `warmup + steps`
/// steps and reports the speed of the last `steps`.
pub fn train(
    config: BenchConfig,
    steps: u64,
    warmup: u64,
    data: &[u8],
    device: &Device,
) -> Result<BenchReport, TrainError> {
    if steps == 0 {
        return Err(TrainError::Segment(
            "bench needs at least one timed step".into(),
        ));
    }
    let spec = bench_spec(config, warmup + steps);
    let (gpt, batch) = config.shape();
    let tokens_per_step = (batch * gpt.block_size) as u64;
    let dataset = Dataset::from_bytes(&spec, data)?;
    let meta = dataset.model_meta(&spec)?;
    let model = Model::init(meta, spec.train.seed, device)?;
    let mut opt = AdamW::new(&model)?;
    let mut first_loss = None;
    let mut last_loss = 0.0;
    let mut t0 = Instant::now();
    for step in 0..warmup + steps {
        if step == warmup {
            t0 = Instant::now();
        }
        let loss = train_step(&model, &mut opt, &spec, &dataset, step, device)?;
        first_loss.get_or_insert(loss);
        last_loss = loss;
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(BenchReport {
        runtime: "gradpool-native".into(),
        config,
        steps_per_sec: steps as f64 / seconds,
        tokens_per_sec: (steps * tokens_per_step) as f64 / seconds,
        params: model.param_count(),
        first_loss: first_loss.unwrap_or(0.0),
        last_loss,
        steps,
        seconds,
        threads: candle_core::utils::get_num_threads(),
    })
}

/// What the matrix-multiplication benchmark measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MatmulReport {
    /// The side of the square f32 matrices.
    pub n: usize,
    /// Multiplications timed.
    pub rounds: u32,
    /// `2 n³ × rounds / seconds / 10⁹`.
    pub gflops: f64,
    pub seconds: f64,
}

/// Times square f32 matrix multiplications of side `n` on `device` for
/// about `seconds` (after one untimed round): the speed a provider
/// advertises, from which the pool caps the time it bills for a segment.
pub fn matmul(n: usize, seconds: f64, device: &Device) -> Result<MatmulReport, TrainError> {
    let n = n.clamp(16, 8192);
    let a = candle_core::Tensor::rand(-1f32, 1f32, (n, n), device)?;
    let b = candle_core::Tensor::rand(-1f32, 1f32, (n, n), device)?;
    a.matmul(&b)?.sum_all()?.to_scalar::<f32>()?;
    let started = Instant::now();
    let mut rounds = 0u32;
    while rounds == 0 || (started.elapsed().as_secs_f64() < seconds && rounds < 10_000) {
        // Reading a scalar back waits for the device to finish.
        a.matmul(&b)?.sum_all()?.to_scalar::<f32>()?;
        rounds += 1;
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let flops = 2.0 * (n as f64).powi(3) * f64::from(rounds);
    Ok(MatmulReport {
        n,
        rounds,
        gflops: flops / elapsed / 1e9,
        seconds: elapsed,
    })
}

/// Answers a hardware-proof challenge on `device`: `C = A·B` for the
/// matrices [`gradpool_core::proof::matrices`] derives from `seed`, row-major.
pub fn proof_product(seed: u64, n: u32, device: &Device) -> Result<Vec<f32>, TrainError> {
    let (a, b) = gradpool_core::proof::matrices(seed, n);
    let side = n as usize;
    let a = candle_core::Tensor::from_vec(a, (side, side), device)?;
    let b = candle_core::Tensor::from_vec(b, (side, side), device)?;
    Ok(a.matmul(&b)?.flatten_all()?.to_vec1::<f32>()?)
}

/// The shape of a DiLoCo benchmark run (`gradpool bench diloco`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DilocoOptions {
    pub workers: u32,
    pub inner_steps: u64,
    pub rounds: u64,
    pub outer_lr: f64,
    pub outer_momentum: f64,
}

impl Default for DilocoOptions {
    /// The setting: 4 workers, H = 50, 10 rounds, the DiLoCo
    /// paper's outer optimizer.
    fn default() -> DilocoOptions {
        DilocoOptions {
            workers: 4,
            inner_steps: 50,
            rounds: 10,
            outer_lr: 0.7,
            outer_momentum: 0.9,
        }
    }
}

/// One parallel run of the DiLoCo benchmark.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DilocoRun {
    /// `none` or `int8`.
    pub compression: String,
    /// Held-out loss of the final global weights.
    pub loss_diloco: f32,
    /// `loss_diloco / loss_sync`.
    pub loss_ratio: f64,
    /// What one worker sends and receives over the run: each round the
    /// global weights (or the outer update) down and its pseudo-gradient
    /// up, f32 or int8 codebook bytes.
    pub bytes_per_worker_diloco: u64,
    /// `bytes_per_worker_sync / bytes_per_worker_diloco`.
    pub traffic_reduction: f64,
    pub seconds: f64,
    /// On a pool: the share of the workers' time spent training.
    pub utilisation: Option<f64>,
}

/// What `gradpool bench diloco` measured: the reference GPT trained by a
/// parallel job (both compressions) and by synchronous data-parallel
/// training at equal tokens (one run, batch `workers ×` larger, as an
/// all-reduce of every step's gradients computes).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DilocoReport {
    pub workers: u32,
    pub inner_steps: u64,
    pub rounds: u64,
    pub outer_lr: f64,
    pub outer_momentum: f64,
    /// The uncompressed run's figures, at the top for easy reading.
    pub loss_diloco: f32,
    pub loss_sync: f32,
    pub loss_ratio: f64,
    pub bytes_per_worker_diloco: u64,
    /// A per-step all-reduce of the gradients: 2 × parameters × 4 bytes ×
    /// steps.
    pub bytes_per_worker_sync: u64,
    pub traffic_reduction: f64,
    /// Both runs, `none` then `int8`.
    pub runs: Vec<DilocoRun>,
    /// Where it ran: `pool` (a pool on this machine, one provider per
    /// worker, bytes measured at the pool) or `local` (every worker here,
    /// one after another; bytes from the encodings, no waiting to measure
    /// and `utilisation` null).
    pub placement: String,
    pub utilisation: Option<f64>,
    pub params: usize,
    pub seconds: f64,
}

/// Held-out windows the benchmark's losses are measured on (4 batches of
/// this many), the same for every run.
const DILOCO_EVAL_WINDOWS: usize = 64;

/// The spec a DiLoCo benchmark trains: the reference GPT for
/// `inner_steps × rounds` steps (a tenth of the text held out), as a
/// parallel job with `compression`, or synchronous (`None`).
pub fn diloco_spec(options: DilocoOptions, compression: Option<Compression>) -> JobSpec {
    let steps = options.inner_steps.saturating_mul(options.rounds);
    let mut spec = bench_spec(BenchConfig::Reference, steps);
    spec.name = "bench-diloco".into();
    spec.data.eval_fraction = 0.1;
    if let Some(compression) = compression {
        spec.parallel = Some(ParallelConfig {
            workers: options.workers,
            inner_steps: options.inner_steps,
            outer_lr: options.outer_lr,
            outer_momentum: options.outer_momentum,
            compression,
            min_workers: options.workers,
        });
        spec.train.checkpoint_every = options.inner_steps;
    }
    spec
}

/// [`diloco_spec`] of a parallel run as the TOML a pool is given, with
/// verification `none` (no audits: the round's own traffic alone; the
/// pool still checks every outer step) and `budget` XMR.
pub fn diloco_spec_toml(options: DilocoOptions, compression: Compression, budget: &str) -> String {
    let spec = diloco_spec(options, Some(compression));
    let ModelConfig::Gpt(g) = spec.model else {
        unreachable!("the benchmark trains a GPT")
    };
    let t = &spec.train;
    format!(
        "name = {:?}\n\n[model]\nkind = \"gpt\"\nn_layer = {}\nn_head = {}\nn_embd = {}\nblock_size = {}\n\n\
         [data]\nformat = \"text\"\neval_fraction = {:?}\n\n\
         [train]\nseed = {}\nsteps = {}\nbatch_size = {}\ncheckpoint_every = {}\nlr = {:?}\nmin_lr = {:?}\n\
         warmup_steps = {}\nweight_decay = {:?}\nbeta1 = {:?}\nbeta2 = {:?}\neps = {:?}\ngrad_clip = {:?}\n\n\
         [verification]\nlevel = \"none\"\n\n\
         [parallel]\nworkers = {}\ninner_steps = {}\nouter_lr = {:?}\nouter_momentum = {:?}\ncompression = {:?}\n\n\
         [budget]\ntotal_xmr = {budget:?}\n",
        spec.name,
        g.n_layer,
        g.n_head,
        g.n_embd,
        g.block_size,
        spec.data.eval_fraction,
        t.seed,
        t.steps,
        t.batch_size,
        t.checkpoint_every,
        t.lr,
        t.min_lr,
        t.warmup_steps,
        t.weight_decay,
        t.beta1,
        t.beta2,
        t.eps,
        t.grad_clip.unwrap_or(0.0),
        options.workers,
        options.inner_steps,
        options.outer_lr,
        options.outer_momentum,
        compression.as_str(),
    )
}

/// What every DiLoCo benchmark run is compared with: the synchronous run
/// at equal tokens, and the model's size.
#[derive(Debug, Clone, PartialEq)]
pub struct DilocoBaseline {
    pub loss_sync: f32,
    pub params: usize,
    /// Each parameter tensor's length.
    pub sizes: Vec<usize>,
    /// A per-step all-reduce of the gradients: 2 × parameters × 4 bytes ×
    /// steps.
    pub bytes_sync: u64,
}

/// Trains the synchronous run of the DiLoCo benchmark on `text` in `dir`.
pub fn diloco_baseline(
    options: DilocoOptions,
    text: &[u8],
    dir: &std::path::Path,
    device: &Device,
    progress: &mut dyn FnMut(&str),
) -> Result<DilocoBaseline, TrainError> {
    let steps = options.inner_steps.saturating_mul(options.rounds);
    let spec = diloco_spec(options, None);
    let data = Dataset::from_bytes(&spec, text)?;
    let meta = data.model_meta(&spec)?;
    let sizes: Vec<usize> = meta
        .params()
        .iter()
        .map(|p| p.shape.iter().product())
        .collect();
    let params: usize = sizes.iter().sum();
    progress(&format!(
        "synchronous: {steps} steps, batch {}",
        spec.train.batch_size * options.workers as usize
    ));
    let mut sync = spec.clone();
    sync.train.batch_size *= options.workers as usize;
    let sync_path = dir.join("sync.safetensors");
    crate::run_segment(
        &sync,
        &data,
        None,
        0,
        steps,
        device,
        &sync_path,
        &mut |_| {},
    )?;
    Ok(DilocoBaseline {
        loss_sync: held_out(&sync, &data, &sync_path, device)?,
        params,
        sizes,
        bytes_sync: 2 * params as u64 * 4 * steps,
    })
}

/// The held-out loss of a parallel run's final global checkpoint
/// `global`, on the benchmark's windows.
pub fn diloco_loss(
    options: DilocoOptions,
    compression: Compression,
    text: &[u8],
    global: &std::path::Path,
    device: &Device,
) -> Result<f32, TrainError> {
    let spec = diloco_spec(options, Some(compression));
    let data = Dataset::from_bytes(&spec, text)?;
    held_out(&spec, &data, global, device)
}

impl DilocoRun {
    /// A run's figures against the baseline.
    pub fn new(
        compression: Compression,
        loss: f32,
        bytes: u64,
        base: &DilocoBaseline,
        seconds: f64,
        utilisation: Option<f64>,
    ) -> DilocoRun {
        DilocoRun {
            compression: compression.as_str().into(),
            loss_diloco: loss,
            loss_ratio: f64::from(loss) / f64::from(base.loss_sync),
            bytes_per_worker_diloco: bytes,
            traffic_reduction: base.bytes_sync as f64 / bytes.max(1) as f64,
            seconds,
            utilisation,
        }
    }
}

impl DilocoReport {
    /// The report of `runs` (`none` first) against `base`.
    pub fn new(
        options: DilocoOptions,
        base: &DilocoBaseline,
        runs: Vec<DilocoRun>,
        placement: &str,
        seconds: f64,
    ) -> DilocoReport {
        let plain = runs.first().cloned();
        DilocoReport {
            workers: options.workers,
            inner_steps: options.inner_steps,
            rounds: options.rounds,
            outer_lr: options.outer_lr,
            outer_momentum: options.outer_momentum,
            loss_diloco: plain.as_ref().map_or(f32::NAN, |p| p.loss_diloco),
            loss_sync: base.loss_sync,
            loss_ratio: plain.as_ref().map_or(f64::NAN, |p| p.loss_ratio),
            bytes_per_worker_diloco: plain.as_ref().map_or(0, |p| p.bytes_per_worker_diloco),
            bytes_per_worker_sync: base.bytes_sync,
            traffic_reduction: plain.as_ref().map_or(0.0, |p| p.traffic_reduction),
            utilisation: plain.as_ref().and_then(|p| p.utilisation),
            runs,
            placement: placement.into(),
            params: base.params,
            seconds,
        }
    }
}

/// Runs the DiLoCo benchmark on `text` in `dir`, every worker here: the
/// synchronous run, then the two parallel runs; `progress` hears each
/// phase. The bytes are what the transfers' encodings take, not measured.
pub fn diloco(
    options: DilocoOptions,
    text: &[u8],
    dir: &std::path::Path,
    device: &Device,
    progress: &mut dyn FnMut(&str),
) -> Result<DilocoReport, TrainError> {
    let started = Instant::now();
    let base = diloco_baseline(options, text, dir, device, progress)?;
    let mut runs = Vec::new();
    for compression in [Compression::None, Compression::Int8] {
        let run_started = Instant::now();
        let s = diloco_spec(options, Some(compression));
        let data = Dataset::from_bytes(&s, text)?;
        let sub = dir.join(compression.as_str());
        std::fs::create_dir_all(&sub).map_err(|error| TrainError::Io {
            what: "cannot create",
            path: sub.clone(),
            error,
        })?;
        let mut on_round = |r: &crate::parallel::RoundReport| {
            progress(&format!(
                "diloco {}: round {}/{}, held-out loss {:.4}",
                compression.as_str(),
                r.round + 1,
                options.rounds,
                r.eval_loss.unwrap_or(f32::NAN)
            ))
        };
        let global = crate::parallel::train_parallel(
            &s,
            &data,
            &sub,
            device,
            &mut |_, _| {},
            &mut on_round,
        )?;
        let loss = held_out(&s, &data, &global, device)?;
        // Each round: the outer update down, the pseudo-gradient up.
        let per_transfer: u64 = match compression {
            Compression::None => base.params as u64 * 4,
            Compression::Int8 => base
                .sizes
                .iter()
                .map(|&n| gradpool_core::int8::encoded_len(n) as u64)
                .sum(),
        };
        let bytes = 2 * per_transfer * options.rounds;
        let seconds = run_started.elapsed().as_secs_f64();
        runs.push(DilocoRun::new(
            compression,
            loss,
            bytes,
            &base,
            seconds,
            None,
        ));
    }
    Ok(DilocoReport::new(
        options,
        &base,
        runs,
        "local",
        started.elapsed().as_secs_f64(),
    ))
}

/// The loss of a checkpoint (or global checkpoint) of `spec` on the
/// held-out text, on the benchmark's fixed windows.
fn held_out(
    spec: &JobSpec,
    data: &Dataset,
    path: &std::path::Path,
    device: &Device,
) -> Result<f32, TrainError> {
    let (meta, _, params) = crate::parallel::load_params(spec, Some(data), path)?;
    let model = Model::from_values(meta, params, device)?;
    crate::segment::eval_metrics(&model, data, DILOCO_EVAL_WINDOWS, spec.train.seed, device)?
        .map(|(loss, _)| loss)
        .ok_or_else(|| TrainError::Data("the benchmark's text has no held-out part".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_given_the_spec_the_benchmark_trains() {
        let options = DilocoOptions::default();
        for c in [Compression::None, Compression::Int8] {
            let mut got = JobSpec::from_toml_str(&diloco_spec_toml(options, c, "0.5")).unwrap();
            assert_eq!(got.verification, VerificationLevel::None);
            got.verification = VerificationLevel::default();
            got.budget = Budget::default();
            assert_eq!(got, diloco_spec(options, Some(c)));
        }
    }
}
