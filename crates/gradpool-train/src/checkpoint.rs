//! Checkpoints and model files: safetensors written byte-deterministically.
//!
//! A checkpoint holds, for every parameter `NAME`, the tensors
//! `param.NAME`, `adam_m.NAME` and `adam_v.NAME` (f32), and metadata:
//! `format` ([`CHECKPOINT_FORMAT`]), `step`, `model` (JSON of
//! [`ModelMeta`]), `vocab` (text: JSON list of characters) or `csv` (JSON of
//! [`CsvInfo`](crate::CsvInfo)), and `spec_fingerprint` (blake3 over the
//! spec's training-relevant fields and the data's hash).
//!
//! The file is written byte-deterministically by
//! [`gradpool_core::checkpoint::to_bytes`], the format's one writer: the
//! header's keys are in sorted order and tensors are laid out in name order,
//! so equal state always gives equal bytes. Reading uses the `safetensors`
//! crate's parser, which checks offsets and sizes.

use crate::dataset::Dataset;
use crate::model::ModelMeta;
use crate::TrainError;
use gradpool_core::spec::JobSpec;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

pub use gradpool_core::checkpoint::{CHECKPOINT_FORMAT, MODEL_FORMAT};

/// A named f32 tensor on the host.
pub(crate) struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Fingerprint of everything that determines a training run: the model
/// config, every train field but `checkpoint_every`, the data options and
/// the data's hash.
pub fn spec_fingerprint(spec: &JobSpec, data: &Dataset) -> String {
    fingerprint_with_hash(spec, &data.content_hash)
}

fn fingerprint_with_hash(spec: &JobSpec, data_hash: &str) -> String {
    let t = &spec.train;
    let model = match &spec.model {
        gradpool_core::spec::ModelConfig::Gpt(g) => format!(
            "gpt n_layer={} n_head={} n_embd={} block_size={}",
            g.n_layer, g.n_head, g.n_embd, g.block_size
        ),
        gradpool_core::spec::ModelConfig::Mlp(m) => format!("mlp hidden={:?}", m.hidden),
        gradpool_core::spec::ModelConfig::Container(c) => format!(
            "container image={} command={:?}",
            c.image_sha256
                .as_ref()
                .map(|s| s.as_str())
                .unwrap_or("unpinned"),
            c.command
        ),
    };
    let canonical = format!(
        "{CHECKPOINT_FORMAT}\nmodel: {model}\ntrain: seed={} steps={} batch_size={} lr={:?} \
         min_lr={:?} warmup_steps={} weight_decay={:?} beta1={:?} beta2={:?} eps={:?} \
         grad_clip={:?}\ndata: format={:?} label_column={:?} eval_fraction={:?} blake3={}\n",
        t.seed,
        t.steps,
        t.batch_size,
        t.lr,
        t.min_lr,
        t.warmup_steps,
        t.weight_decay,
        t.beta1,
        t.beta2,
        t.eps,
        t.grad_clip,
        spec.data.format,
        spec.data.label_column,
        spec.data.eval_fraction,
        data_hash,
    );
    // A parallel job trains other weights from the same fields; a spec
    // without `[parallel]` keeps the fingerprint it always had.
    let canonical = match &spec.parallel {
        None => canonical,
        Some(p) => format!(
            "{canonical}parallel: workers={} inner_steps={} outer_lr={:?} outer_momentum={:?} \
             compression={}\n",
            p.workers,
            p.inner_steps,
            p.outer_lr,
            p.outer_momentum,
            p.compression.as_str()
        ),
    };
    blake3::hash(canonical.as_bytes()).to_hex().to_string()
}

/// Serialises tensors and metadata as safetensors bytes, deterministically
/// ([`gradpool_core::checkpoint::to_bytes`]).
pub(crate) fn to_bytes(
    tensors: &BTreeMap<String, HostTensor>,
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    let refs = tensors
        .iter()
        .map(|(name, t)| {
            (
                name.clone(),
                gradpool_core::checkpoint::TensorRef {
                    shape: &t.shape,
                    data: &t.data,
                },
            )
        })
        .collect();
    gradpool_core::checkpoint::to_bytes(&refs, metadata)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory, flushed, then renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let io = |what, p: &Path| {
        let p = p.to_owned();
        move |error| TrainError::Io {
            what,
            path: p,
            error,
        }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io("cannot create", &tmp))?;
    f.write_all(bytes).map_err(io("cannot write", &tmp))?;
    f.sync_all().map_err(io("cannot sync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("cannot rename into", path)(e)
    })
}

/// A parsed safetensors file: metadata and f32 tensors.
pub(crate) struct Parsed {
    pub metadata: BTreeMap<String, String>,
    pub tensors: BTreeMap<String, HostTensor>,
}

/// Reads and parses a safetensors file; any defect is a
/// [`TrainError::Checkpoint`] naming the file.
pub(crate) fn read(path: &Path) -> Result<Parsed, TrainError> {
    let bytes = std::fs::read(path).map_err(|error| TrainError::Io {
        what: "cannot read",
        path: path.to_owned(),
        error,
    })?;
    parse(&bytes, path)
}

/// Parses safetensors bytes (read from `path`, which errors name).
pub(crate) fn parse(bytes: &[u8], path: &Path) -> Result<Parsed, TrainError> {
    let bad = |r: String| TrainError::checkpoint(path, r);
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| {
        bad(format!(
            "not a valid safetensors file (truncated or corrupt?): {e}"
        ))
    })?;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
        bad(format!(
            "not a valid safetensors file (truncated or corrupt?): {e}"
        ))
    })?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(bad(format!(
                "tensor {name} has dtype {:?}, expected F32",
                view.dtype()
            )));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(Parsed { metadata, tensors })
}

impl Parsed {
    pub fn meta(&self, path: &Path, key: &str) -> Result<&str, TrainError> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| TrainError::checkpoint(path, format!("metadata has no {key:?}")))
    }

    /// Takes tensors `{prefix}{name}` for every parameter of `model`,
    /// checking shapes; returns them in parameter order.
    pub fn take_params(
        &mut self,
        path: &Path,
        model: &ModelMeta,
        prefix: &str,
    ) -> Result<Vec<Vec<f32>>, TrainError> {
        let mut out = Vec::new();
        for p in model.params() {
            let key = format!("{prefix}{}", p.name);
            let t = self
                .tensors
                .remove(&key)
                .ok_or_else(|| TrainError::checkpoint(path, format!("missing tensor {key}")))?;
            if t.shape != p.shape {
                return Err(TrainError::checkpoint(
                    path,
                    format!(
                        "tensor {key} has shape {:?}, expected {:?}",
                        t.shape, p.shape
                    ),
                ));
            }
            out.push(t.data);
        }
        Ok(out)
    }

    /// Fails if tensors are left over after all expected ones were taken.
    pub fn no_extra(&self, path: &Path) -> Result<(), TrainError> {
        if self.tensors.is_empty() {
            Ok(())
        } else {
            let names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
            Err(TrainError::checkpoint(
                path,
                format!("unexpected tensors: {}", names.join(", ")),
            ))
        }
    }
}

/// A validated training state loaded from a checkpoint.
pub(crate) struct State {
    pub step: u64,
    pub params: Vec<Vec<f32>>,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

/// Metadata common to checkpoints of a spec on some data.
pub(crate) fn base_metadata(
    spec: &JobSpec,
    data: &Dataset,
    meta: &ModelMeta,
    step: u64,
) -> BTreeMap<String, String> {
    let mut md = BTreeMap::new();
    md.insert("format".into(), CHECKPOINT_FORMAT.into());
    md.insert("step".into(), step.to_string());
    md.insert(
        "model".into(),
        serde_json::to_string(meta).unwrap_or_default(),
    );
    let (k, v) = data.metadata();
    md.insert(k.into(), v);
    md.insert("spec_fingerprint".into(), spec_fingerprint(spec, data));
    md.insert("data_blake3".into(), data.content_hash.clone());
    md
}

/// Serialises a training state as checkpoint bytes.
pub(crate) fn checkpoint_bytes(
    spec: &JobSpec,
    data: &Dataset,
    meta: &ModelMeta,
    state: State,
) -> Vec<u8> {
    let md = base_metadata(spec, data, meta, state.step);
    let mut tensors = BTreeMap::new();
    let specs = meta.params();
    for (prefix, values) in [
        ("param.", state.params),
        ("adam_m.", state.m),
        ("adam_v.", state.v),
    ] {
        for (p, data) in specs.iter().zip(values) {
            tensors.insert(
                format!("{prefix}{}", p.name),
                HostTensor {
                    shape: p.shape.clone(),
                    data,
                },
            );
        }
    }
    to_bytes(&tensors, &md)
}

/// Checks checkpoint bytes of `spec` on `data` the way a segment's start
/// checkpoint is checked before training from it (format, spec
/// fingerprint, data, every tensor's name, dtype and shape); returns its
/// step.
pub fn check_bytes(spec: &JobSpec, data: &Dataset, bytes: &[u8]) -> Result<u64, TrainError> {
    let path = Path::new("<checkpoint bytes>");
    let mut parsed = parse(bytes, path)?;
    let (meta, step) = validate(spec, Some(data), &parsed, path, CHECKPOINT_FORMAT)?;
    for prefix in gradpool_core::model::CHECKPOINT_PREFIXES {
        parsed.take_params(path, &meta, prefix)?;
    }
    parsed.no_extra(path)?;
    Ok(step)
}

/// Loads and validates a checkpoint of `spec`. With `data`, the checkpoint
/// must have been made on that data; without, the data identity recorded in
/// the checkpoint is used (it must still match the spec's fingerprint). With
/// `expected_step`, its step must be that one.
pub(crate) fn load(
    spec: &JobSpec,
    data: Option<&Dataset>,
    path: &Path,
    expected_step: Option<u64>,
) -> Result<(ModelMeta, State), TrainError> {
    state_of(spec, data, read(path)?, path, expected_step)
}

/// [`load`] of a file already parsed (from `path`, which errors name).
pub(crate) fn state_of(
    spec: &JobSpec,
    data: Option<&Dataset>,
    mut parsed: Parsed,
    path: &Path,
    expected_step: Option<u64>,
) -> Result<(ModelMeta, State), TrainError> {
    let (meta, step) = validate(spec, data, &parsed, path, CHECKPOINT_FORMAT)?;
    if let Some(want) = expected_step {
        if step != want {
            return Err(TrainError::checkpoint(
                path,
                format!("it is at step {step}, expected step {want}"),
            ));
        }
    }
    let params = parsed.take_params(path, &meta, "param.")?;
    let m = parsed.take_params(path, &meta, "adam_m.")?;
    let v = parsed.take_params(path, &meta, "adam_v.")?;
    parsed.no_extra(path)?;
    Ok((meta, State { step, params, m, v }))
}

/// Checks a parsed file's metadata against the spec (and data); returns the
/// model it holds and its step.
pub(crate) fn validate(
    spec: &JobSpec,
    data: Option<&Dataset>,
    parsed: &Parsed,
    path: &Path,
    want_format: &str,
) -> Result<(ModelMeta, u64), TrainError> {
    let bad = |r: String| TrainError::checkpoint(path, r);
    let format = parsed.meta(path, "format")?;
    if format != want_format {
        return Err(bad(format!(
            "format is {format:?}, expected {want_format:?}"
        )));
    }
    let data_hash = match data {
        Some(d) => d.content_hash.clone(),
        None => parsed.meta(path, "data_blake3")?.to_owned(),
    };
    let want_fp = fingerprint_with_hash(spec, &data_hash);
    let fp = parsed.meta(path, "spec_fingerprint")?;
    if fp != want_fp {
        return Err(bad(format!(
            "it belongs to another job spec or data (fingerprint {fp}, expected {want_fp})"
        )));
    }
    let model_json = parsed.meta(path, "model")?;
    let meta: ModelMeta = serde_json::from_str(model_json)
        .map_err(|e| bad(format!("bad model metadata {model_json}: {e}")))?;
    let expected_meta = match data {
        Some(d) => d.model_meta(spec)?,
        None => {
            // The spec fixes everything but what the data fixes.
            let fixed = match (&spec.model, &meta) {
                (gradpool_core::spec::ModelConfig::Gpt(g), ModelMeta::Gpt { vocab_size, .. }) => {
                    Some(ModelMeta::Gpt {
                        n_layer: g.n_layer,
                        n_head: g.n_head,
                        n_embd: g.n_embd,
                        block_size: g.block_size,
                        vocab_size: *vocab_size,
                    })
                }
                (
                    gradpool_core::spec::ModelConfig::Mlp(m),
                    ModelMeta::Mlp {
                        inputs, classes, ..
                    },
                ) => Some(ModelMeta::Mlp {
                    inputs: *inputs,
                    hidden: m.hidden.clone(),
                    classes: *classes,
                }),
                _ => None,
            };
            fixed.ok_or_else(|| bad(format!("model {model_json} is not the spec's kind")))?
        }
    };
    if meta != expected_meta {
        return Err(bad(format!(
            "model is {model_json}, expected {}",
            serde_json::to_string(&expected_meta).unwrap_or_default()
        )));
    }
    match (&meta, data) {
        (ModelMeta::Gpt { vocab_size, .. }, None) => {
            let vocab = crate::dataset::parse_vocab(parsed.meta(path, "vocab")?).map_err(bad)?;
            if vocab.len() != *vocab_size {
                return Err(bad(format!(
                    "vocab has {} entries, model expects {vocab_size}",
                    vocab.len()
                )));
            }
        }
        (_, Some(d)) => {
            let (key, want) = d.metadata();
            let got = parsed.meta(path, key)?;
            if got != want {
                return Err(bad(format!("metadata {key} does not match the data")));
            }
        }
        _ => {}
    }
    let step_text = parsed.meta(path, "step")?;
    let step: u64 = step_text
        .parse()
        .map_err(|_| bad(format!("step {step_text:?} is not a number")))?;
    if step > spec.train.steps {
        return Err(bad(format!(
            "step {step} is past the job's {} steps",
            spec.train.steps
        )));
    }
    Ok((meta, step))
}

/// How far apart two checkpoints of the same job are: the relative L2
/// distance `‖a − b‖ / ‖b‖` of every tensor (parameters and both AdamW
/// moments), computed in f64, and the largest of them.
///
/// A validator compares its replay of a segment with the checkpoint a
/// provider committed: inside one reproducibility class the two must be
/// equal byte for byte (a distance of exactly 0); across classes the
/// largest distance must stay within
/// [`CROSS_CLASS_TOLERANCE`](gradpool_core::verification::CROSS_CLASS_TOLERANCE).
///
/// Serialised as one JSON object (what `gradpool checkpoint distance`
/// prints), without the per-tensor list:
///
/// ```text
/// {"comparable":true,"max_rel_l2":0.0,"tensor":"param.head.weight","step_a":100,"step_b":100}
/// ```
///
/// JSON has no infinity: an infinite `max_rel_l2` is written as `null`.
/// It is infinite when the checkpoints are at different steps
/// (`comparable: false`, `tensor: null`) or when a tensor holds NaN or
/// infinite values where the other does not; either way they do not match.
#[derive(Debug, Clone, PartialEq)]
pub struct Distance {
    /// The largest relative L2 distance over all tensors; `f64::INFINITY`
    /// when the checkpoints are not comparable or hold non-finite values.
    pub max_rel_l2: f64,
    /// The tensor with the largest distance (`param.NAME`, `adam_m.NAME` or
    /// `adam_v.NAME`; the first one when all are equally far, as when the
    /// checkpoints are identical); empty when the steps differ.
    pub tensor: String,
    /// The step of the first checkpoint.
    pub step_a: u64,
    /// The step of the second checkpoint.
    pub step_b: u64,
    /// Every tensor's relative L2 distance, parameters first, then the
    /// first and second moments, each in model order; empty when the steps
    /// differ.
    pub tensors: Vec<(String, f64)>,
}

impl Distance {
    /// Whether the checkpoints are at the same step, so that their tensors
    /// were compared at all.
    pub fn comparable(&self) -> bool {
        self.step_a == self.step_b
    }

    /// Whether the checkpoints match within `tolerance`: comparable, and no
    /// tensor further apart than `tolerance`.
    pub fn within(&self, tolerance: f64) -> bool {
        self.comparable() && self.max_rel_l2 <= tolerance
    }

    /// The largest distance over the tensors whose name starts with
    /// `prefix` (`"param."`, `"adam_m."`, `"adam_v."`), with that tensor's
    /// name; `None` when there are none.
    pub fn max_with_prefix(&self, prefix: &str) -> Option<(&str, f64)> {
        let mut worst: Option<(&str, f64)> = None;
        for (name, d) in self.tensors.iter().filter(|(n, _)| n.starts_with(prefix)) {
            if worst.is_none_or(|(_, w)| *d > w) {
                worst = Some((name, *d));
            }
        }
        worst
    }
}

impl serde::Serialize for Distance {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Distance", 5)?;
        st.serialize_field("comparable", &self.comparable())?;
        st.serialize_field(
            "max_rel_l2",
            &self.max_rel_l2.is_finite().then_some(self.max_rel_l2),
        )?;
        st.serialize_field(
            "tensor",
            &(!self.tensor.is_empty()).then_some(self.tensor.as_str()),
        )?;
        st.serialize_field("step_a", &self.step_a)?;
        st.serialize_field("step_b", &self.step_b)?;
        st.end()
    }
}

/// The distance between checkpoints `a` and `b` of `spec` on `data`.
///
/// Both files are loaded and validated like a segment's start checkpoint
/// (format, spec fingerprint, data, every tensor's name, dtype and shape);
/// a file that fails is an error, not a distance. Checkpoints at different
/// steps are not comparable: their distance is `f64::INFINITY`, because a
/// replay that ends at another step than the claimed checkpoint can never
/// match it. See [`Distance`] for how each tensor is compared.
///
/// # Examples
///
/// ```no_run
/// # fn main() -> Result<(), gradpool_train::TrainError> {
/// # let spec: gradpool_core::JobSpec = todo!();
/// # let data: gradpool_train::Dataset = todo!();
/// use gradpool_core::verification::CROSS_CLASS_TOLERANCE;
/// use std::path::Path;
///
/// let d = gradpool_train::checkpoint::distance(
///     &spec,
///     &data,
///     Path::new("replay.safetensors"),
///     Path::new("claimed.safetensors"),
/// )?;
/// if !d.within(CROSS_CLASS_TOLERANCE) {
///     println!("mismatch: {} is {} apart", d.tensor, d.max_rel_l2);
/// }
/// # Ok(())
/// # }
/// ```
pub fn distance(
    spec: &JobSpec,
    data: &Dataset,
    a: &Path,
    b: &Path,
) -> Result<Distance, TrainError> {
    let (_, sa) = load(spec, Some(data), a, None)?;
    let (meta, sb) = load(spec, Some(data), b, None)?;
    if sa.step != sb.step {
        return Ok(Distance {
            max_rel_l2: f64::INFINITY,
            tensor: String::new(),
            step_a: sa.step,
            step_b: sb.step,
            tensors: Vec::new(),
        });
    }
    Ok(compare(&meta, &sa, &sb))
}

/// The distance between the tensors of checkpoints `a` and `b` of `spec`
/// on `data`, whatever their steps: how far training moved the state
/// between two steps. Validates both files like [`distance`].
pub fn tensor_distance(
    spec: &JobSpec,
    data: &Dataset,
    a: &Path,
    b: &Path,
) -> Result<Distance, TrainError> {
    let (_, sa) = load(spec, Some(data), a, None)?;
    let (meta, sb) = load(spec, Some(data), b, None)?;
    Ok(compare(&meta, &sa, &sb))
}

/// Compares every tensor of two states of the same model.
fn compare(meta: &ModelMeta, a: &State, b: &State) -> Distance {
    let specs = meta.params();
    let mut tensors = Vec::with_capacity(3 * specs.len());
    for (prefix, xs, ys) in [
        ("param.", &a.params, &b.params),
        ("adam_m.", &a.m, &b.m),
        ("adam_v.", &a.v, &b.v),
    ] {
        for ((p, x), y) in specs.iter().zip(xs).zip(ys) {
            tensors.push((format!("{prefix}{}", p.name), rel_l2(x, y)));
        }
    }
    let mut worst = (String::new(), 0f64);
    for (name, d) in &tensors {
        if worst.0.is_empty() || *d > worst.1 {
            worst = (name.clone(), *d);
        }
    }
    Distance {
        max_rel_l2: worst.1,
        tensor: worst.0,
        step_a: a.step,
        step_b: b.step,
        tensors,
    }
}

/// `‖a − b‖ / ‖b‖` in f64 (`‖a − b‖` when `‖b‖` is 0): 0 for bitwise equal
/// tensors, `f64::INFINITY` when the result is not finite (a NaN or
/// infinite value in one of them).
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    if a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()) {
        return 0.0;
    }
    let mut diff = 0f64;
    let mut norm = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        let d = x as f64 - y as f64;
        diff += d * d;
        norm += y as f64 * y as f64;
    }
    let d = if norm > 0.0 {
        (diff / norm).sqrt()
    } else {
        diff.sqrt()
    };
    if d.is_finite() {
        d
    } else {
        f64::INFINITY
    }
}

#[cfg(test)]
mod tests {
    use super::rel_l2;

    #[test]
    fn rel_l2_is_relative_to_the_second_tensor() {
        assert_eq!(rel_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        // ‖(3, 4)‖ / ‖(0, 10)‖ = 5 / 10.
        assert_eq!(rel_l2(&[3.0, 14.0], &[0.0, 10.0]), 0.5);
        // A zero second tensor: the plain norm of the difference.
        assert_eq!(rel_l2(&[3.0, 4.0], &[0.0, 0.0]), 5.0);
        assert_eq!(rel_l2(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
        // Non-finite values never pass as close.
        assert_eq!(rel_l2(&[f32::NAN, 1.0], &[1.0, 1.0]), f64::INFINITY);
        assert_eq!(rel_l2(&[1.0, 1.0], &[f32::INFINITY, 1.0]), f64::INFINITY);
        assert_eq!(rel_l2(&[f32::NAN], &[0.0]), f64::INFINITY);
        // Signed zeros differ in bits but not in value.
        assert_eq!(rel_l2(&[-0.0], &[0.0]), 0.0);
    }
}
