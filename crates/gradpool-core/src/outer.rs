//! The outer step of a parallel job (DiLoCo), as arithmetic over
//! safetensors files: no training, no candle, so the pool, a validator and
//! `gradpool job verify` all compute it, and get the same bytes.
//!
//! A **global checkpoint** ([`Global`], format [`GLOBAL_FORMAT`]) holds,
//! for every parameter `NAME`, the f32 tensors `param.NAME` and
//! `outer_m.NAME` (the outer Nesterov momentum), and string metadata: the
//! round it starts (`round`), its step (`step`), the workers whose
//! segments made it (`workers`, a JSON list, empty for round 0), and what
//! the trainer records about the model and data, carried over unchanged.
//! It is written by [`crate::checkpoint::to_bytes`], so equal state gives
//! equal bytes.
//!
//! The step ([`outer_step`]), every tensor element by element in f32,
//! each operation one IEEE-754 operation in this order:
//!
//! 1. each worker `w`'s pseudo-gradient `Δ_w = θ − θ_w` (global minus
//!    worker weights), through the int8 codebook when the job compresses
//!    ([`pseudo_gradient`]): what the worker sends;
//! 2. their mean: summed in worker order, from 0, then divided by the
//!    number of workers;
//! 3. Nesterov momentum `m ← μ·m + Δ`, the update `u = lr·(Δ + μ·m)`,
//!    through the codebook when the job compresses: what a worker
//!    receives;
//! 4. `θ ← θ − u`.
//!
//! `lr` and `μ` are the spec's `outer_lr` and `outer_momentum` rounded to
//! f32. The model kind does not matter: every `param.*` tensor is treated
//! alike.

use crate::checkpoint::TensorRef;
use crate::delta::{Delta, DeltaError, DeltaKind};
use crate::spec::ParallelConfig;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;

/// Format tag of global checkpoints.
pub const GLOBAL_FORMAT: &str = "gradpool-global-v1";
/// Format tag of a round's weights without the outer momentum: what a
/// worker rebuilds from the weights it holds and an outer update
/// ([`Weights`]).
pub const WEIGHTS_FORMAT: &str = "gradpool-weights-v1";

pub use crate::checkpoint::Tensors;

/// Why an outer step cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OuterError {
    #[error("{what}: not a checkpoint: {reason}")]
    Malformed { what: String, reason: String },
    #[error("worker {worker}'s checkpoint does not match the global one: {reason}")]
    Mismatch { worker: u32, reason: String },
    #[error("{present} workers entered the outer step; the job needs at least {min}")]
    TooFewWorkers { present: usize, min: u32 },
    #[error("workers must enter in increasing order, each once, below {workers}: got {got:?}")]
    WorkerOrder { got: Vec<u32>, workers: u32 },
    #[error("the outer step gives a value that is not finite in {tensor}")]
    NotFinite { tensor: String },
    #[error(transparent)]
    Delta(#[from] DeltaError),
}

fn malformed(what: &str, reason: impl Into<String>) -> OuterError {
    OuterError::Malformed {
        what: what.to_owned(),
        reason: reason.into(),
    }
}

/// A global checkpoint: the weights every worker of a round starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    /// The round that starts from it.
    pub round: u64,
    /// Its step: `round × inner_steps`, at most the job's steps.
    pub step: u64,
    /// The workers whose segments made it, in order (none for round 0).
    pub workers: Vec<u32>,
    /// `NAME` → the parameter.
    pub params: Tensors,
    /// `NAME` → its outer momentum.
    pub momentum: Tensors,
    /// The trainer's metadata about model and data, carried over.
    pub metadata: BTreeMap<String, String>,
}

impl Global {
    /// Round 0's global checkpoint: the initial weights, no momentum yet.
    /// `metadata` is what every later one carries over (model, data, spec
    /// fingerprint); keys the format sets itself are replaced.
    pub fn initial(params: Tensors, metadata: BTreeMap<String, String>) -> Global {
        let momentum = params
            .iter()
            .map(|(k, (shape, v))| (k.clone(), (shape.clone(), vec![0.0; v.len()])))
            .collect();
        Global {
            round: 0,
            step: 0,
            workers: Vec::new(),
            params,
            momentum,
            metadata: carried(metadata),
        }
    }

    /// Round 0's global checkpoint as a party that never trains computes
    /// it (the pool): the model's seeded initial weights
    /// ([`crate::model::Param::initial_values`]), with the trainer's
    /// metadata (model, data, spec fingerprint) as a worker's
    /// pseudo-gradient carries it, which is what the trainer's round-0
    /// global checkpoint carries too.
    pub fn initial_for(
        model: &crate::model::ModelMeta,
        seed: u64,
        metadata: &BTreeMap<String, String>,
    ) -> Global {
        let params = model
            .params()
            .into_iter()
            .map(|p| {
                let values = p.initial_values(seed);
                (p.name, (p.shape, values))
            })
            .collect();
        Global::initial(params, metadata.clone())
    }

    /// Its weights, without the outer momentum.
    pub fn weights(&self) -> Weights {
        Weights {
            round: self.round,
            step: self.step,
            params: self.params.clone(),
            metadata: self.metadata.clone(),
        }
    }

    /// The checkpoint file: deterministic bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut tensors = BTreeMap::new();
        for (prefix, set) in [("param.", &self.params), ("outer_m.", &self.momentum)] {
            for (name, (shape, data)) in set {
                tensors.insert(format!("{prefix}{name}"), TensorRef { shape, data });
            }
        }
        let mut metadata = self.metadata.clone();
        metadata.insert("format".into(), GLOBAL_FORMAT.into());
        metadata.insert("round".into(), self.round.to_string());
        metadata.insert("step".into(), self.step.to_string());
        metadata.insert(
            "workers".into(),
            serde_json::to_string(&self.workers).unwrap_or_else(|_| "[]".into()),
        );
        crate::checkpoint::to_bytes(&tensors, &metadata)
    }

    /// Reads a global checkpoint, refusing anything else: another format,
    /// a tensor that is not f32, a parameter without its momentum (or the
    /// reverse), a value that is not finite.
    pub fn from_bytes(bytes: &[u8]) -> Result<Global, OuterError> {
        let what = "the global checkpoint";
        let (tensors, metadata) = read(what, bytes)?;
        if metadata.get("format").map(String::as_str) != Some(GLOBAL_FORMAT) {
            return Err(malformed(what, format!("format is not {GLOBAL_FORMAT}")));
        }
        let number = |key: &str| -> Result<u64, OuterError> {
            metadata
                .get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| malformed(what, format!("no {key} in its metadata")))
        };
        let (round, step) = (number("round")?, number("step")?);
        let workers: Vec<u32> = metadata
            .get("workers")
            .and_then(|w| serde_json::from_str(w).ok())
            .ok_or_else(|| malformed(what, "no workers list in its metadata"))?;
        let (params, mut rest) = split(tensors, "param.");
        let (momentum, rest) = split(std::mem::take(&mut rest), "outer_m.");
        if let Some(name) = rest.keys().next() {
            return Err(malformed(what, format!("unexpected tensor {name}")));
        }
        for (name, (shape, _)) in &params {
            if momentum.get(name).map(|(s, _)| s) != Some(shape) {
                return Err(malformed(what, format!("no momentum for param.{name}")));
            }
        }
        if momentum.len() != params.len() {
            return Err(malformed(what, "momentum without its parameter"));
        }
        Ok(Global {
            round,
            step,
            workers,
            params,
            momentum,
            metadata: carried(metadata),
        })
    }
}

/// The metadata a global checkpoint carries over: all but what the format
/// sets itself.
fn carried(mut metadata: BTreeMap<String, String>) -> BTreeMap<String, String> {
    for key in ["format", "round", "step", "workers"] {
        metadata.remove(key);
    }
    metadata
}

/// The tensors (all f32, all finite) and metadata of a safetensors file.
fn read(what: &str, bytes: &[u8]) -> Result<(Tensors, BTreeMap<String, String>), OuterError> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| malformed(what, e.to_string()))?;
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| malformed(what, e.to_string()))?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut tensors = Tensors::new();
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(malformed(what, format!("{name} is not f32")));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if data.iter().any(|v| !v.is_finite()) {
            return Err(malformed(
                what,
                format!("{name} holds a value that is not finite"),
            ));
        }
        tensors.insert(name, (view.shape().to_vec(), data));
    }
    Ok((tensors, metadata))
}

/// Splits off the tensors named `PREFIX…`, keyed without the prefix.
fn split(tensors: Tensors, prefix: &str) -> (Tensors, Tensors) {
    let mut with = Tensors::new();
    let mut without = Tensors::new();
    for (name, t) in tensors {
        match name.strip_prefix(prefix) {
            Some(rest) => {
                with.insert(rest.to_owned(), t);
            }
            None => {
                without.insert(name, t);
            }
        }
    }
    (with, without)
}

/// A worker's pseudo-gradient as computed, before any compression:
/// `θ − θ_w`, global minus worker weights, tensor by tensor.
pub fn pseudo_gradient(
    worker: u32,
    global: &Tensors,
    params: &Tensors,
) -> Result<Tensors, OuterError> {
    same_shapes(worker, global, params)?;
    Ok(global
        .iter()
        .map(|(name, (shape, g))| {
            let w = &params[name].1;
            let delta = g.iter().zip(w).map(|(g, w)| g - w).collect();
            (name.clone(), (shape.clone(), delta))
        })
        .collect())
}

/// The parameters (`param.*`, without the prefix) of a safetensors file
/// (a worker's checkpoint), and its metadata.
pub fn params_of(
    what: &str,
    bytes: &[u8],
) -> Result<(Tensors, BTreeMap<String, String>), OuterError> {
    let (tensors, metadata) = read(what, bytes)?;
    Ok((split(tensors, "param.").0, metadata))
}

/// What an outer step gives: the next global checkpoint, and the update
/// file the workers rebuild its weights from ([`Weights::next`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Stepped {
    pub global: Global,
    /// The [`DeltaKind::Update`] file.
    pub update: Vec<u8>,
}

/// The outer step: global checkpoint `r` and the pseudo-gradients of the
/// workers that trained round `r` (as they arrived, see
/// [`crate::delta`]), in increasing worker order, give global checkpoint
/// `r + 1` at step `next_step`.
pub fn outer_step(
    global: &Global,
    workers: &[(u32, Tensors)],
    parallel: &ParallelConfig,
    next_step: u64,
) -> Result<Stepped, OuterError> {
    let order: Vec<u32> = workers.iter().map(|(w, _)| *w).collect();
    if order.windows(2).any(|p| p[0] >= p[1]) || order.iter().any(|w| *w >= parallel.workers) {
        return Err(OuterError::WorkerOrder {
            got: order,
            workers: parallel.workers,
        });
    }
    if workers.len() < parallel.min_workers as usize || workers.is_empty() {
        return Err(OuterError::TooFewWorkers {
            present: workers.len(),
            min: parallel.min_workers,
        });
    }
    for (w, deltas) in workers {
        same_shapes(*w, &global.params, deltas)?;
    }
    let lr = parallel.outer_lr as f32;
    let mu = parallel.outer_momentum as f32;
    let n = workers.len() as f32;
    let mut next = global.clone();
    let mut updates = Tensors::new();
    for (name, (shape, theta)) in &global.params {
        let mut sum = vec![0f32; theta.len()];
        for (_, deltas) in workers {
            for (s, d) in sum.iter_mut().zip(&deltas[name].1) {
                *s += d;
            }
        }
        let Some((_, m)) = global
            .momentum
            .get(name)
            .filter(|(_, m)| m.len() == theta.len())
        else {
            return Err(malformed(
                "the global checkpoint",
                format!("no momentum for param.{name}"),
            ));
        };
        let mut new_m = Vec::with_capacity(theta.len());
        let mut update = Vec::with_capacity(theta.len());
        for (s, m) in sum.iter().zip(m) {
            let mean = s / n;
            let m = mu * m + mean;
            new_m.push(m);
            update.push(lr * (mean + mu * m));
        }
        if new_m.iter().chain(&update).any(|v| !v.is_finite()) {
            return Err(OuterError::NotFinite {
                tensor: name.clone(),
            });
        }
        if let Some(slot) = next.momentum.get_mut(name) {
            slot.1 = new_m;
        }
        updates.insert(name.clone(), (shape.clone(), update));
    }
    let (update, arrived) = crate::delta::encode(
        DeltaKind::Update,
        parallel.compression,
        (global.round, next_step),
        &updates,
        &global.metadata,
    )?;
    let weights = global.weights().next(&arrived)?;
    next.params = weights.params;
    next.round = weights.round;
    next.step = weights.step;
    next.workers = order;
    Ok(Stepped {
        global: next,
        update,
    })
}

/// The outer step on the files that travel: `global` and the workers'
/// pseudo-gradient files (any order), each checked to be of the round,
/// its end step and the job's compression, for a job of `steps` steps.
pub fn step_files(
    global: &Global,
    workers: &[(u32, Vec<u8>)],
    parallel: &ParallelConfig,
    steps: u64,
) -> Result<Stepped, OuterError> {
    let (_, end) = parallel.round_steps(global.round, steps);
    let mut inputs = Vec::with_capacity(workers.len());
    for (w, bytes) in workers {
        let d = crate::delta::decode(bytes, DeltaKind::PseudoGradient)?;
        if (d.round, d.step, d.compression) != (global.round, end, parallel.compression) {
            return Err(OuterError::Mismatch {
                worker: *w,
                reason: format!(
                    "it is the pseudo-gradient of round {} at step {} ({}), the outer step \
                     takes round {}'s at step {end} ({})",
                    d.round,
                    d.step,
                    d.compression.as_str(),
                    global.round,
                    parallel.compression.as_str()
                ),
            });
        }
        inputs.push((*w, d.values));
    }
    inputs.sort_by_key(|(w, _)| *w);
    outer_step(global, &inputs, parallel, end)
}

/// A round's weights as a worker holds them: a global checkpoint's, or
/// rebuilt from the round before's and its outer update. Written with
/// format [`WEIGHTS_FORMAT`]: the `param.*` tensors and the metadata of a
/// global checkpoint but `workers`.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub round: u64,
    pub step: u64,
    pub params: Tensors,
    pub metadata: BTreeMap<String, String>,
}

impl Weights {
    /// The next round's weights: `θ − u` for the update `u` of this
    /// round's outer step, element by element in f32, exactly as the outer
    /// step computes the global checkpoint's.
    pub fn next(&self, update: &Delta) -> Result<Weights, OuterError> {
        let what = "the outer update";
        if update.kind != DeltaKind::Update || update.round != self.round {
            return Err(malformed(
                what,
                format!(
                    "it is round {}'s, the weights are round {}'s",
                    update.round, self.round
                ),
            ));
        }
        same_shapes(0, &self.params, &update.values).map_err(|e| malformed(what, e.to_string()))?;
        let mut params = Tensors::new();
        for (name, (shape, theta)) in &self.params {
            let u = &update.values[name].1;
            let next: Vec<f32> = theta.iter().zip(u).map(|(t, u)| t - u).collect();
            if next.iter().any(|v| !v.is_finite()) {
                return Err(OuterError::NotFinite {
                    tensor: name.clone(),
                });
            }
            params.insert(name.clone(), (shape.clone(), next));
        }
        Ok(Weights {
            round: self.round + 1,
            step: update.step,
            params,
            metadata: self.metadata.clone(),
        })
    }

    /// The weights file: deterministic bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let tensors = self
            .params
            .iter()
            .map(|(name, (shape, data))| (format!("param.{name}"), TensorRef { shape, data }))
            .collect();
        let mut metadata = self.metadata.clone();
        metadata.insert("format".into(), WEIGHTS_FORMAT.into());
        metadata.insert("round".into(), self.round.to_string());
        metadata.insert("step".into(), self.step.to_string());
        crate::checkpoint::to_bytes(&tensors, &metadata)
    }

    /// Reads the weights of a weights file or of a global checkpoint.
    pub fn from_bytes(bytes: &[u8]) -> Result<Weights, OuterError> {
        let what = "the round's weights";
        let (tensors, metadata) = read(what, bytes)?;
        match metadata.get("format").map(String::as_str) {
            Some(GLOBAL_FORMAT) => return Ok(Global::from_bytes(bytes)?.weights()),
            Some(WEIGHTS_FORMAT) => {}
            _ => return Err(malformed(what, format!("format is not {WEIGHTS_FORMAT}"))),
        }
        let number = |key: &str| -> Result<u64, OuterError> {
            metadata
                .get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| malformed(what, format!("no {key} in its metadata")))
        };
        let (round, step) = (number("round")?, number("step")?);
        let (params, rest) = split(tensors, "param.");
        if let Some(name) = rest.keys().next() {
            return Err(malformed(what, format!("unexpected tensor {name}")));
        }
        Ok(Weights {
            round,
            step,
            params,
            metadata: carried(metadata),
        })
    }
}

/// Refuses a worker whose parameters are not exactly the global ones'
/// names and shapes.
fn same_shapes(worker: u32, global: &Tensors, params: &Tensors) -> Result<(), OuterError> {
    let mismatch = |reason: String| OuterError::Mismatch { worker, reason };
    for (name, (shape, _)) in global {
        match params.get(name) {
            None => return Err(mismatch(format!("no param.{name}"))),
            Some((s, _)) if s != shape => {
                return Err(mismatch(format!(
                    "param.{name} has shape {s:?}, the global one {shape:?}"
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = params.keys().find(|k| !global.contains_key(*k)) {
        return Err(mismatch(format!(
            "param.{extra} is not in the global checkpoint"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Compression;

    fn config(workers: u32, compression: Compression) -> ParallelConfig {
        ParallelConfig {
            workers,
            inner_steps: 10,
            outer_lr: 0.7,
            outer_momentum: 0.9,
            compression,
            min_workers: 1,
        }
    }

    fn tensors(values: &[(&str, Vec<f32>)]) -> Tensors {
        values
            .iter()
            .map(|(k, v)| (k.to_string(), (vec![v.len()], v.clone())))
            .collect()
    }

    /// Worker `w`'s pseudo-gradient as the outer step gets it.
    fn sent(g: &Global, w: u32, params: &Tensors, compression: Compression) -> (u32, Tensors) {
        let raw = pseudo_gradient(w, &g.params, params).unwrap();
        let (_, delta) = crate::delta::encode(
            DeltaKind::PseudoGradient,
            compression,
            (g.round, 0),
            &raw,
            &BTreeMap::new(),
        )
        .unwrap();
        (w, delta.values)
    }

    fn initial() -> Global {
        let mut meta = BTreeMap::new();
        meta.insert("model".into(), "{\"kind\":\"test\"}".into());
        meta.insert("format".into(), "ignored".into());
        Global::initial(
            tensors(&[("a", vec![1.0, -2.0, 0.5]), ("b", vec![0.25])]),
            meta,
        )
    }

    #[test]
    fn the_step_is_nesterov_on_the_mean_pseudo_gradient() {
        let g = initial();
        let w0 = tensors(&[("a", vec![0.9, -2.0, 0.7]), ("b", vec![0.25])]);
        let w1 = tensors(&[("a", vec![0.7, -1.8, 0.5]), ("b", vec![0.05])]);
        let p = config(2, Compression::None);
        let none = Compression::None;
        let deltas = [sent(&g, 0, &w0, none), sent(&g, 1, &w1, none)];
        let next = outer_step(&g, &deltas, &p, 10).unwrap().global;
        assert_eq!(
            (next.round, next.step, next.workers.clone()),
            (1, 10, vec![0, 1])
        );
        let (lr, mu) = (0.7f32, 0.9f32);
        for name in ["a", "b"] {
            for (i, theta) in g.params[name].1.iter().enumerate() {
                let d0 = theta - w0[name].1[i];
                let d1 = theta - w1[name].1[i];
                let mean = (0.0 + d0 + d1) / 2.0;
                let m = mu * 0.0 + mean;
                let want = theta - lr * (mean + mu * m);
                assert_eq!(
                    next.params[name].1[i].to_bits(),
                    want.to_bits(),
                    "{name}[{i}]"
                );
                assert_eq!(next.momentum[name].1[i].to_bits(), m.to_bits());
            }
        }
        // A second round uses the momentum the first one kept.
        let again = outer_step(&next, &[sent(&next, 0, &w0, none)], &p, 20)
            .unwrap()
            .global;
        let theta = next.params["b"].1[0];
        let mean = 0.0 + (theta - w0["b"].1[0]);
        let m = mu * next.momentum["b"].1[0] + mean;
        assert_eq!(again.params["b"].1[0], theta - lr * (mean + mu * m));
        assert_eq!(again.workers, vec![0]);
    }

    #[test]
    fn the_bytes_round_trip_and_are_the_same_whoever_computes_them() {
        let g = initial();
        let w = tensors(&[("a", vec![0.5, -1.0, 0.0]), ("b", vec![1.0])]);
        let p = config(3, Compression::Int8);
        let a = outer_step(&g, &[sent(&g, 2, &w, Compression::Int8)], &p, 7).unwrap();
        let back = Global::from_bytes(&g.to_bytes()).unwrap();
        let b = outer_step(&back, &[sent(&back, 2, &w, Compression::Int8)], &p, 7).unwrap();
        assert_eq!(a, b);
        // A worker that holds round 0's weights rebuilds round 1's from the
        // update, bit for bit.
        let update = crate::delta::decode(&a.update, DeltaKind::Update).unwrap();
        let rebuilt = Weights::from_bytes(&g.weights().to_bytes()).unwrap();
        let rebuilt = rebuilt.next(&update).unwrap();
        assert_eq!(rebuilt, a.global.weights());
        assert_eq!(Weights::from_bytes(&rebuilt.to_bytes()).unwrap(), rebuilt);
        assert!(
            rebuilt.next(&update).is_err(),
            "an update applies to its own round only"
        );
        let a = a.global.to_bytes();
        let back = Global::from_bytes(&a).unwrap();
        assert_eq!(back.to_bytes(), a);
        assert_eq!(back.metadata.get("model").unwrap(), "{\"kind\":\"test\"}");
        assert_eq!(back.workers, vec![2]);
    }

    #[test]
    fn compression_sends_and_applies_codebook_values() {
        let g = initial();
        let w = tensors(&[("a", vec![0.123, -2.5, 0.51]), ("b", vec![0.2])]);
        let p = config(1, Compression::Int8);
        let next = outer_step(&g, &[sent(&g, 0, &w, Compression::Int8)], &p, 10)
            .unwrap()
            .global;
        // What a worker receives, θ − θ', is a codebook value of the update.
        let theta = &g.params["a"].1;
        let received: Vec<f32> = theta
            .iter()
            .zip(&next.params["a"].1)
            .map(|(t, n)| t - n)
            .collect();
        let exact = outer_step(
            &g,
            &[sent(&g, 0, &w, Compression::None)],
            &config(1, Compression::None),
            10,
        )
        .unwrap()
        .global;
        let scale = theta
            .iter()
            .zip(&exact.params["a"].1)
            .map(|(t, n)| (t - n).abs())
            .fold(0f32, f32::max);
        for (r, (t, e)) in received.iter().zip(theta.iter().zip(&exact.params["a"].1)) {
            assert!((r - (t - e)).abs() <= 2.0 * crate::int8::error_bound(scale) + 1e-6);
        }
    }

    #[test]
    fn bad_inputs_are_refused() {
        let g = initial();
        let w = tensors(&[("a", vec![0.0, 0.0, 0.0]), ("b", vec![0.0])]);
        let mut p = config(3, Compression::None);
        let order = outer_step(&g, &[(1, w.clone()), (0, w.clone())], &p, 1).unwrap_err();
        assert!(matches!(order, OuterError::WorkerOrder { .. }), "{order}");
        let twice = outer_step(&g, &[(1, w.clone()), (1, w.clone())], &p, 1).unwrap_err();
        assert!(matches!(twice, OuterError::WorkerOrder { .. }), "{twice}");
        let beyond = outer_step(&g, &[(3, w.clone())], &p, 1).unwrap_err();
        assert!(matches!(beyond, OuterError::WorkerOrder { .. }), "{beyond}");
        p.min_workers = 2;
        let few = outer_step(&g, &[(0, w.clone())], &p, 1).unwrap_err();
        assert_eq!(few, OuterError::TooFewWorkers { present: 1, min: 2 });
        p.min_workers = 1;
        let short = tensors(&[("a", vec![0.0, 0.0]), ("b", vec![0.0])]);
        assert!(matches!(
            outer_step(&g, &[(0, short.clone())], &p, 1).unwrap_err(),
            OuterError::Mismatch { worker: 0, .. }
        ));
        assert!(pseudo_gradient(4, &g.params, &short).is_err());
        let extra = tensors(&[("a", vec![0.0; 3]), ("b", vec![0.0]), ("c", vec![1.0])]);
        assert!(outer_step(&g, &[(0, extra)], &p, 1).is_err());
        let huge = tensors(&[("a", vec![3e38, 0.0, 0.0]), ("b", vec![0.0])]);
        p.outer_lr = 10.0;
        assert!(matches!(
            outer_step(&g, &[(0, huge)], &p, 1).unwrap_err(),
            OuterError::NotFinite { .. }
        ));
        // Not a global checkpoint.
        assert!(Global::from_bytes(b"nonsense").is_err());
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), "gradpool-checkpoint-v1".to_string());
        let other = crate::checkpoint::to_bytes(&BTreeMap::new(), &meta);
        assert!(Global::from_bytes(&other).is_err());
    }
}
