//! The checkpoint file: its fixed encoding, and the pool's look at one
//! before it accepts or pays for it.
//!
//! A checkpoint is a safetensors file holding, for every parameter `NAME`
//! of the model ([`ModelMeta::params`]), the f32 tensors `param.NAME`,
//! `adam_m.NAME` and `adam_v.NAME`, and string metadata: `format`
//! ([`CHECKPOINT_FORMAT`]), `step`, `model` (JSON of [`ModelMeta`]) and
//! what the trainer records about the data and the spec.
//!
//! [`to_bytes`] writes it by hand, not with the `safetensors` crate: the
//! header's keys are in sorted order and tensors are laid out in name
//! order, so equal state always gives equal bytes (the commitment chain
//! hashes these bytes). [`inspect`] reads one with the `safetensors`
//! crate's parser, which checks the header's size and every offset.

use crate::model::{ModelMeta, CHECKPOINT_PREFIXES};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;

/// Format tag of checkpoint files.
pub const CHECKPOINT_FORMAT: &str = "gradpool-checkpoint-v1";

/// Format tag of model files: a built-in model's parameters under their
/// own names, without the optimizer's state, and its checkpoint's metadata
/// (the model's config, the data's vocabulary or features).
pub const MODEL_FORMAT: &str = "gradpool-model-v1";

/// The checkpoint formats a built-in model's file can be taken from: a
/// checkpoint, and a parallel job's global or weights checkpoint
/// ([`crate::outer`]). Each holds the parameters as `param.NAME`.
const PARAMETER_FORMATS: [&str; 3] = [
    CHECKPOINT_FORMAT,
    crate::outer::GLOBAL_FORMAT,
    crate::outer::WEIGHTS_FORMAT,
];

/// f32 tensors by name: shape and row-major values.
pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// A tensor to write: its shape and its values, row-major.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    pub shape: &'a [usize],
    pub data: &'a [f32],
}

/// Serialises f32 tensors and string metadata as safetensors bytes,
/// deterministically: equal input, equal bytes.
pub fn to_bytes(
    tensors: &BTreeMap<String, TensorRef<'_>>,
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    let typed = tensors
        .iter()
        .map(|(k, t)| (k.clone(), (t.shape, Values::F32(t.data))))
        .collect();
    to_bytes_typed(&typed, metadata)
}

/// A tensor's values, as one of the dtypes gradpool writes.
#[derive(Debug, Clone, Copy)]
pub enum Values<'a> {
    F32(&'a [f32]),
    /// The levels of the int8 codebook ([`crate::int8`]).
    I8(&'a [i8]),
    /// Little-endian bytes of the named safetensors dtype (`"BF16"`, …):
    /// a container job's tensors, copied as they are
    /// ([`crate::container`]).
    Raw(&'static str, &'a [u8]),
}

impl Values<'_> {
    fn dtype(&self) -> &'static str {
        match self {
            Values::F32(_) => "F32",
            Values::I8(_) => "I8",
            Values::Raw(dtype, _) => dtype,
        }
    }

    fn byte_len(&self) -> usize {
        match self {
            Values::F32(v) => v.len() * 4,
            Values::I8(v) => v.len(),
            Values::Raw(_, bytes) => bytes.len(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Values::F32(v) => {
                for x in *v {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
            Values::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
            Values::Raw(_, bytes) => out.extend_from_slice(bytes),
        }
    }
}

/// [`to_bytes`] for tensors of any dtype gradpool writes: the header's keys
/// sorted, the tensors laid out in name order.
pub fn to_bytes_typed(
    tensors: &BTreeMap<String, (&[usize], Values<'_>)>,
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    // Every key of the header, sorted; values built in the same order so the
    // JSON is the same whether or not serde_json preserves insertion order.
    let mut entries: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut meta = serde_json::Map::new();
    for (k, v) in metadata {
        meta.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    entries.insert("__metadata__".into(), serde_json::Value::Object(meta));
    let mut offset = 0usize;
    for (name, (shape, values)) in tensors {
        let len = values.byte_len();
        let mut info = serde_json::Map::new();
        info.insert(
            "data_offsets".into(),
            serde_json::json!([offset, offset + len]),
        );
        info.insert(
            "dtype".into(),
            serde_json::Value::String(values.dtype().into()),
        );
        info.insert("shape".into(), serde_json::json!(shape));
        entries.insert(name.clone(), serde_json::Value::Object(info));
        offset += len;
    }
    let mut header = String::from("{");
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&serde_json::Value::String(k.clone()).to_string());
        header.push(':');
        header.push_str(&v.to_string());
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for (_, values) in tensors.values() {
        values.write(&mut out);
    }
    out
}

/// Why a checkpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("checkpoint refused: {0}")]
pub struct CheckpointDefect(pub String);

fn defect(reason: impl Into<String>) -> CheckpointDefect {
    CheckpointDefect(reason.into())
}

/// The model file ([`MODEL_FORMAT`]) of a built-in model's checkpoint:
/// its `param.NAME` tensors as `NAME`, and its metadata but for a parallel
/// job's `round` and `workers`, with `format` = [`MODEL_FORMAT`]. The same
/// bytes as `gradpool job fetch` writes.
pub fn model_file(checkpoint: &[u8]) -> Result<Vec<u8>, CheckpointDefect> {
    let st = SafeTensors::deserialize(checkpoint)
        .map_err(|e| defect(format!("not a safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(checkpoint)
        .map_err(|e| defect(format!("not a safetensors file: {e}")))?;
    let mut metadata = header.metadata().clone().unwrap_or_default();
    let format = metadata.get("format").map(String::as_str).unwrap_or("");
    if !PARAMETER_FORMATS.contains(&format) {
        return Err(defect(format!(
            "format is {format:?}, not a checkpoint of a built-in model"
        )));
    }
    if !metadata.contains_key("model") {
        return Err(defect("its metadata has no \"model\""));
    }
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let Some(short) = name.strip_prefix("param.") else {
            continue;
        };
        if view.dtype() != Dtype::F32 {
            return Err(defect(format!("{name} is {:?}, not F32", view.dtype())));
        }
        tensors.insert(short.to_owned(), (view.shape().to_vec(), view.data()));
    }
    if tensors.is_empty() {
        return Err(defect("it holds no param.* tensor"));
    }
    for key in ["round", "workers"] {
        metadata.remove(key);
    }
    metadata.insert("format".into(), MODEL_FORMAT.into());
    let metadata: BTreeMap<String, String> = metadata.into_iter().collect();
    let typed = tensors
        .iter()
        .map(|(n, (shape, data))| (n.clone(), (shape.as_slice(), Values::Raw("F32", data))))
        .collect();
    Ok(to_bytes_typed(&typed, &metadata))
}

/// The most a checkpoint's header takes: its tensors' entries and its
/// metadata, a character vocabulary among them.
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// The sizes a checkpoint of `model` may have: its tensors' bytes (each
/// parameter as weights and both Adam moments, F32) after the 8-byte
/// header length, and a header of at most [`MAX_HEADER_BYTES`].
pub fn size_range(model: &ModelMeta) -> std::ops::RangeInclusive<u64> {
    let least = model
        .parameter_count()
        .saturating_mul(4 * CHECKPOINT_PREFIXES.len() as u64)
        .saturating_add(8);
    least..=least.saturating_add(MAX_HEADER_BYTES)
}

/// Checks a committed checkpoint without training anything: a safetensors
/// file (header of sane size, offsets inside the file, nothing after the
/// last tensor) of format [`CHECKPOINT_FORMAT`] at `step`, of exactly the
/// model `model` (its metadata, and every tensor's name, dtype and shape),
/// whose values are all finite and whose second moments are ≥ 0.
///
/// The file's bytes are read once; the checks cost no more than hashing
/// it. What it cannot see (whether the weights are the ones the segment
/// computes) is for the audits.
pub fn inspect(bytes: &[u8], model: &ModelMeta, step: u64) -> Result<(), CheckpointDefect> {
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| defect(format!("not a safetensors file: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get = |key: &str| {
        meta.get(key)
            .map(String::as_str)
            .ok_or_else(|| defect(format!("its metadata has no {key:?}")))
    };
    let format = get("format")?;
    if format != CHECKPOINT_FORMAT {
        return Err(defect(format!(
            "format is {format:?}, expected {CHECKPOINT_FORMAT:?}"
        )));
    }
    let got_step = get("step")?;
    if got_step != step.to_string() {
        return Err(defect(format!(
            "it is at step {got_step:?}, expected {step}"
        )));
    }
    let got_model: ModelMeta = serde_json::from_str(get("model")?)
        .map_err(|e| defect(format!("its model metadata does not parse: {e}")))?;
    if &got_model != model {
        return Err(defect(format!(
            "it holds the model {got_model:?}, the job trains {model:?}"
        )));
    }
    let mut want: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for p in model.params() {
        for prefix in CHECKPOINT_PREFIXES {
            want.insert(format!("{prefix}{}", p.name), p.shape.clone());
        }
    }
    let tensors = header.tensors();
    if let Some(extra) = tensors.keys().find(|k| !want.contains_key(*k)) {
        return Err(defect(format!("unexpected tensor {extra:?}")));
    }
    for (name, shape) in &want {
        let info = tensors
            .get(name)
            .ok_or_else(|| defect(format!("tensor {name} is missing")))?;
        if info.dtype != Dtype::F32 {
            return Err(defect(format!(
                "tensor {name} has dtype {:?}, expected F32",
                info.dtype
            )));
        }
        if &info.shape != shape {
            return Err(defect(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                info.shape
            )));
        }
    }
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| defect(format!("not a safetensors file: {e}")))?;
    for name in want.keys() {
        let view = st
            .tensor(name)
            .map_err(|e| defect(format!("tensor {name}: {e}")))?;
        let moment = name.starts_with("adam_v.");
        let bad = view.data().chunks_exact(4).position(|c| {
            let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            !x.is_finite() || (moment && x < 0.0)
        });
        if let Some(i) = bad {
            let what = if moment {
                "a second moment must be finite and ≥ 0"
            } else {
                "every value must be finite"
            };
            return Err(defect(format!("tensor {name}[{i}] is impossible: {what}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelMeta {
        ModelMeta::Mlp {
            inputs: 2,
            hidden: vec![3],
            classes: 2,
        }
    }

    /// A checkpoint of `model()` at `step` with every value `fill`,
    /// edited by `edit` before it is written.
    fn checkpoint(
        step: u64,
        fill: f32,
        edit: impl FnOnce(&mut BTreeMap<String, (Vec<usize>, Vec<f32>)>, &mut BTreeMap<String, String>),
    ) -> Vec<u8> {
        let mut tensors = BTreeMap::new();
        for p in model().params() {
            for prefix in CHECKPOINT_PREFIXES {
                tensors.insert(
                    format!("{prefix}{}", p.name),
                    (p.shape.clone(), vec![fill; p.numel()]),
                );
            }
        }
        let mut meta = BTreeMap::new();
        meta.insert("format".to_owned(), CHECKPOINT_FORMAT.to_owned());
        meta.insert("step".to_owned(), step.to_string());
        meta.insert("model".to_owned(), serde_json::to_string(&model()).unwrap());
        edit(&mut tensors, &mut meta);
        let refs = tensors
            .iter()
            .map(|(k, (shape, data))| (k.clone(), TensorRef { shape, data }))
            .collect();
        to_bytes(&refs, &meta)
    }

    fn refused(bytes: &[u8]) -> String {
        inspect(bytes, &model(), 10).unwrap_err().0
    }

    #[test]
    fn a_checkpoints_size_lies_in_its_models_range_and_not_in_a_larger_ones() {
        let whole = checkpoint(10, 0.5, |_, _| {}).len() as u64;
        let range = size_range(&model());
        assert!(range.contains(&whole), "{range:?} {whole}");
        // Weights, both moments: 12 bytes a parameter at the least.
        assert_eq!(*range.start(), 8 + 12 * model().parameter_count());
        let larger = ModelMeta::Mlp {
            inputs: 2,
            hidden: vec![300],
            classes: 2,
        };
        assert!(!size_range(&larger).contains(&whole));
    }

    #[test]
    fn a_sound_checkpoint_passes_and_is_written_the_same_twice() {
        let a = checkpoint(10, 0.5, |_, _| {});
        inspect(&a, &model(), 10).unwrap();
        assert_eq!(a, checkpoint(10, 0.5, |_, _| {}));
    }

    #[test]
    fn garbage_of_every_kind_is_refused_with_the_reason() {
        let good = checkpoint(10, 0.5, |_, _| {});
        // A header length of 2^60.
        let mut huge = good.clone();
        huge[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(refused(&huge).contains("safetensors"));
        // Truncated.
        assert!(refused(&good[..good.len() - 4]).contains("safetensors"));
        assert!(refused(b"").contains("safetensors"));
        // Another step, another model.
        assert!(refused(&checkpoint(20, 0.5, |_, _| {})).contains("step"));
        assert!(inspect(
            &good,
            &ModelMeta::Mlp {
                inputs: 2,
                hidden: vec![4],
                classes: 2
            },
            10
        )
        .unwrap_err()
        .0
        .contains("model"));
        // NaN weights, a negative second moment.
        assert!(refused(&checkpoint(10, f32::NAN, |_, _| {})).contains("finite"));
        let negative = checkpoint(10, 0.5, |t, _| {
            t.get_mut("adam_v.out.bias").unwrap().1[1] = -1.0;
        });
        assert!(refused(&negative).contains("adam_v.out.bias[1]"));
        // A mis-shaped tensor, a missing one, an extra one.
        let misshaped = checkpoint(10, 0.5, |t, _| {
            *t.get_mut("param.out.weight").unwrap() = (vec![2, 3], vec![0.5; 6]);
        });
        assert!(refused(&misshaped).contains("shape"));
        let missing = checkpoint(10, 0.5, |t, _| {
            t.remove("adam_m.layers.0.bias");
        });
        assert!(refused(&missing).contains("missing"));
        let extra = checkpoint(10, 0.5, |t, _| {
            t.insert("param.backdoor".into(), (vec![1], vec![0.0]));
        });
        assert!(refused(&extra).contains("backdoor"));
        let wrong_format = checkpoint(10, 0.5, |_, m| {
            m.insert("format".into(), "pickle".into());
        });
        assert!(refused(&wrong_format).contains("format"));
    }

    #[test]
    fn a_wrong_dtype_or_an_absurd_shape_is_refused() {
        let good = checkpoint(10, 0.5, |_, _| {});
        let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&good[8..8 + n]).unwrap();
        let with_header = |h: String| {
            let mut h = h;
            while !h.len().is_multiple_of(8) {
                h.push(' ');
            }
            let mut out = (h.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(&good[8 + n..]);
            out
        };
        // The same bytes read as I32: same sizes, wrong dtype.
        let i32s = with_header(
            header
                .replacen("\"F32\"", "\"I32\"", 1)
                .trim_end()
                .to_owned(),
        );
        assert!(refused(&i32s).contains("dtype"), "{}", refused(&i32s));
        // A 10¹²×10¹² tensor.
        let absurd = with_header(
            header
                .replacen(
                    "\"shape\":[2]",
                    "\"shape\":[1000000000000,1000000000000]",
                    1,
                )
                .trim_end()
                .to_owned(),
        );
        assert!(refused(&absurd).contains("safetensors") || refused(&absurd).contains("shape"));
    }
}
