//! What a parallel job's round moves over the network (DiLoCo): each
//! worker's **pseudo-gradient** (`θ − θ_w`, the round's global weights
//! minus the worker's) up, and the **outer update** (what the outer step
//! subtracts from the global weights) down. A worker keeps its full
//! checkpoint (weights and AdamW moments) and sends it only when the pool
//! asks for it; the outer step reads pseudo-gradients alone, and a worker
//! that holds the round's weights gets the next round's from the update.
//!
//! A delta file is a safetensors file, written by
//! [`crate::checkpoint::to_bytes_typed`] (equal values, equal bytes), with
//! string metadata `format` ([`PSEUDO_GRADIENT_FORMAT`] or
//! [`UPDATE_FORMAT`]), `compression`, `round` (the round the delta belongs
//! to) and `step` (the step the round ends at), plus what the trainer
//! records about model and data. For every parameter `NAME`:
//!
//! - `compression = "none"`: `delta.NAME`, f32, the parameter's shape;
//! - `compression = "int8"`: `levels.NAME`, i8, the parameter's shape, and
//!   `scales.NAME`, f32, one per block of 256 values: the codebook of
//!   [`crate::int8`], about a quarter of the bytes.
//!
//! [`encode`] and [`decode`] agree bit for bit: the values a delta
//! *stands for* ([`Delta::values`]) are the same at both ends, and are
//! what the outer step computes with.

use crate::checkpoint::{Tensors, Values};
use crate::int8::{self, Quantized};
use crate::spec::Compression;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;

/// Format tag of a worker's pseudo-gradient.
pub const PSEUDO_GRADIENT_FORMAT: &str = "gradpool-pseudo-gradient-v1";
/// Format tag of an outer step's update.
pub const UPDATE_FORMAT: &str = "gradpool-outer-update-v1";

/// Which way a delta travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaKind {
    /// A worker's `θ − θ_w`, up to the pool.
    PseudoGradient,
    /// The outer step's update, down to the workers.
    Update,
}

impl DeltaKind {
    /// The `format` tag of its files.
    pub fn format(self) -> &'static str {
        match self {
            DeltaKind::PseudoGradient => PSEUDO_GRADIENT_FORMAT,
            DeltaKind::Update => UPDATE_FORMAT,
        }
    }

    fn what(self) -> &'static str {
        match self {
            DeltaKind::PseudoGradient => "the pseudo-gradient",
            DeltaKind::Update => "the outer update",
        }
    }
}

/// Why a delta file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("{what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("{what}: {tensor} holds a value that is not finite")]
    NotFinite { what: &'static str, tensor: String },
}

/// A delta as it arrives.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    pub kind: DeltaKind,
    pub compression: Compression,
    pub round: u64,
    pub step: u64,
    /// `NAME` → the values the delta stands for: through the codebook
    /// when it is compressed.
    pub values: Tensors,
    /// What the trainer records about model and data.
    pub metadata: BTreeMap<String, String>,
}

/// Keys of the metadata the format sets itself.
const OWN_KEYS: [&str; 4] = ["format", "compression", "round", "step"];

/// Encodes `raw` (by parameter name) as a delta file, and returns what it
/// stands for at the other end. `metadata` is carried, but for the keys
/// the format sets.
pub fn encode(
    kind: DeltaKind,
    compression: Compression,
    (round, step): (u64, u64),
    raw: &Tensors,
    metadata: &BTreeMap<String, String>,
) -> Result<(Vec<u8>, Delta), DeltaError> {
    let what = kind.what();
    let mut meta: BTreeMap<String, String> = metadata
        .iter()
        .filter(|(k, _)| !OWN_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let carried = meta.clone();
    meta.insert("format".into(), kind.format().into());
    meta.insert("compression".into(), compression.as_str().into());
    meta.insert("round".into(), round.to_string());
    meta.insert("step".into(), step.to_string());
    let mut values = Tensors::new();
    let bytes = match compression {
        Compression::None => {
            if let Some((name, _)) = raw
                .iter()
                .find(|(_, (_, v))| v.iter().any(|x| !x.is_finite()))
            {
                return Err(DeltaError::NotFinite {
                    what,
                    tensor: name.clone(),
                });
            }
            let tensors = raw
                .iter()
                .map(|(name, (shape, v))| {
                    (format!("delta.{name}"), (shape.as_slice(), Values::F32(v)))
                })
                .collect();
            values.clone_from(raw);
            crate::checkpoint::to_bytes_typed(&tensors, &meta)
        }
        Compression::Int8 => {
            let mut quantized = BTreeMap::new();
            for (name, (shape, v)) in raw {
                let q = int8::quantize(v).map_err(|_| DeltaError::NotFinite {
                    what,
                    tensor: name.clone(),
                })?;
                values.insert(name.clone(), (shape.clone(), int8::dequantize(&q)));
                quantized.insert(name.clone(), (shape.clone(), vec![q.scales.len()], q));
            }
            let mut tensors = BTreeMap::new();
            for (name, (shape, scale_shape, q)) in &quantized {
                tensors.insert(
                    format!("levels.{name}"),
                    (shape.as_slice(), Values::I8(&q.levels)),
                );
                tensors.insert(
                    format!("scales.{name}"),
                    (scale_shape.as_slice(), Values::F32(&q.scales)),
                );
            }
            crate::checkpoint::to_bytes_typed(&tensors, &meta)
        }
    };
    Ok((
        bytes,
        Delta {
            kind,
            compression,
            round,
            step,
            values,
            metadata: carried,
        },
    ))
}

/// Reads a delta file of `kind`, refusing anything else: another format or
/// compression, a tensor of the wrong dtype or size, a level of −128, a
/// scale or value that is not finite, a tensor without its pair.
pub fn decode(bytes: &[u8], kind: DeltaKind) -> Result<Delta, DeltaError> {
    let what = kind.what();
    let bad = |reason: String| DeltaError::Malformed { what, reason };
    let file = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let mut metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    if metadata.get("format").map(String::as_str) != Some(kind.format()) {
        return Err(bad(format!("format is not {}", kind.format())));
    }
    let compression = match metadata.get("compression").map(String::as_str) {
        Some("none") => Compression::None,
        Some("int8") => Compression::Int8,
        other => {
            return Err(bad(format!(
                "compression {other:?} is neither none nor int8"
            )))
        }
    };
    let number = |key: &str| -> Result<u64, DeltaError> {
        metadata
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(format!("no {key} in its metadata")))
    };
    let (round, step) = (number("round")?, number("step")?);
    for key in OWN_KEYS {
        metadata.remove(key);
    }
    let mut f32s: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let mut levels: BTreeMap<String, (Vec<usize>, Vec<i8>)> = BTreeMap::new();
    for (name, view) in file.tensors() {
        match view.dtype() {
            Dtype::F32 => {
                let data: Vec<f32> = view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                if data.iter().any(|v| !v.is_finite()) {
                    return Err(DeltaError::NotFinite { what, tensor: name });
                }
                f32s.insert(name, (view.shape().to_vec(), data));
            }
            Dtype::I8 => {
                let data: Vec<i8> = view.data().iter().map(|&b| b as i8).collect();
                if data.contains(&i8::MIN) {
                    return Err(bad(format!("{name} holds the unused level -128")));
                }
                levels.insert(name, (view.shape().to_vec(), data));
            }
            other => return Err(bad(format!("{name} has dtype {other:?}"))),
        }
    }
    let values = match compression {
        Compression::None => {
            if let Some(name) = levels.keys().next() {
                return Err(bad(format!("unexpected tensor {name}")));
            }
            let mut values = Tensors::new();
            for (name, t) in f32s {
                let Some(param) = name.strip_prefix("delta.") else {
                    return Err(bad(format!("unexpected tensor {name}")));
                };
                values.insert(param.to_owned(), t);
            }
            values
        }
        Compression::Int8 => dequantized(levels, f32s, &bad)?,
    };
    Ok(Delta {
        kind,
        compression,
        round,
        step,
        values,
        metadata,
    })
}

/// The values int8 levels and their block scales stand for.
fn dequantized(
    levels: BTreeMap<String, (Vec<usize>, Vec<i8>)>,
    mut scales: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    bad: &dyn Fn(String) -> DeltaError,
) -> Result<Tensors, DeltaError> {
    let mut values = Tensors::new();
    for (name, (shape, levels)) in levels {
        let Some(param) = name.strip_prefix("levels.") else {
            return Err(bad(format!("unexpected tensor {name}")));
        };
        let Some((_, block_scales)) = scales.remove(&format!("scales.{param}")) else {
            return Err(bad(format!("{name} has no scales.{param}")));
        };
        if block_scales.len() != levels.len().div_ceil(int8::BLOCK) {
            return Err(bad(format!(
                "scales.{param} has {} scales for {} values",
                block_scales.len(),
                levels.len()
            )));
        }
        if let Some(s) = block_scales.iter().find(|s| **s < 0.0) {
            return Err(bad(format!("scales.{param} holds the negative scale {s}")));
        }
        let q = Quantized {
            scales: block_scales,
            levels,
        };
        values.insert(param.to_owned(), (shape, int8::dequantize(&q)));
    }
    if let Some(name) = scales.keys().next() {
        return Err(bad(format!("unexpected tensor {name}")));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> Tensors {
        let mut t = Tensors::new();
        let big: Vec<f32> = (0..600)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 1e-3)
            .collect();
        t.insert("w".into(), (vec![20, 30], big));
        t.insert("b".into(), (vec![3], vec![0.0, -0.5, 2.0]));
        t
    }

    fn meta() -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("model".into(), "{}".into());
        m.insert("format".into(), "replaced".into());
        m
    }

    #[test]
    fn uncompressed_deltas_arrive_unchanged() {
        let (bytes, sent) = encode(
            DeltaKind::PseudoGradient,
            Compression::None,
            (2, 30),
            &raw(),
            &meta(),
        )
        .unwrap();
        assert_eq!(sent.values, raw());
        let got = decode(&bytes, DeltaKind::PseudoGradient).unwrap();
        assert_eq!(got, sent);
        assert_eq!((got.round, got.step), (2, 30));
        assert_eq!(got.metadata.get("model").map(String::as_str), Some("{}"));
        assert!(!got.metadata.contains_key("format"));
        // Equal values, equal bytes.
        let again = encode(
            DeltaKind::PseudoGradient,
            Compression::None,
            (2, 30),
            &raw(),
            &meta(),
        );
        assert_eq!(again.unwrap().0, bytes);
    }

    #[test]
    fn int8_deltas_arrive_as_the_codebook_says_in_a_quarter_of_the_bytes() {
        let (plain, _) = encode(
            DeltaKind::Update,
            Compression::None,
            (0, 5),
            &raw(),
            &meta(),
        )
        .unwrap();
        let (bytes, sent) = encode(
            DeltaKind::Update,
            Compression::Int8,
            (0, 5),
            &raw(),
            &meta(),
        )
        .unwrap();
        let got = decode(&bytes, DeltaKind::Update).unwrap();
        assert_eq!(got.values, sent.values);
        for (name, (shape, v)) in raw() {
            let (s, arrived) = &got.values[&name];
            assert_eq!(s, &shape);
            assert_eq!(arrived, &int8::round_trip(&v).unwrap());
        }
        // The payload: 603 values as f32 against i8 plus 4 scales.
        assert!(
            bytes.len() < plain.len() / 2,
            "{} vs {}",
            bytes.len(),
            plain.len()
        );
    }

    #[test]
    fn a_delta_of_another_kind_or_with_bad_values_is_refused() {
        let (bytes, _) = encode(
            DeltaKind::PseudoGradient,
            Compression::Int8,
            (1, 2),
            &raw(),
            &meta(),
        )
        .unwrap();
        assert!(decode(&bytes, DeltaKind::Update).is_err());
        let mut nan = raw();
        nan.get_mut("b").unwrap().1[1] = f32::NAN;
        for c in [Compression::None, Compression::Int8] {
            let err = encode(DeltaKind::Update, c, (0, 1), &nan, &meta()).unwrap_err();
            assert!(err.to_string().contains("b holds a value"), "{err}");
        }
        // A level of -128 is not in the codebook.
        let levels: Vec<i8> = vec![-128, 0, 1];
        let scale = [1.0f32];
        let mut tensors = BTreeMap::new();
        let shape = [3usize];
        let one = [1usize];
        tensors.insert("levels.b".to_owned(), (&shape[..], Values::I8(&levels)));
        tensors.insert("scales.b".to_owned(), (&one[..], Values::F32(&scale)));
        let mut m = BTreeMap::new();
        m.insert("format".to_owned(), UPDATE_FORMAT.to_owned());
        m.insert("compression".to_owned(), "int8".to_owned());
        m.insert("round".to_owned(), "0".to_owned());
        m.insert("step".to_owned(), "1".to_owned());
        let forged = crate::checkpoint::to_bytes_typed(&tensors, &m);
        let err = decode(&forged, DeltaKind::Update).unwrap_err();
        assert!(err.to_string().contains("-128"), "{err}");
        // Levels without their scales.
        tensors.remove("scales.b");
        let levels = [0i8, 0, 1];
        tensors.insert("levels.b".to_owned(), (&shape[..], Values::I8(&levels)));
        let err = decode(
            &crate::checkpoint::to_bytes_typed(&tensors, &m),
            DeltaKind::Update,
        )
        .unwrap_err();
        assert!(err.to_string().contains("no scales.b"), "{err}");
        // Truncated.
        assert!(decode(&bytes[..bytes.len() - 1], DeltaKind::PseudoGradient).is_err());
    }
}
