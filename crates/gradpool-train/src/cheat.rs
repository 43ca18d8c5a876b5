//! Cheating segments, for testing audits: each produces a checkpoint that
//! passes every check a checkpoint gets on load (format, spec fingerprint,
//! data, step, every tensor's name, dtype and shape), so the next provider
//! can continue from it, but whose state is not what the segment's steps
//! give.
//!
//! Only built with the `cheat` feature; a provider built without it cannot
//! cheat by accident. Every cheat is deterministic, so tests can rely on
//! its result.

use crate::model::{Model, ModelMeta};
use crate::optim::AdamW;
use crate::rng::Rng;
use crate::segment::{
    check_range, finish, start_state, train_steps, Recipe, SegmentOutcome, StepReport,
};
use crate::{Dataset, TrainError};
use candle_core::Device;
use gradpool_core::spec::JobSpec;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The relative size of the noise [`CheatKind::PerturbWeights`] adds: a
/// standard deviation of 10% of each parameter tensor's root mean square.
///
/// Perturbations well below
/// [`CROSS_CLASS_TOLERANCE`](gradpool_core::verification::CROSS_CLASS_TOLERANCE)
/// pass a replay in another reproducibility class (they are as large as
/// honest rounding differences); a replay in the provider's own class
/// catches any perturbation, since it must match bit for bit.
pub const PERTURBATION: f64 = 0.1;

/// How a cheating segment fakes its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheatKind {
    /// Trains only the first half of the steps (rounded down, so at least
    /// one step is skipped) and claims the end step.
    SkipSteps,
    /// Fresh random parameters (initialised from a seed derived from the
    /// job's seed and the end step), zero moments; no training.
    RandomWeights,
    /// Trains honestly, then adds Gaussian noise of [`PERTURBATION`] times
    /// each parameter tensor's root mean square to the parameters.
    PerturbWeights,
    /// Hands back the start state unchanged (for the first segment, the
    /// seeded initialisation) as the end step's.
    OldCheckpoint,
    /// Trains on other batches: the batch stream of another seed.
    OtherData,
    /// Trains with half the schedule's learning rate.
    LowerLr,
}

impl CheatKind {
    /// Every kind, in declaration order.
    pub const ALL: [CheatKind; 6] = [
        CheatKind::SkipSteps,
        CheatKind::RandomWeights,
        CheatKind::PerturbWeights,
        CheatKind::OldCheckpoint,
        CheatKind::OtherData,
        CheatKind::LowerLr,
    ];

    /// The kebab-case name (`skip-steps`, …), as parsed by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            CheatKind::SkipSteps => "skip-steps",
            CheatKind::RandomWeights => "random-weights",
            CheatKind::PerturbWeights => "perturb-weights",
            CheatKind::OldCheckpoint => "old-checkpoint",
            CheatKind::OtherData => "other-data",
            CheatKind::LowerLr => "lower-lr",
        }
    }
}

impl fmt::Display for CheatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a [`CheatKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown cheat {0:?}: expected skip-steps, random-weights, perturb-weights, old-checkpoint, other-data or lower-lr"
)]
pub struct UnknownCheat(pub String);

impl FromStr for CheatKind {
    type Err = UnknownCheat;

    fn from_str(s: &str) -> Result<CheatKind, UnknownCheat> {
        CheatKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownCheat(s.to_owned()))
    }
}

/// Runs a cheating segment `[start_step, end_step)` of `spec` on `data`:
/// the arguments and the checks on them are those of
/// [`run_segment`](crate::run_segment), and so is what it leaves behind —
/// a checkpoint at `end_step` written atomically to `out`, `on_step`
/// called once for every step, one loss per step — but the checkpoint's
/// state is faked as `kind` says. Where the cheat skipped a step, its loss
/// repeats the last real loss (or is `ln(vocabulary)` when there is none)
/// and its report claims 10 ms of work.
#[allow(clippy::too_many_arguments)]
pub fn run_segment_cheating(
    kind: CheatKind,
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
    let (model, opt) = start_state(spec, data, start, start_step, device)?;
    let from = Honest {
        model,
        opt,
        recipe: Recipe::HONEST,
        steps: start_step..end_step,
    };
    let (model, opt, losses) = fake(kind, spec, data, from, device, on_step)?;
    finish(spec, data, &model, &opt, end_step, device, out, losses)
}

/// Runs a parallel job's worker segment ([`crate::parallel::run_worker_segment`])
/// faked as `kind` says: from the same start (the round's global weights,
/// the slot's moments, the worker's shard), the same files at the round's
/// end step (checkpoint and pseudo-gradient), a faked state.
pub fn run_worker_segment_cheating(
    kind: CheatKind,
    spec: &JobSpec,
    data: &Dataset,
    task: &crate::parallel::WorkerTask<'_>,
    device: &Device,
    out: crate::parallel::WorkerOut<'_>,
    on_step: &mut dyn FnMut(StepReport),
) -> Result<SegmentOutcome, TrainError> {
    let start = crate::parallel::worker_start(spec, data, task, device)?;
    let global = start.global;
    let from = Honest {
        model: start.model,
        opt: start.opt,
        recipe: start.recipe,
        steps: start.steps,
    };
    let (model, opt, losses) = fake(kind, spec, data, from, device, on_step)?;
    crate::parallel::finish_worker(spec, data, &global, (&model, &opt), device, out, losses)
}

/// What an honest segment would start from and do.
struct Honest {
    model: Model,
    opt: AdamW,
    recipe: Recipe,
    steps: std::ops::Range<u64>,
}

/// The faked end state and losses of the segment `from` describes.
fn fake(
    kind: CheatKind,
    spec: &JobSpec,
    data: &Dataset,
    from: Honest,
    device: &Device,
    on_step: &mut dyn FnMut(StepReport),
) -> Result<(Model, AdamW, Vec<f32>), TrainError> {
    let Honest {
        model,
        mut opt,
        recipe: honest,
        steps,
    } = from;
    let (start_step, end_step) = (steps.start, steps.end);
    Ok(match kind {
        CheatKind::SkipSteps => {
            let trained = start_step + (end_step - start_step) / 2;
            let mut losses = train_steps(
                &model,
                &mut opt,
                spec,
                data,
                start_step..trained,
                device,
                honest,
                on_step,
            )?;
            fake_steps(&model.meta, spec, trained..end_step, &mut losses, on_step);
            (model, opt, losses)
        }
        CheatKind::RandomWeights => {
            let seed = Rng::derive(spec.train.seed, "cheat:random-weights", end_step).next_u64();
            let model = Model::init(model.meta.clone(), seed, device)?;
            let opt = AdamW::new(&model)?;
            let mut losses = Vec::new();
            fake_steps(&model.meta, spec, steps, &mut losses, on_step);
            (model, opt, losses)
        }
        CheatKind::OldCheckpoint => {
            let mut losses = Vec::new();
            fake_steps(&model.meta, spec, steps, &mut losses, on_step);
            (model, opt, losses)
        }
        CheatKind::PerturbWeights | CheatKind::OtherData | CheatKind::LowerLr => {
            let recipe = match kind {
                CheatKind::OtherData => Recipe {
                    batch_seed: Some(spec.train.seed ^ 0x6368_6561_7400_0001),
                    ..honest
                },
                CheatKind::LowerLr => Recipe {
                    lr_scale: 0.5,
                    ..honest
                },
                _ => honest,
            };
            let losses = train_steps(&model, &mut opt, spec, data, steps, device, recipe, on_step)?;
            if kind == CheatKind::PerturbWeights {
                let model = perturb(model, spec.train.seed, end_step, device)?;
                let (m, v) = opt.values()?;
                let opt = AdamW::from_values(&model, m, v)?;
                (model, opt, losses)
            } else {
                (model, opt, losses)
            }
        }
    })
}

/// `model` with Gaussian noise of [`PERTURBATION`] times each parameter
/// tensor's root mean square added, from a stream derived from the job's
/// seed and the end step.
fn perturb(model: Model, seed: u64, end_step: u64, device: &Device) -> Result<Model, TrainError> {
    let mut rng = Rng::derive(seed, "cheat:perturb-weights", end_step);
    let params = model
        .values()?
        .into_iter()
        .map(|mut values| {
            let sq = values.iter().map(|&x| x as f64 * x as f64).sum::<f64>();
            let rms = (sq / values.len().max(1) as f64).sqrt();
            for x in &mut values {
                *x += (rng.normal() * PERTURBATION * rms) as f32;
            }
            values
        })
        .collect();
    Model::from_values(model.meta.clone(), params, device)
}

/// Reports `steps` as done without doing them: each gets the last loss of
/// `losses` (or `ln(vocabulary)`, the loss of a uniform guess, when there is
/// none) and a report of 10 ms of work.
fn fake_steps(
    meta: &ModelMeta,
    spec: &JobSpec,
    steps: std::ops::Range<u64>,
    losses: &mut Vec<f32>,
    on_step: &mut dyn FnMut(StepReport),
) {
    let (units, classes) = match meta {
        ModelMeta::Gpt {
            block_size,
            vocab_size,
            ..
        } => (spec.train.batch_size * block_size, *vocab_size),
        ModelMeta::Mlp { classes, .. } => (spec.train.batch_size, *classes),
        ModelMeta::Container { .. } => (spec.train.batch_size, 1),
    };
    let loss = losses
        .last()
        .copied()
        .unwrap_or((classes.max(1) as f32).ln());
    for step in steps {
        losses.push(loss);
        on_step(StepReport {
            step,
            loss,
            tokens_per_sec: units as f64 / 0.01,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_kebab_case() {
        for kind in CheatKind::ALL {
            assert_eq!(kind.to_string().parse::<CheatKind>(), Ok(kind));
        }
        assert_eq!("lower-lr".parse::<CheatKind>(), Ok(CheatKind::LowerLr));
        assert_eq!(CheatKind::OldCheckpoint.to_string(), "old-checkpoint");
        let err = "LowerLr".parse::<CheatKind>().unwrap_err();
        assert!(err.to_string().contains("skip-steps"), "{err}");
    }
}
