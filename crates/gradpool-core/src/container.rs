//! A container job's checkpoint: the segment contract's one output, checked
//! and rewritten in the one encoding that is hashed.
//!
//! A container segment's script writes a safetensors file
//! (`/out/checkpoint.safetensors`, see the `gradpool.segment` Python
//! package) whose tensors are named `model.*` (the weights), `optim.*`
//! (the optimizer's state) and `extra.*` (anything else resuming needs),
//! with the metadata `format` ([`CONTAINER_FORMAT`]) and `step`. Nobody but
//! the script knows the model, so [`canonical`] checks what can be checked
//! without it:
//!
//! - a well-formed safetensors file (the `safetensors` crate's parser:
//!   header size, every offset inside the file);
//! - the format and the step the segment ends at;
//! - tensor names of those three kinds, 1 to [`MAX_TENSORS`] of them, at
//!   least one `model.*`, dtypes of [`DTYPES`];
//! - every floating-point value finite;
//! - with a start checkpoint, exactly its names, dtypes and shapes (a
//!   segment continues the same model).
//!
//! It then writes the tensors back with sorted header keys and tensors in
//! name order ([`crate::checkpoint::to_bytes_typed`]), keeping only the
//! metadata `format`, `step` and `scalars`, so the bytes that are hashed
//! depend on the tensors alone, never on how the script's writer laid the
//! file out.

use crate::checkpoint::{to_bytes_typed, CheckpointDefect, Tensors, Values};
use crate::outer::Global;
use crate::spec::ParallelConfig;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;

/// Format tag of a container job's checkpoints.
pub const CONTAINER_FORMAT: &str = "gradpool-container-v1";

/// The most tensors a container checkpoint may hold.
pub const MAX_TENSORS: usize = 100_000;

/// The longest tensor name.
const MAX_NAME: usize = 512;

/// The longest `scalars` metadata value (the optimizer's plain numbers).
const MAX_SCALARS: usize = 1 << 20;

/// The dtypes a container checkpoint may hold, by their safetensors names.
pub const DTYPES: [&str; 10] = [
    "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL",
];

/// A checkpoint's tensors: name, dtype and shape, in name order. Two
/// segments of one job have the same layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout(pub Vec<(String, &'static str, Vec<usize>)>);

impl Layout {
    /// The layout of a canonical checkpoint (one [`canonical`] accepted).
    pub fn of(bytes: &[u8]) -> Result<Layout, CheckpointDefect> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| defect(format!("not a safetensors file: {e}")))?;
        let mut entries = Vec::new();
        for (name, view) in st.tensors() {
            entries.push((name, dtype_name(view.dtype())?, view.shape().to_vec()));
        }
        entries.sort();
        Ok(Layout(entries))
    }

    /// The first difference from the start's layout, in words. A start
    /// of weights alone (a parallel job's initial checkpoint, before any
    /// optimizer step) is continued by any checkpoint with its `model.*`
    /// tensors.
    fn difference(&self, start: &Layout) -> Option<String> {
        let fresh = start.0.iter().all(|(n, _, _)| n.starts_with("model."));
        let mine: BTreeMap<&str, _> = self
            .0
            .iter()
            .filter(|(n, _, _)| !fresh || n.starts_with("model."))
            .map(|(n, d, s)| (n.as_str(), (d, s)))
            .collect();
        let theirs: BTreeMap<&str, _> = start
            .0
            .iter()
            .map(|(n, d, s)| (n.as_str(), (d, s)))
            .collect();
        if let Some(name) = theirs.keys().find(|n| !mine.contains_key(*n)) {
            return Some(format!("tensor {name} of the start checkpoint is missing"));
        }
        if let Some(name) = mine.keys().find(|n| !theirs.contains_key(*n)) {
            return Some(format!("tensor {name} is not in the start checkpoint"));
        }
        mine.iter().find_map(|(name, (dtype, shape))| {
            let (d0, s0) = theirs[name];
            (dtype != &d0 || shape != &s0).then(|| {
                format!("tensor {name} is {dtype} {shape:?}, the start checkpoint's is {d0} {s0:?}")
            })
        })
    }
}

fn defect(reason: impl Into<String>) -> CheckpointDefect {
    CheckpointDefect(reason.into())
}

fn dtype_name(dtype: Dtype) -> Result<&'static str, CheckpointDefect> {
    Ok(match dtype {
        Dtype::F64 => "F64",
        Dtype::F32 => "F32",
        Dtype::F16 => "F16",
        Dtype::BF16 => "BF16",
        Dtype::I64 => "I64",
        Dtype::I32 => "I32",
        Dtype::I16 => "I16",
        Dtype::I8 => "I8",
        Dtype::U8 => "U8",
        Dtype::BOOL => "BOOL",
        other => return Err(defect(format!("dtype {other:?} is not one of {DTYPES:?}"))),
    })
}

/// Whether every value of a floating-point tensor is finite (all values of
/// an integer tensor are).
fn all_finite(dtype: &str, bytes: &[u8]) -> bool {
    match dtype {
        "F64" => bytes
            .chunks_exact(8)
            .all(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])).is_finite()),
        "F32" => bytes
            .chunks_exact(4)
            .all(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4])).is_finite()),
        // IEEE half: exponent bits 10..15 all ones is infinite or NaN.
        "F16" => bytes
            .chunks_exact(2)
            .all(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 != 0x7c00),
        // bfloat16: exponent bits 7..15.
        "BF16" => bytes
            .chunks_exact(2)
            .all(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 != 0x7f80),
        _ => true,
    }
}

/// Checks a container segment's checkpoint (see the module docs) at
/// `step`, against the layout of its start checkpoint when it has one, and
/// returns its canonical bytes and layout.
pub fn canonical(
    bytes: &[u8],
    step: u64,
    start: Option<&Layout>,
) -> Result<(Vec<u8>, Layout), CheckpointDefect> {
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| defect(format!("not a safetensors file: {e}")))?;
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| defect(format!("not a safetensors file: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let format = meta.get("format").map(String::as_str);
    if format != Some(CONTAINER_FORMAT) {
        return Err(defect(format!(
            "its metadata format is {format:?}, expected {CONTAINER_FORMAT:?} (save it with gradpool.segment)"
        )));
    }
    let got_step = meta.get("step").map(String::as_str);
    if got_step != Some(step.to_string().as_str()) {
        return Err(defect(format!(
            "it is at step {got_step:?}, expected {step}"
        )));
    }
    let views = st.tensors();
    if views.is_empty() || views.len() > MAX_TENSORS {
        return Err(defect(format!(
            "it holds {} tensors, expected 1 to {MAX_TENSORS}",
            views.len()
        )));
    }
    let mut tensors: BTreeMap<String, (Vec<usize>, &'static str, &[u8])> = BTreeMap::new();
    for (name, view) in &views {
        let kind = name.split('.').next().unwrap_or_default();
        if !matches!(kind, "model" | "optim" | "extra")
            || name.len() > MAX_NAME
            || !name.contains('.')
        {
            return Err(defect(format!(
                "tensor {name:?}: names are model.*, optim.* or extra.*, at most {MAX_NAME} bytes"
            )));
        }
        let dtype = dtype_name(view.dtype())?;
        if !all_finite(dtype, view.data()) {
            return Err(defect(format!(
                "tensor {name} holds a value that is not finite"
            )));
        }
        tensors.insert(name.clone(), (view.shape().to_vec(), dtype, view.data()));
    }
    if !tensors.keys().any(|n| n.starts_with("model.")) {
        return Err(defect(
            "it holds no model.* tensor: save the model's state_dict",
        ));
    }
    let layout = Layout(
        tensors
            .iter()
            .map(|(n, (shape, dtype, _))| (n.clone(), *dtype, shape.clone()))
            .collect(),
    );
    if let Some(why) = start.and_then(|s| layout.difference(s)) {
        return Err(defect(format!(
            "it does not continue the start checkpoint: {why}"
        )));
    }
    let mut metadata = BTreeMap::from([
        ("format".to_owned(), CONTAINER_FORMAT.to_owned()),
        ("step".to_owned(), step.to_string()),
    ]);
    if let Some(scalars) = meta.get("scalars") {
        if scalars.len() > MAX_SCALARS
            || serde_json::from_str::<BTreeMap<String, String>>(scalars).is_err()
        {
            return Err(defect("its scalars metadata is not a JSON map of strings"));
        }
        metadata.insert("scalars".to_owned(), scalars.clone());
    }
    let typed = tensors
        .iter()
        .map(|(n, (shape, dtype, data))| (n.clone(), (shape.as_slice(), Values::Raw(dtype, data))))
        .collect();
    Ok((to_bytes_typed(&typed, &metadata), layout))
}

/// The format tag of a container job's model file.
pub const MODEL_FORMAT: &str = "gradpool-container-model-v1";

/// A container job's model file from one of its checkpoints: the
/// `model.*` tensors under their `state_dict` names (the prefix removed),
/// ready for `model.load_state_dict(safetensors.torch.load_file(…))`.
pub fn model_weights(checkpoint: &[u8]) -> Result<Vec<u8>, CheckpointDefect> {
    let st = SafeTensors::deserialize(checkpoint)
        .map_err(|e| defect(format!("not a safetensors file: {e}")))?;
    let mut tensors: BTreeMap<String, (Vec<usize>, &'static str, &[u8])> = BTreeMap::new();
    for (name, view) in st.tensors() {
        if let Some(short) = name.strip_prefix("model.") {
            tensors.insert(
                short.to_owned(),
                (
                    view.shape().to_vec(),
                    dtype_name(view.dtype())?,
                    view.data(),
                ),
            );
        }
    }
    if tensors.is_empty() {
        return Err(defect("it holds no model.* tensor"));
    }
    let typed = tensors
        .iter()
        .map(|(n, (shape, dtype, data))| (n.clone(), (shape.as_slice(), Values::Raw(dtype, data))))
        .collect();
    let metadata = BTreeMap::from([("format".to_owned(), MODEL_FORMAT.to_owned())]);
    Ok(to_bytes_typed(&typed, &metadata))
}

/// The weights a parallel container job averages (DiLoCo), from one of
/// its checkpoints: the F32 `model.*` tensors, by `state_dict` name (the
/// prefix removed). Integer and boolean `model.*` tensors (buffers, such
/// as batch-norm counters) are each worker's own state, like the
/// optimizer's; a floating-point tensor of another dtype is refused: the
/// outer step averages in f32.
pub fn parallel_weights(checkpoint: &[u8]) -> Result<Tensors, CheckpointDefect> {
    let st = SafeTensors::deserialize(checkpoint)
        .map_err(|e| defect(format!("not a safetensors file: {e}")))?;
    let mut weights = Tensors::new();
    for (name, view) in st.tensors() {
        let Some(short) = name.strip_prefix("model.") else {
            continue;
        };
        match view.dtype() {
            Dtype::F32 => {
                let values = view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                weights.insert(short.to_owned(), (view.shape().to_vec(), values));
            }
            Dtype::F64 | Dtype::F16 | Dtype::BF16 => {
                return Err(defect(format!(
                    "tensor {name} is {}: a parallel job averages its model's weights in F32 \
                     (train in F32, or cast with model.float() before saving)",
                    dtype_name(view.dtype())?
                )))
            }
            _ => {}
        }
    }
    if weights.is_empty() {
        return Err(defect(
            "it holds no F32 model.* tensor: nothing for the outer step to average",
        ));
    }
    Ok(weights)
}

/// What every global checkpoint of a parallel container job carries.
fn global_metadata() -> BTreeMap<String, String> {
    BTreeMap::from([("runtime".to_owned(), "container".to_owned())])
}

/// Round 0's global checkpoint of a parallel container job: the weights
/// of its initial checkpoint ([`parallel_weights`]), no outer momentum.
/// The pool, the providers and `job verify` all compute it so.
pub fn initial_global(initial: &[u8]) -> Result<Global, CheckpointDefect> {
    Ok(Global::initial(
        parallel_weights(initial)?,
        global_metadata(),
    ))
}

/// A parallel container job's model file from a global checkpoint: its
/// weights under their `state_dict` names, as [`model_weights`] writes a
/// checkpoint's. Integer buffers are each worker's own and not in it: load
/// it with `strict=False` when the model has them.
pub fn global_model(global: &Global) -> Vec<u8> {
    let typed = global
        .params
        .iter()
        .map(|(n, (shape, v))| (n.clone(), (shape.as_slice(), Values::F32(v))))
        .collect();
    let metadata = BTreeMap::from([("format".to_owned(), MODEL_FORMAT.to_owned())]);
    to_bytes_typed(&typed, &metadata)
}

/// A worker's start checkpoint in a parallel container job: `base` (the
/// worker slot's checkpoint of an earlier round, else the job's initial
/// checkpoint) with its weights replaced by the round's (`weights`, by
/// [`parallel_weights`]' names and shapes), at `step`, in canonical form.
/// The rest of `base` (optimizer state, buffers, extras) is the slot's own.
pub fn compose(weights: &Tensors, base: &[u8], step: u64) -> Result<Vec<u8>, CheckpointDefect> {
    let (_, header) = SafeTensors::read_metadata(base)
        .map_err(|e| defect(format!("not a safetensors file: {e}")))?;
    let st = SafeTensors::deserialize(base)
        .map_err(|e| defect(format!("not a safetensors file: {e}")))?;
    let mut owned: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (name, view) in st.tensors() {
        let Some(short) = name.strip_prefix("model.") else {
            continue;
        };
        if view.dtype() != Dtype::F32 {
            continue;
        }
        let (shape, values) = weights
            .get(short)
            .ok_or_else(|| defect(format!("tensor {name} is not among the round's weights")))?;
        if shape.as_slice() != view.shape() {
            return Err(defect(format!(
                "tensor {name} is {:?}, the round's weights {shape:?}",
                view.shape()
            )));
        }
        owned.insert(name, values.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    if owned.len() != weights.len() {
        return Err(defect(
            "the round's weights hold tensors the checkpoint does not",
        ));
    }
    let views = st.tensors();
    let mut typed = BTreeMap::new();
    for (name, view) in &views {
        let data = owned.get(name).map_or(view.data(), Vec::as_slice);
        typed.insert(
            name.clone(),
            (view.shape(), Values::Raw(dtype_name(view.dtype())?, data)),
        );
    }
    let mut metadata = BTreeMap::from([
        ("format".to_owned(), CONTAINER_FORMAT.to_owned()),
        ("step".to_owned(), step.to_string()),
    ]);
    if let Some(scalars) = header.metadata().as_ref().and_then(|m| m.get("scalars")) {
        metadata.insert("scalars".to_owned(), scalars.clone());
    }
    Ok(to_bytes_typed(&typed, &metadata))
}

/// A parallel container job's worker start, made from the files at hand:
/// what the agent runs a segment or replay from and `job verify` replays.
pub struct WorkerStart {
    /// The composed start checkpoint ([`compose`]).
    pub checkpoint: Vec<u8>,
    /// The layout the end checkpoint must continue: the slot's
    /// checkpoint's, or the initial checkpoint's weights alone.
    pub layout: Layout,
    /// The round's global weights, which the pseudo-gradient is taken
    /// against.
    pub weights: Tensors,
    /// Round 0's global checkpoint, when it was made here from the initial
    /// checkpoint (no `global` was given).
    pub initial_global: Option<Global>,
}

/// A worker's start at `step`: the round's global checkpoint `global`
/// (`None` in round 0: the weights of `initial`, the job's initial
/// checkpoint) over the slot's own checkpoint `slot` (none yet: `initial`).
pub fn worker_start(
    global: Option<&[u8]>,
    initial: &[u8],
    slot: Option<&[u8]>,
    step: u64,
) -> Result<WorkerStart, CheckpointDefect> {
    let (weights, initial_global) = match global {
        Some(bytes) => {
            let (params, _) = crate::outer::params_of("the round's weights", bytes)
                .map_err(|e| defect(e.to_string()))?;
            (params, None)
        }
        None => {
            let g = initial_global(initial)
                .map_err(|e| defect(format!("the initial checkpoint: {}", e.0)))?;
            (g.params.clone(), Some(g))
        }
    };
    let base = slot.unwrap_or(initial);
    let layout = Layout::of(base).map_err(|e| defect(format!("the slot's checkpoint: {}", e.0)))?;
    let checkpoint = compose(&weights, base, step)?;
    Ok(WorkerStart {
        checkpoint,
        layout,
        weights,
        initial_global,
    })
}

/// A worker's pseudo-gradient file in a parallel container job: the
/// round's global weights minus those of the segment's end checkpoint,
/// encoded as the job's `[parallel]` table says ([`crate::delta`]), for
/// round `round` ending at `step`.
pub fn pseudo_gradient(
    global: &Tensors,
    end: &[u8],
    (worker, parallel): (u32, &ParallelConfig),
    (round, step): (u64, u64),
) -> Result<Vec<u8>, CheckpointDefect> {
    let trained = parallel_weights(end)?;
    let raw = crate::outer::pseudo_gradient(worker, global, &trained)
        .map_err(|e| defect(e.to_string()))?;
    let (bytes, _) = crate::delta::encode(
        crate::delta::DeltaKind::PseudoGradient,
        parallel.compression,
        (round, step),
        &raw,
        &global_metadata(),
    )
    .map_err(|e| defect(e.to_string()))?;
    Ok(bytes)
}

/// A container segment's reproducibility class: the image's digest, the
/// device class the script runs on (the GPU when `on_gpu`, else the CPU,
/// also on a GPU rig) and the thread count. Inside one class, the segment
/// contract's settings make a replay give the same bytes.
pub fn class(
    image: &crate::Sha256Hex,
    hardware: &crate::hardware::Hardware,
    on_gpu: bool,
) -> String {
    use crate::hardware::DeviceKind;
    let (device, isa) = match (on_gpu, hardware.device) {
        (true, DeviceKind::Cuda) => (DeviceKind::Cuda, hardware.isa.as_str()),
        (_, DeviceKind::Cpu) => (DeviceKind::Cpu, hardware.isa.as_str()),
        // A GPU rig's CPU; one that does not say which stays apart.
        (false, DeviceKind::Cuda) => (
            DeviceKind::Cpu,
            hardware
                .host_isa
                .as_deref()
                .unwrap_or("unknown-host-of-a-gpu-rig"),
        ),
    };
    format!("container/{image}/{device}/{isa}/t{}", hardware.threads)
}

/// The values of a floating-point tensor as `f64`; `None` for an integer
/// one.
fn floats(dtype: &str, bytes: &[u8]) -> Option<Vec<f64>> {
    let v = match dtype {
        "F64" => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect(),
        "F32" => bytes
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap_or([0; 4]))))
            .collect(),
        "F16" => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        "BF16" => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        _ => return None,
    };
    Some(v)
}

/// How far a replayed container checkpoint is from the claimed one: the
/// largest relative L2 distance `‖a − b‖ / ‖b‖` over their floating-point
/// tensors (weights and optimizer state), and their integer tensors must
/// be equal. `None` when they cannot be compared: not checkpoints, other
/// steps or layouts, different integer values.
pub fn distance(replayed: &[u8], claimed: &[u8]) -> Option<f64> {
    let a = SafeTensors::deserialize(replayed).ok()?;
    let b = SafeTensors::deserialize(claimed).ok()?;
    let step = |bytes: &[u8]| {
        SafeTensors::read_metadata(bytes)
            .ok()
            .and_then(|(_, h)| h.metadata().as_ref()?.get("step").cloned())
    };
    if step(replayed)? != step(claimed)?
        || Layout::of(replayed).ok()? != Layout::of(claimed).ok()?
    {
        return None;
    }
    let mut worst = 0.0f64;
    for (name, va) in a.tensors() {
        let vb = b.tensor(&name).ok()?;
        let dtype = dtype_name(va.dtype()).ok()?;
        match (floats(dtype, va.data()), floats(dtype, vb.data())) {
            (Some(xa), Some(xb)) => worst = worst.max(rel_l2(&xa, &xb)?),
            _ if va.data() == vb.data() => {}
            _ => return None,
        }
    }
    Some(worst)
}

/// `‖a − b‖ / ‖b‖` (the plain `‖a − b‖` when `b` is zero), as the native
/// runtime measures it, computed on values scaled by their largest
/// magnitude so that no square overflows; `None` when it is not finite.
fn rel_l2(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.iter().chain(b).any(|x| !x.is_finite()) {
        return None;
    }
    let scale = a.iter().chain(b).fold(0f64, |m, x| m.max(x.abs()));
    if scale == 0.0 {
        return Some(0.0);
    }
    let (mut diff, mut norm) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (x / scale, y / scale);
        diff += (x - y) * (x - y);
        norm += y * y;
    }
    let d = if norm > 0.0 {
        (diff / norm).sqrt()
    } else {
        // ‖a − b‖ = ‖a‖ here, in the values' own units.
        diff.sqrt() * scale
    };
    d.is_finite().then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;
    use std::collections::HashMap;

    /// A file as another writer lays it out: the `safetensors` crate's own.
    fn written(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)], meta: &[(&str, &str)]) -> Vec<u8> {
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| ((*n).to_owned(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let meta: HashMap<String, String> = meta
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        safetensors::serialize(views, Some(meta)).unwrap()
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn model(step: &str) -> Vec<u8> {
        written(
            &[
                ("optim.0.exp_avg", Dtype::F32, vec![2], f32s(&[0.5, -0.5])),
                ("model.w", Dtype::F32, vec![2], f32s(&[1.0, 2.0])),
                (
                    "optim.0.step",
                    Dtype::F64,
                    vec![],
                    3.0f64.to_le_bytes().to_vec(),
                ),
                ("extra.half", Dtype::BF16, vec![1], vec![0x80, 0x3f]),
            ],
            &[
                ("format", CONTAINER_FORMAT),
                ("step", step),
                ("writer", "anything"),
            ],
        )
    }

    #[test]
    fn a_checkpoint_is_rewritten_in_one_encoding() {
        let (bytes, layout) = canonical(&model("20"), 20, None).unwrap();
        let (again, same) = canonical(&bytes, 20, Some(&layout)).unwrap();
        assert_eq!(bytes, again, "canonical bytes are a fixed point");
        assert_eq!(layout, same);
        assert_eq!(Layout::of(&bytes).unwrap(), layout);
        let names: Vec<&str> = layout.0.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["extra.half", "model.w", "optim.0.exp_avg", "optim.0.step"]
        );
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(
            st.tensor("model.w").unwrap().data(),
            f32s(&[1.0, 2.0]).as_slice()
        );
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap();
        assert_eq!(
            meta.get("writer"),
            None,
            "only format, step and scalars are kept"
        );
    }

    #[test]
    fn what_cannot_be_resumed_is_refused_with_the_reason() {
        let refused = |bytes: &[u8], step, start: Option<&Layout>| {
            canonical(bytes, step, start).unwrap_err().0
        };
        assert!(refused(b"not a file", 20, None).contains("not a safetensors file"));
        assert!(refused(&model("20")[..40], 20, None).contains("not a safetensors file"));
        assert!(refused(&model("19"), 20, None).contains("expected 20"));
        let nan = written(
            &[("model.w", Dtype::F32, vec![2], f32s(&[1.0, f32::NAN]))],
            &[("format", CONTAINER_FORMAT), ("step", "20")],
        );
        assert!(refused(&nan, 20, None).contains("not finite"));
        let inf_half = written(
            &[("model.h", Dtype::F16, vec![1], vec![0x00, 0x7c])],
            &[("format", CONTAINER_FORMAT), ("step", "20")],
        );
        assert!(refused(&inf_half, 20, None).contains("not finite"));
        let stray = written(
            &[("weights", Dtype::F32, vec![1], f32s(&[1.0]))],
            &[("format", CONTAINER_FORMAT), ("step", "20")],
        );
        assert!(refused(&stray, 20, None).contains("model.*"));
        let no_model = written(
            &[("extra.x", Dtype::F32, vec![1], f32s(&[1.0]))],
            &[("format", CONTAINER_FORMAT), ("step", "20")],
        );
        assert!(refused(&no_model, 20, None).contains("no model.*"));
        let unformatted = written(
            &[("model.w", Dtype::F32, vec![1], f32s(&[1.0]))],
            &[("step", "20")],
        );
        assert!(refused(&unformatted, 20, None).contains("format"));
        let (_, layout) = canonical(&model("20"), 20, None).unwrap();
        let reshaped = written(
            &[
                ("optim.0.exp_avg", Dtype::F32, vec![2], f32s(&[0.5, -0.5])),
                ("model.w", Dtype::F32, vec![1, 2], f32s(&[1.0, 2.0])),
                (
                    "optim.0.step",
                    Dtype::F64,
                    vec![],
                    3.0f64.to_le_bytes().to_vec(),
                ),
                ("extra.half", Dtype::BF16, vec![1], vec![0x80, 0x3f]),
            ],
            &[("format", CONTAINER_FORMAT), ("step", "40")],
        );
        assert!(refused(&reshaped, 40, Some(&layout)).contains("tensor model.w is F32 [1, 2]"));
        let fewer = written(
            &[("model.w", Dtype::F32, vec![2], f32s(&[1.0, 2.0]))],
            &[("format", CONTAINER_FORMAT), ("step", "40")],
        );
        assert!(refused(&fewer, 40, Some(&layout)).contains("is missing"));
    }

    #[test]
    fn the_model_file_holds_the_weights_under_their_state_dict_names() {
        let (ckpt, _) = canonical(&model("20"), 20, None).unwrap();
        let weights = model_weights(&ckpt).unwrap();
        let st = SafeTensors::deserialize(&weights).unwrap();
        assert_eq!(st.names(), ["w"]);
        assert_eq!(st.tensor("w").unwrap().data(), f32s(&[1.0, 2.0]).as_slice());
        assert!(model_weights(b"junk").is_err());
    }

    #[test]
    fn distance_is_zero_for_the_same_tensors_and_grows_with_a_change() {
        let (a, _) = canonical(&model("20"), 20, None).unwrap();
        assert_eq!(distance(&a, &a), Some(0.0));
        let moved = written(
            &[
                ("optim.0.exp_avg", Dtype::F32, vec![2], f32s(&[0.5, -0.5])),
                ("model.w", Dtype::F32, vec![2], f32s(&[1.0, 2.2])),
                (
                    "optim.0.step",
                    Dtype::F64,
                    vec![],
                    3.0f64.to_le_bytes().to_vec(),
                ),
                ("extra.half", Dtype::BF16, vec![1], vec![0x80, 0x3f]),
            ],
            &[("format", CONTAINER_FORMAT), ("step", "20")],
        );
        let (b, _) = canonical(&moved, 20, None).unwrap();
        let d = distance(&b, &a).unwrap();
        // ‖(0, 0.2)‖ / ‖(1, 2)‖
        assert!((d - 0.2 / 5f64.sqrt()).abs() < 1e-6, "{d}");
        let (later, _) = canonical(&model("40"), 40, None).unwrap();
        assert_eq!(distance(&later, &a), None, "other steps");
        assert_eq!(distance(b"junk", &a), None);
        let other_step_count = written(
            &[
                ("optim.0.exp_avg", Dtype::F32, vec![2], f32s(&[0.5, -0.5])),
                ("model.w", Dtype::F32, vec![2], f32s(&[1.0, 2.0])),
                (
                    "optim.0.step",
                    Dtype::I64,
                    vec![],
                    4i64.to_le_bytes().to_vec(),
                ),
                ("extra.half", Dtype::BF16, vec![1], vec![0x80, 0x3f]),
            ],
            &[("format", CONTAINER_FORMAT), ("step", "20")],
        );
        let (c, _) = canonical(&other_step_count, 20, None).unwrap();
        assert_eq!(distance(&c, &a), None, "another layout");
    }

    #[test]
    fn the_class_names_the_device_the_script_runs_on() {
        use crate::hardware::{DeviceKind, Hardware};
        let image: crate::Sha256Hex = "ab".repeat(32).parse().unwrap();
        let gpu = Hardware {
            device: DeviceKind::Cuda,
            name: "GPU".into(),
            threads: 1,
            memory_bytes: 1 << 30,
            isa: "sm90-h100".into(),
            uuid: None,
            host_isa: Some("x86-64-v4".into()),
            host_memory_bytes: Some(1 << 34),
        };
        let cpu = Hardware {
            device: DeviceKind::Cpu,
            isa: "x86-64-v4".into(),
            host_isa: None,
            ..gpu.clone()
        };
        let on = |hw: &Hardware, on_gpu| class(&image, hw, on_gpu);
        assert_eq!(
            on(&gpu, true),
            format!("container/{image}/cuda/sm90-h100/t1")
        );
        // On its CPU a GPU rig is a CPU like any other.
        assert_eq!(on(&gpu, false), on(&cpu, false));
        assert_eq!(
            on(&cpu, true),
            on(&cpu, false),
            "a CPU rig has no GPU to use"
        );
        let unknown = Hardware {
            host_isa: None,
            ..gpu.clone()
        };
        assert_ne!(on(&unknown, false), on(&cpu, false));
    }

    #[test]
    fn huge_or_zero_values_are_measured_not_skipped() {
        // Squares of 1e300 overflow: scaled, they do not.
        assert_eq!(rel_l2(&[1e300, 0.0], &[1e300, 0.0]), Some(0.0));
        let d = rel_l2(&[1e300, 1e300], &[0.0, 1e300]).unwrap();
        assert!((d - 1.0).abs() < 1e-12, "{d}");
        // A zero claim: the plain norm of the difference, as natively.
        assert_eq!(rel_l2(&[3.0, 4.0], &[0.0, 0.0]), Some(5.0));
        assert_eq!(rel_l2(&[0.0], &[0.0]), Some(0.0));
        assert_eq!(rel_l2(&[f64::NAN], &[1.0]), None);
        assert_eq!(rel_l2(&[1.0], &[1.0, 2.0]), None);
    }

    #[test]
    fn a_worker_starts_from_the_rounds_weights_and_its_own_state() {
        let (slot, _) = canonical(&model("20"), 20, None).unwrap();
        let weights = parallel_weights(&slot).unwrap();
        assert_eq!(
            weights.len(),
            1,
            "the BF16 extra and optimizer state are not weights"
        );
        assert_eq!(weights["w"], (vec![2], vec![1.0, 2.0]));
        let round = Tensors::from([("w".to_owned(), (vec![2], vec![7.0, -7.0]))]);
        let start = compose(&round, &slot, 30).unwrap();
        let (again, layout) = canonical(&start, 30, None).unwrap();
        assert_eq!(start, again, "a composed start is canonical");
        assert_eq!(Layout::of(&slot).unwrap(), layout);
        assert_eq!(parallel_weights(&start).unwrap(), round);
        let st = SafeTensors::deserialize(&start).unwrap();
        assert_eq!(
            st.tensor("optim.0.exp_avg").unwrap().data(),
            f32s(&[0.5, -0.5]).as_slice(),
            "the slot's optimizer state is kept"
        );
        // Weights of another model are refused, by name and by shape.
        let other = Tensors::from([("v".to_owned(), (vec![2], vec![0.0, 0.0]))]);
        assert!(compose(&other, &slot, 30)
            .unwrap_err()
            .0
            .contains("model.w"));
        let wide = Tensors::from([("w".to_owned(), (vec![3], vec![0.0; 3]))]);
        assert!(compose(&wide, &slot, 30).unwrap_err().0.contains("[3]"));
        // Half-precision weights cannot be averaged in f32.
        let half = written(
            &[("model.w", Dtype::BF16, vec![1], vec![0x80, 0x3f])],
            &[("format", CONTAINER_FORMAT), ("step", "0")],
        );
        assert!(parallel_weights(&half).unwrap_err().0.contains("BF16"));
    }

    #[test]
    fn a_start_of_weights_alone_is_continued_with_optimizer_state() {
        let initial = written(
            &[("model.w", Dtype::F32, vec![2], f32s(&[1.0, 2.0]))],
            &[("format", CONTAINER_FORMAT), ("step", "20")],
        );
        let (initial, fresh) = canonical(&initial, 20, None).unwrap();
        assert!(canonical(&model("20"), 20, Some(&fresh)).is_ok());
        let global = initial_global(&initial).unwrap();
        assert_eq!(global.params, parallel_weights(&initial).unwrap());
        // Its model tensors must still be the start's.
        let renamed = written(
            &[("model.v", Dtype::F32, vec![2], f32s(&[1.0, 2.0]))],
            &[("format", CONTAINER_FORMAT), ("step", "20")],
        );
        assert!(canonical(&renamed, 20, Some(&fresh)).is_err());
        // The pseudo-gradient is global minus the worker's weights.
        let parallel = ParallelConfig {
            workers: 2,
            inner_steps: 10,
            outer_lr: 0.7,
            outer_momentum: 0.9,
            compression: crate::spec::Compression::None,
            min_workers: 2,
        };
        let (end, _) = canonical(&model("30"), 30, None).unwrap();
        let moved = Tensors::from([("w".to_owned(), (vec![2], vec![3.0, 3.0]))]);
        let bytes = pseudo_gradient(&moved, &end, (1, &parallel), (2, 30)).unwrap();
        let d = crate::delta::decode(&bytes, crate::delta::DeltaKind::PseudoGradient).unwrap();
        assert_eq!((d.round, d.step), (2, 30));
        assert_eq!(d.values["w"], (vec![2], vec![2.0, 1.0]));
    }
}
