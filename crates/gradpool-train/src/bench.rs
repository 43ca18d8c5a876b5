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
    Budget, DataFormat, DataSpec, GptConfig, JobSpec, ModelConfig, Resources, TrainConfig,
    VerificationLevel,
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
