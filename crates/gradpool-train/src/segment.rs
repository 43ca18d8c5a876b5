//! Running a segment of training steps from a checkpoint to a checkpoint.

use crate::checkpoint::{self, State};
use crate::dataset::{DataKind, Dataset};
use crate::model::{Model, ModelMeta};
use crate::optim::AdamW;
use crate::rng::Rng;
use crate::schedule::learning_rate;
use crate::TrainError;
use candle_core::{Device, Tensor};
use gradpool_core::spec::JobSpec;
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

/// Progress after one step.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct StepReport {
    /// Index of the step just finished (0-based).
    pub step: u64,
    /// Training loss of that step's batch.
    pub loss: f32,
    /// `batch_size * block_size` tokens (GPT) or `batch_size` examples (MLP)
    /// divided by the step's wall time.
    pub tokens_per_sec: f64,
}

/// What a segment produced besides its checkpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SegmentOutcome {
    /// Training loss of every step of the segment, in order.
    pub losses: Vec<f32>,
    /// Loss on the eval split at the end of the segment, if there is one.
    pub eval_loss: Option<f32>,
}

/// A batch: model inputs and targets (u32 `[N]`).
pub(crate) struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
}

/// Worker `worker` of a parallel job's round `round`, whose first step is
/// `first_step`: it trains on shard `worker` of `workers` of the data, and
/// the batch of its inner step `i` is a pure function of
/// `(seed, round, worker, i)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub round: u64,
    pub worker: u32,
    pub workers: u32,
    pub first_step: u64,
}

impl Shard {
    /// The part `[lo, hi)` of `0..n` this worker's shard covers: the
    /// `worker`-th of `workers` contiguous parts.
    fn part(&self, n: usize) -> Range<usize> {
        let cut = |w: u32| (n as u128 * u128::from(w) / u128::from(self.workers.max(1))) as usize;
        cut(self.worker)..cut(self.worker + 1)
    }
}

/// The training batch of `step`: a pure function of `(seed, step)`, or,
/// for a worker of a parallel job, of `(seed, round, worker, inner step)`
/// drawn from its shard.
pub(crate) fn train_batch(
    data: &Dataset,
    meta: &ModelMeta,
    batch_size: usize,
    seed: u64,
    step: u64,
    shard: Option<Shard>,
    device: &Device,
) -> Result<Batch, TrainError> {
    let mut rng = match shard {
        None => Rng::derive(seed, "batch", step),
        Some(s) => Rng::derive(
            seed,
            &format!("batch:round{}:worker{}", s.round, s.worker),
            step - s.first_step,
        ),
    };
    match (&data.kind, meta) {
        (DataKind::Text { train, .. }, ModelMeta::Gpt { block_size, .. }) => {
            let starts = 0..train.len().saturating_sub(*block_size);
            let starts = shard.map_or(starts.clone(), |s| {
                let part = s.part(starts.len());
                part.start..part.end
            });
            if train.len() > *block_size && starts.is_empty() {
                return Err(shard_too_small(shard, "text windows"));
            }
            text_batch(train, *block_size, batch_size, starts, &mut rng, device)
        }
        (
            DataKind::Csv {
                train_x, train_y, ..
            },
            ModelMeta::Mlp { inputs, .. },
        ) => {
            let part = shard.map_or(0..train_y.len(), |s| s.part(train_y.len()));
            if part.is_empty() {
                return Err(shard_too_small(shard, "rows"));
            }
            let rows: Vec<usize> = (0..batch_size)
                .map(|_| part.start + rng.below(part.len() as u64) as usize)
                .collect();
            csv_batch(train_x, train_y, *inputs, &rows, device)
        }
        _ => Err(TrainError::Data("data does not fit the model".into())),
    }
}

fn shard_too_small(shard: Option<Shard>, what: &str) -> TrainError {
    TrainError::Data(match shard {
        Some(s) => format!(
            "worker {}'s shard holds no {what}: the training split is too small for {} workers \
             (parallel.workers)",
            s.worker, s.workers
        ),
        None => format!("the training split holds no {what}"),
    })
}

/// A batch of windows of `block` characters, each starting in `starts`.
fn text_batch(
    ids: &[u32],
    block: usize,
    batch_size: usize,
    starts: Range<usize>,
    rng: &mut Rng,
    device: &Device,
) -> Result<Batch, TrainError> {
    if ids.len() <= block {
        return Err(TrainError::Data(format!(
            "text has {} characters in this split, needs more than block_size ({block})",
            ids.len()
        )));
    }
    let mut x = Vec::with_capacity(batch_size * block);
    let mut y = Vec::with_capacity(batch_size * block);
    for _ in 0..batch_size {
        let s = starts.start + rng.below(starts.len() as u64) as usize;
        x.extend_from_slice(&ids[s..s + block]);
        y.extend_from_slice(&ids[s + 1..s + block + 1]);
    }
    Ok(Batch {
        inputs: Tensor::from_vec(x, (batch_size, block), device)?,
        targets: Tensor::from_vec(y, batch_size * block, device)?,
    })
}

fn csv_batch(
    xs: &[f32],
    ys: &[u32],
    f: usize,
    rows: &[usize],
    device: &Device,
) -> Result<Batch, TrainError> {
    let mut x = Vec::with_capacity(rows.len() * f);
    let mut y = Vec::with_capacity(rows.len());
    for &r in rows {
        x.extend_from_slice(&xs[r * f..(r + 1) * f]);
        y.push(ys[r]);
    }
    Ok(Batch {
        inputs: Tensor::from_vec(x, (rows.len(), f), device)?,
        targets: Tensor::from_vec(y, rows.len(), device)?,
    })
}

/// Logits of a batch: `[N, V]` or `[N, classes]`.
pub(crate) fn logits(model: &Model, inputs: &Tensor) -> candle_core::Result<Tensor> {
    match model.meta {
        ModelMeta::Gpt { .. } => model.gpt_logits(inputs),
        ModelMeta::Mlp { .. } => model.mlp_logits(inputs),
        // `Model::from_values` refuses it.
        ModelMeta::Container { .. } => Err(candle_core::Error::Msg(
            "a container job's model has no native logits".into(),
        )),
    }
}

/// Batches of the eval split: for text, 4 fixed windows batches (seeded);
/// for CSV, the whole split in chunks.
fn eval_batches(
    data: &Dataset,
    meta: &ModelMeta,
    batch_size: usize,
    seed: u64,
    device: &Device,
) -> Result<Vec<Batch>, TrainError> {
    match (&data.kind, meta) {
        (DataKind::Text { eval, .. }, ModelMeta::Gpt { block_size, .. }) => {
            if eval.len() <= *block_size {
                return Ok(Vec::new());
            }
            (0..4)
                .map(|i| {
                    let mut rng = Rng::derive(seed, "eval", i);
                    let starts = 0..eval.len() - block_size;
                    text_batch(eval, *block_size, batch_size, starts, &mut rng, device)
                })
                .collect()
        }
        (DataKind::Csv { eval_x, eval_y, .. }, ModelMeta::Mlp { inputs, .. }) => {
            let rows: Vec<usize> = (0..eval_y.len()).collect();
            rows.chunks(1024)
                .map(|c| csv_batch(eval_x, eval_y, *inputs, c, device))
                .collect()
        }
        _ => Err(TrainError::Data("data does not fit the model".into())),
    }
}

/// Mean loss and accuracy (fraction of argmax hits) over the eval split.
pub(crate) fn eval_metrics(
    model: &Model,
    data: &Dataset,
    batch_size: usize,
    seed: u64,
    device: &Device,
) -> Result<Option<(f32, f32)>, TrainError> {
    let batches = eval_batches(data, &model.meta, batch_size, seed, device)?;
    if batches.is_empty() {
        return Ok(None);
    }
    let mut loss_sum = 0f64;
    let mut hits = 0usize;
    let mut n = 0usize;
    for b in &batches {
        let lg = logits(model, &b.inputs)?.detach();
        let rows = b.targets.dim(0)?;
        let loss = crate::ops::cross_entropy(&lg, &b.targets)?.to_scalar::<f32>()?;
        loss_sum += loss as f64 * rows as f64;
        let pred = lg.argmax(1)?.to_vec1::<u32>()?;
        let tg = b.targets.to_vec1::<u32>()?;
        hits += pred.iter().zip(&tg).filter(|(a, b)| a == b).count();
        n += rows;
    }
    Ok(Some(((loss_sum / n as f64) as f32, hits as f32 / n as f32)))
}

/// Runs steps `[start_step, end_step)` of `spec` on `data`.
///
/// `start` is the checkpoint at `start_step` (validated: names, dtypes and
/// shapes against the spec, the spec fingerprint, and its step must equal
/// `start_step`); it may be `None` only when `start_step == 0`, which means
/// a fresh seeded initialisation. Writes the checkpoint at `end_step` to
/// `out` atomically and calls `on_step` after every step.
#[allow(clippy::too_many_arguments)]
pub fn run_segment(
    spec: &JobSpec,
    data: &Dataset,
    start: Option<&Path>,
    start_step: u64,
    end_step: u64,
    device: &Device,
    out: &Path,
    on_step: &mut dyn FnMut(StepReport),
) -> Result<SegmentOutcome, TrainError> {
    run_segment_as(
        Recipe::HONEST,
        spec,
        data,
        start,
        start_step,
        end_step,
        device,
        out,
        on_step,
    )
}

/// [`run_segment`] with the GPT step computed through candle's autograd
/// instead of the hand-written CPU step.
///
/// Autograd is the path every non-CPU device takes (there this function is
/// [`run_segment`]); on the CPU it is a second implementation of the same
/// arithmetic in another order. Its checkpoints differ from
/// [`run_segment`]'s only by f32 rounding and what training makes of it,
/// which is what a replay in another reproducibility class shows: the
/// `tolerance` tests calibrate
/// [`CROSS_CLASS_TOLERANCE`](gradpool_core::verification::CROSS_CLASS_TOLERANCE)
/// with it. A few times slower than [`run_segment`] on the CPU.
#[allow(clippy::too_many_arguments)]
pub fn run_segment_autograd(
    spec: &JobSpec,
    data: &Dataset,
    start: Option<&Path>,
    start_step: u64,
    end_step: u64,
    device: &Device,
    out: &Path,
    on_step: &mut dyn FnMut(StepReport),
) -> Result<SegmentOutcome, TrainError> {
    let recipe = Recipe {
        autograd: true,
        ..Recipe::HONEST
    };
    run_segment_as(
        recipe, spec, data, start, start_step, end_step, device, out, on_step,
    )
}

/// How the steps of a segment are computed: [`Recipe::HONEST`] for a real
/// segment; the cross-implementation check and the cheats change it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recipe {
    /// Computes the GPT step through candle's autograd even on the CPU.
    pub autograd: bool,
    /// Factor on the schedule's learning rate.
    pub lr_scale: f64,
    /// Seed of the batch stream; `None` for the spec's seed.
    pub batch_seed: Option<u64>,
    /// A parallel job's worker: batches from its shard.
    pub shard: Option<Shard>,
}

impl Recipe {
    /// What the spec says.
    pub const HONEST: Recipe = Recipe {
        autograd: false,
        lr_scale: 1.0,
        batch_seed: None,
        shard: None,
    };
}

/// A whole segment trained by `recipe`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_segment_as(
    recipe: Recipe,
    spec: &JobSpec,
    data: &Dataset,
    start: Option<&Path>,
    start_step: u64,
    end_step: u64,
    device: &Device,
    out: &Path,
    on_step: &mut dyn FnMut(StepReport),
) -> Result<SegmentOutcome, TrainError> {
    check_range(spec, start_step, end_step)?;
    let (model, mut opt) = start_state(spec, data, start, start_step, device)?;
    let losses = train_steps(
        &model,
        &mut opt,
        spec,
        data,
        start_step..end_step,
        device,
        recipe,
        on_step,
    )?;
    finish(spec, data, &model, &opt, end_step, device, out, losses)
}

/// Refuses a segment that is empty or reaches past the job's steps.
pub(crate) fn check_range(
    spec: &JobSpec,
    start_step: u64,
    end_step: u64,
) -> Result<(), TrainError> {
    if start_step >= end_step || end_step > spec.train.steps {
        return Err(TrainError::Segment(format!(
            "steps [{start_step}, {end_step}) are not a non-empty range within the job's {} steps",
            spec.train.steps
        )));
    }
    Ok(())
}

/// The model and optimizer at `start_step`: the checkpoint `start`
/// (validated), or the seeded initialisation when `start_step` is 0 and
/// there is no checkpoint.
pub(crate) fn start_state(
    spec: &JobSpec,
    data: &Dataset,
    start: Option<&Path>,
    start_step: u64,
    device: &Device,
) -> Result<(Model, AdamW), TrainError> {
    match start {
        None if start_step != 0 => Err(TrainError::Segment(format!(
            "a segment starting at step {start_step} needs the checkpoint of that step"
        ))),
        None => {
            let meta = data.model_meta(spec)?;
            let model = Model::init(meta, spec.train.seed, device)?;
            let opt = AdamW::new(&model)?;
            Ok((model, opt))
        }
        Some(path) => {
            let (meta, state) = checkpoint::load(spec, Some(data), path, Some(start_step))?;
            let model = Model::from_values(meta, state.params, device)?;
            let opt = AdamW::from_values(&model, state.m, state.v)?;
            Ok((model, opt))
        }
    }
}

/// Trains `steps` by `recipe`, calling `on_step` after each; returns their
/// losses.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_steps(
    model: &Model,
    opt: &mut AdamW,
    spec: &JobSpec,
    data: &Dataset,
    steps: Range<u64>,
    device: &Device,
    recipe: Recipe,
    on_step: &mut dyn FnMut(StepReport),
) -> Result<Vec<f32>, TrainError> {
    let units = match model.meta {
        ModelMeta::Gpt { block_size, .. } => spec.train.batch_size * block_size,
        ModelMeta::Mlp { .. } | ModelMeta::Container { .. } => spec.train.batch_size,
    } as f64;
    let mut losses = Vec::with_capacity(steps.end.saturating_sub(steps.start) as usize);
    for step in steps {
        let t0 = Instant::now();
        let loss = train_step_as(model, opt, spec, data, step, device, recipe)?;
        losses.push(loss);
        let dt = t0.elapsed().as_secs_f64().max(1e-9);
        on_step(StepReport {
            step,
            loss,
            tokens_per_sec: units / dt,
        });
    }
    Ok(losses)
}

/// Evaluates the model and writes the checkpoint at `end_step` to `out`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish(
    spec: &JobSpec,
    data: &Dataset,
    model: &Model,
    opt: &AdamW,
    end_step: u64,
    device: &Device,
    out: &Path,
    losses: Vec<f32>,
) -> Result<SegmentOutcome, TrainError> {
    let eval_loss =
        eval_metrics(model, data, spec.train.batch_size, spec.train.seed, device)?.map(|(l, _)| l);
    let (m, v) = opt.values()?;
    let state = State {
        step: end_step,
        params: model.values()?,
        m,
        v,
    };
    let bytes = checkpoint::checkpoint_bytes(spec, data, &model.meta, state);
    checkpoint::write_atomic(out, &bytes)?;
    Ok(SegmentOutcome { losses, eval_loss })
}

/// One training step: forward, backward, AdamW. Returns the loss.
pub(crate) fn train_step(
    model: &Model,
    opt: &mut AdamW,
    spec: &JobSpec,
    data: &Dataset,
    step: u64,
    device: &Device,
) -> Result<f32, TrainError> {
    train_step_as(model, opt, spec, data, step, device, Recipe::HONEST)
}

/// One training step by `recipe`.
fn train_step_as(
    model: &Model,
    opt: &mut AdamW,
    spec: &JobSpec,
    data: &Dataset,
    step: u64,
    device: &Device,
    recipe: Recipe,
) -> Result<f32, TrainError> {
    let batch = train_batch(
        data,
        &model.meta,
        spec.train.batch_size,
        recipe.batch_seed.unwrap_or(spec.train.seed),
        step,
        recipe.shard,
        device,
    )?;
    let lr = learning_rate(&spec.train, step) * recipe.lr_scale;
    let diverged = |value: f32| TrainError::Diverged {
        step,
        what: format!("loss is {value}"),
    };
    if device.is_cpu() && matches!(model.meta, ModelMeta::Gpt { .. }) && !recipe.autograd {
        // Inside candle's own rayon pool, the thread that runs the step also
        // works on gemm's parallel products instead of sleeping while two
        // other threads run them.
        let (value, grads) = candle_core::utils::with_threadpool(|| {
            crate::gpt_cpu::loss_and_grads(model, &batch.inputs, &batch.targets)
        })?;
        if !value.is_finite() {
            return Err(diverged(value));
        }
        opt.step_with(model, &grads, &spec.train, step, lr)?;
        return Ok(value);
    }
    let lg = logits(model, &batch.inputs)?;
    let loss = crate::ops::cross_entropy(&lg, &batch.targets)?;
    let value = loss.to_scalar::<f32>()?;
    if !value.is_finite() {
        return Err(diverged(value));
    }
    let grads = loss.backward()?;
    opt.step(model, &grads, &spec.train, step, lr)?;
    Ok(value)
}

/// Evaluation of a checkpoint on the eval split.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// The checkpoint's step.
    pub step: u64,
    /// Mean cross-entropy on the eval split.
    pub loss: f32,
    /// Fraction of eval examples (MLP) or characters (GPT) whose most likely
    /// class is right.
    pub accuracy: f32,
}

/// Evaluates a checkpoint of `spec` on the eval split of `data` (for MLP
/// models: classification accuracy on the held-out rows). `None` when the
/// data has no eval split.
pub fn evaluate(
    spec: &JobSpec,
    data: &Dataset,
    checkpoint: &Path,
    device: &Device,
) -> Result<Option<Evaluation>, TrainError> {
    // A checkpoint, or a parallel job's global checkpoint.
    let (meta, step, params) = crate::parallel::load_params(spec, Some(data), checkpoint)?;
    let model = Model::from_values(meta, params, device)?;
    Ok(
        eval_metrics(&model, data, spec.train.batch_size, spec.train.seed, device)?.map(
            |(loss, accuracy)| Evaluation {
                step,
                loss,
                accuracy,
            },
        ),
    )
}
