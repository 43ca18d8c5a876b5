//! Parallel jobs (DiLoCo, a spec with `[parallel]`) on the training side:
//! round 0's global checkpoint, a worker's inner segment, the outer step
//! on files, and a whole parallel job trained on this machine, worker after
//! worker ([`train_parallel`]), which is what a pool's run of the same
//! spec must give, byte for byte.
//!
//! A worker's inner segment of round `r` starts from the parameters of
//! global checkpoint `r` and from its slot's AdamW moments: those of the
//! slot's own checkpoint of round `r − 1` (none in round 0, or when a
//! slot's state is lost: then fresh moments). It trains steps
//! `[r·H, (r+1)·H)` of the schedule (learning rate and bias correction by
//! that step) on batches of its shard ([`Shard`]), and writes an ordinary
//! checkpoint. The outer step is [`gradpool_core::outer`]'s.

use crate::checkpoint::{self, HostTensor};
use crate::dataset::Dataset;
use crate::model::{Model, ModelMeta};
use crate::optim::AdamW;
use crate::segment::{finish, train_steps, Recipe, SegmentOutcome, Shard, StepReport};
use crate::TrainError;
use candle_core::Device;
use gradpool_core::delta::{self, DeltaKind};
use gradpool_core::outer::{self, Global, Tensors, GLOBAL_FORMAT, WEIGHTS_FORMAT};
use gradpool_core::spec::{JobSpec, ParallelConfig};
use std::path::{Path, PathBuf};

/// The spec's `[parallel]` table, or an error saying the spec has none.
pub fn parallel_of(spec: &JobSpec) -> Result<ParallelConfig, TrainError> {
    spec.parallel
        .ok_or_else(|| TrainError::Segment("the spec has no [parallel] table".into()))
}

/// Parameter values in the model's order, as named tensors.
fn named(meta: &ModelMeta, values: Vec<Vec<f32>>) -> Tensors {
    meta.params()
        .into_iter()
        .zip(values)
        .map(|(p, v)| (p.name, (p.shape, v)))
        .collect()
}

/// Round 0's global checkpoint of `spec` on `data`: the seeded initial
/// weights (the same whatever the device), no momentum.
pub fn initial_global(spec: &JobSpec, data: &Dataset) -> Result<Vec<u8>, TrainError> {
    parallel_of(spec)?;
    let meta = data.model_meta(spec)?;
    let model = Model::init(meta.clone(), spec.train.seed, &Device::Cpu)?;
    let metadata = checkpoint::base_metadata(spec, data, &meta, 0);
    Ok(Global::initial(named(&meta, model.values()?), metadata).to_bytes())
}

/// Round 0's global checkpoint as loaded: the seeded initial weights.
fn initial_loaded(spec: &JobSpec, data: &Dataset) -> Result<LoadedGlobal, TrainError> {
    let meta = data.model_meta(spec)?;
    let params = meta
        .params()
        .iter()
        .map(|p| p.initial_values(spec.train.seed))
        .collect();
    Ok(LoadedGlobal {
        meta,
        round: 0,
        step: 0,
        params,
    })
}

/// A global checkpoint of `spec` (and `data`), or the weights a worker
/// rebuilt of one ([`outer::Weights`]), validated like a start
/// checkpoint: format, spec fingerprint, model, every tensor's shape.
pub(crate) struct LoadedGlobal {
    pub meta: ModelMeta,
    pub round: u64,
    pub step: u64,
    pub params: Vec<Vec<f32>>,
}

pub(crate) fn load_global(
    spec: &JobSpec,
    data: Option<&Dataset>,
    path: &Path,
) -> Result<LoadedGlobal, TrainError> {
    global_of(spec, data, checkpoint::read(path)?, path)
}

/// [`load_global`] of a file already parsed (from `path`, which errors
/// name).
fn global_of(
    spec: &JobSpec,
    data: Option<&Dataset>,
    mut parsed: checkpoint::Parsed,
    path: &Path,
) -> Result<LoadedGlobal, TrainError> {
    let format = match parsed.meta(path, "format")? {
        WEIGHTS_FORMAT => WEIGHTS_FORMAT,
        _ => GLOBAL_FORMAT,
    };
    let (meta, step) = checkpoint::validate(spec, data, &parsed, path, format)?;
    let round_text = parsed.meta(path, "round")?;
    let round: u64 = round_text.parse().map_err(|_| {
        TrainError::checkpoint(path, format!("round {round_text:?} is not a number"))
    })?;
    let params = parsed.take_params(path, &meta, "param.")?;
    if format == GLOBAL_FORMAT {
        parsed.take_params(path, &meta, "outer_m.")?;
    }
    parsed.no_extra(path)?;
    Ok(LoadedGlobal {
        meta,
        round,
        step,
        params,
    })
}

/// A worker's inner segment: what it starts from and which slot it is.
#[derive(Debug, Clone, Copy)]
pub struct WorkerTask<'a> {
    /// The global checkpoint the round starts from (or its weights,
    /// [`outer::Weights`]); `None`: round 0's, the seeded initial weights
    /// (which the worker computes itself).
    pub global: Option<&'a Path>,
    /// The slot's checkpoint of the round before (its AdamW moments);
    /// `None`: fresh moments (round 0, or a slot whose state is lost).
    pub slot: Option<&'a Path>,
    pub worker: u32,
    /// The steps the caller means to train, refused unless they are the
    /// round's; `None` takes the round's, whatever they are.
    pub steps: Option<(u64, u64)>,
}

/// Where a worker's segment writes: its checkpoint, and its
/// pseudo-gradient ([`delta`]), the part of it the outer step reads.
#[derive(Debug, Clone, Copy)]
pub struct WorkerOut<'a> {
    pub checkpoint: &'a Path,
    pub pseudo_gradient: &'a Path,
}

/// Trains `task`'s inner segment and writes its checkpoint and its
/// pseudo-gradient atomically.
pub fn run_worker_segment(
    spec: &JobSpec,
    data: &Dataset,
    task: &WorkerTask<'_>,
    device: &Device,
    out: WorkerOut<'_>,
    on_step: &mut dyn FnMut(StepReport),
) -> Result<SegmentOutcome, TrainError> {
    let start = worker_start(spec, data, task, device)?;
    let WorkerStart {
        model,
        mut opt,
        recipe,
        steps,
        global,
    } = start;
    let losses = train_steps(
        &model,
        &mut opt,
        spec,
        data,
        steps.clone(),
        device,
        recipe,
        on_step,
    )?;
    finish_worker(spec, data, &global, (&model, &opt), device, out, losses)
}

/// Writes what a worker's segment leaves: the checkpoint of `trained`,
/// and its pseudo-gradient against the round's `global` weights, through
/// the job's compression.
pub(crate) fn finish_worker(
    spec: &JobSpec,
    data: &Dataset,
    global: &RoundGlobal,
    (model, opt): (&Model, &AdamW),
    device: &Device,
    out: WorkerOut<'_>,
    losses: Vec<f32>,
) -> Result<SegmentOutcome, TrainError> {
    let p = parallel_of(spec)?;
    let end = p.round_steps(global.round, spec.train.steps).1;
    let trained = named(&model.meta, model.values()?);
    let raw = outer::pseudo_gradient(global.worker, &global.params, &trained)?;
    let metadata = checkpoint::base_metadata(spec, data, &model.meta, end);
    let (bytes, _) = delta::encode(
        DeltaKind::PseudoGradient,
        p.compression,
        (global.round, end),
        &raw,
        &metadata,
    )
    .map_err(gradpool_core::outer::OuterError::from)?;
    let outcome = finish(spec, data, model, opt, end, device, out.checkpoint, losses)?;
    checkpoint::write_atomic(out.pseudo_gradient, &bytes)?;
    Ok(outcome)
}

/// The round's global weights a worker started from.
pub(crate) struct RoundGlobal {
    pub round: u64,
    pub worker: u32,
    pub params: Tensors,
}

/// Where a worker's inner segment starts: the round's global parameters,
/// the slot's AdamW moments, the recipe of its shard and the round's steps.
pub(crate) struct WorkerStart {
    pub model: Model,
    pub opt: AdamW,
    pub recipe: Recipe,
    pub steps: std::ops::Range<u64>,
    pub global: RoundGlobal,
}

/// Checks `task` against the job and loads where its segment starts.
pub(crate) fn worker_start(
    spec: &JobSpec,
    data: &Dataset,
    task: &WorkerTask<'_>,
    device: &Device,
) -> Result<WorkerStart, TrainError> {
    let WorkerTask {
        global,
        slot,
        worker,
        steps,
    } = *task;
    let p = parallel_of(spec)?;
    if worker >= p.workers {
        return Err(TrainError::Segment(format!(
            "worker {worker} does not exist: the job has {} (parallel.workers)",
            p.workers
        )));
    }
    let g = match global {
        Some(path) => load_global(spec, Some(data), path)?,
        None => initial_loaded(spec, data)?,
    };
    let (start, end) = p.round_steps(g.round, spec.train.steps);
    if g.step != start || start >= end {
        return Err(TrainError::checkpoint(
            global.unwrap_or(Path::new("round 0's global checkpoint")),
            format!(
                "round {} at step {} is not a round of this job to train",
                g.round, g.step
            ),
        ));
    }
    if let Some((from, to)) = steps.filter(|s| *s != (start, end)) {
        return Err(TrainError::Segment(format!(
            "steps [{from}, {to}) are not round {}'s, [{start}, {end})",
            g.round
        )));
    }
    let global_params = named(&g.meta, g.params.clone());
    let model = Model::from_values(g.meta, g.params, device)?;
    let opt = match slot {
        None => AdamW::new(&model)?,
        Some(path) => {
            let (_, state) = checkpoint::load(spec, Some(data), path, Some(start))?;
            AdamW::from_values(&model, state.m, state.v)?
        }
    };
    let recipe = Recipe {
        shard: Some(Shard {
            round: g.round,
            worker,
            workers: p.workers,
            first_step: start,
        }),
        ..Recipe::HONEST
    };
    Ok(WorkerStart {
        model,
        opt,
        recipe,
        steps: start..end,
        global: RoundGlobal {
            round: g.round,
            worker,
            params: global_params,
        },
    })
}

/// The outer step on files: global checkpoint `global` (`None`: round
/// 0's, computed here) and the pseudo-gradients of the workers that
/// trained its round (`(worker, path)`, in increasing worker order; each
/// of this round and the job's compression) give the next global
/// checkpoint, written to `out.global`, and the update its workers rebuild
/// it from, written to `out.update`.
pub fn outer_step(
    spec: &JobSpec,
    data: &Dataset,
    global: Option<&Path>,
    workers: &[(u32, PathBuf)],
    out: OuterOut<'_>,
) -> Result<Global, TrainError> {
    let p = parallel_of(spec)?;
    // Read once: validated as this job's, then taken as the outer step's
    // input.
    let (bytes, path) = match global {
        Some(path) => (read(path)?, path),
        None => (
            initial_global(spec, data)?,
            Path::new("round 0's global checkpoint"),
        ),
    };
    let g = global_of(spec, Some(data), checkpoint::parse(&bytes, path)?, path)?;
    let (_, end) = p.round_steps(g.round, spec.train.steps);
    let current = Global::from_bytes(&bytes)?;
    let mut inputs = Vec::with_capacity(workers.len());
    for (w, path) in workers {
        let d = delta::decode(&read(path)?, DeltaKind::PseudoGradient)
            .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
        if (d.round, d.step, d.compression) != (g.round, end, p.compression) {
            return Err(TrainError::checkpoint(
                path,
                format!(
                    "it is the pseudo-gradient of round {} at step {} ({}), \
                     the outer step takes round {}'s at step {end} ({})",
                    d.round,
                    d.step,
                    d.compression.as_str(),
                    g.round,
                    p.compression.as_str()
                ),
            ));
        }
        inputs.push((*w, d.values));
    }
    let next = outer::outer_step(&current, &inputs, &p, end)?;
    checkpoint::write_atomic(out.global, &next.global.to_bytes())?;
    if let Some(update) = out.update {
        checkpoint::write_atomic(update, &next.update)?;
    }
    Ok(next.global)
}

/// Where the outer step writes: the next global checkpoint and,
/// optionally, the update workers download.
#[derive(Debug, Clone, Copy)]
pub struct OuterOut<'a> {
    pub global: &'a Path,
    pub update: Option<&'a Path>,
}

fn read(path: &Path) -> Result<Vec<u8>, TrainError> {
    std::fs::read(path).map_err(|error| TrainError::Io {
        what: "cannot read",
        path: path.to_owned(),
        error,
    })
}

/// One round of a parallel job trained here.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RoundReport {
    pub round: u64,
    /// The last training loss of each worker, in worker order.
    pub worker_losses: Vec<f32>,
    /// The new global checkpoint's loss on the held-out data.
    pub eval_loss: Option<f32>,
}

/// Trains a whole parallel job here, worker after worker, round after
/// round, every worker present: what a pool's run with every worker in
/// every round gives, byte for byte. Keeps the files in `dir`:
/// `global.safetensors` (the current global checkpoint; at the end, the
/// trained one) and `worker-W.safetensors` (each slot's last checkpoint).
/// Calls `on_step(worker, step)` after every inner step and `on_round`
/// after every outer step.
pub fn train_parallel(
    spec: &JobSpec,
    data: &Dataset,
    dir: &Path,
    device: &Device,
    on_step: &mut dyn FnMut(u32, StepReport),
    on_round: &mut dyn FnMut(&RoundReport),
) -> Result<PathBuf, TrainError> {
    train_parallel_resetting(spec, data, dir, device, &|_, _| false, on_step, on_round)
}

/// [`train_parallel`], where worker `w`'s segment of round `r` starts
/// from fresh AdamW moments when `reset(r, w)`: what a pool's run gives
/// when it reset those slots, their checkpoints lost with their
/// providers (a `slot_reset` event).
#[allow(clippy::too_many_arguments)]
pub fn train_parallel_resetting(
    spec: &JobSpec,
    data: &Dataset,
    dir: &Path,
    device: &Device,
    reset: &dyn Fn(u64, u32) -> bool,
    on_step: &mut dyn FnMut(u32, StepReport),
    on_round: &mut dyn FnMut(&RoundReport),
) -> Result<PathBuf, TrainError> {
    let p = parallel_of(spec)?;
    let global = dir.join("global.safetensors");
    checkpoint::write_atomic(&global, &initial_global(spec, data)?)?;
    let slot = |w: u32| dir.join(format!("worker-{w}.safetensors"));
    for round in 0..p.rounds(spec.train.steps) {
        let mut worker_losses = Vec::with_capacity(p.workers as usize);
        let mut inputs = Vec::with_capacity(p.workers as usize);
        for w in 0..p.workers {
            let previous = (round > 0 && !reset(round, w)).then(|| slot(w));
            let next = dir.join(format!("worker-{w}.next.safetensors"));
            let sent = dir.join(format!("worker-{w}.pseudo-gradient.safetensors"));
            let task = WorkerTask {
                global: Some(&global),
                slot: previous.as_deref(),
                worker: w,
                steps: None,
            };
            let out = WorkerOut {
                checkpoint: &next,
                pseudo_gradient: &sent,
            };
            let outcome =
                run_worker_segment(spec, data, &task, device, out, &mut |r| on_step(w, r))?;
            worker_losses.push(outcome.losses.last().copied().unwrap_or(f32::NAN));
            inputs.push((w, sent));
        }
        let next_global = dir.join("global.next.safetensors");
        let out = OuterOut {
            global: &next_global,
            update: None,
        };
        outer_step(spec, data, Some(&global), &inputs, out)?;
        rename(&next_global, &global)?;
        for w in 0..p.workers {
            rename(&dir.join(format!("worker-{w}.next.safetensors")), &slot(w))?;
        }
        let eval_loss = crate::segment::evaluate(spec, data, &global, device)?.map(|e| e.loss);
        on_round(&RoundReport {
            round,
            worker_losses,
            eval_loss,
        });
    }
    Ok(global)
}

fn rename(from: &Path, to: &Path) -> Result<(), TrainError> {
    std::fs::rename(from, to).map_err(|error| TrainError::Io {
        what: "cannot rename into",
        path: to.to_owned(),
        error,
    })
}

/// The parameters of a checkpoint or a global checkpoint of `spec`, with
/// its model and step: what export and evaluation read.
pub(crate) fn load_params(
    spec: &JobSpec,
    data: Option<&Dataset>,
    path: &Path,
) -> Result<(ModelMeta, u64, Vec<Vec<f32>>), TrainError> {
    params_of(spec, data, checkpoint::read(path)?, path)
}

/// [`load_params`] of a file already parsed (from `path`, which errors
/// name).
pub(crate) fn params_of(
    spec: &JobSpec,
    data: Option<&Dataset>,
    parsed: checkpoint::Parsed,
    path: &Path,
) -> Result<(ModelMeta, u64, Vec<Vec<f32>>), TrainError> {
    if parsed.metadata.get("format").map(String::as_str) == Some(GLOBAL_FORMAT) {
        let g = global_of(spec, data, parsed, path)?;
        Ok((g.meta, g.step, g.params))
    } else {
        let (meta, state) = checkpoint::state_of(spec, data, parsed, path, None)?;
        Ok((meta, state.step, state.params))
    }
}

/// Named host tensors of a model's parameters (for files written here).
pub(crate) fn host_tensors(
    meta: &ModelMeta,
    values: Vec<Vec<f32>>,
) -> std::collections::BTreeMap<String, HostTensor> {
    meta.params()
        .into_iter()
        .zip(values)
        .map(|(p, data)| {
            (
                p.name,
                HostTensor {
                    shape: p.shape,
                    data,
                },
            )
        })
        .collect()
}
