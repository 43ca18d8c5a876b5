//! Exporting trained weights and sampling text from them.

use crate::checkpoint::{self, MODEL_FORMAT};
use crate::dataset::parse_vocab;
use crate::model::{Model, ModelMeta};
use crate::rng::Rng;
use crate::TrainError;
use candle_core::{Device, Tensor};
use gradpool_core::spec::JobSpec;
use std::path::Path;

/// Writes a weights-only model file (safetensors) from a checkpoint of
/// `spec`: the model tensors (named like the parameters) plus the
/// checkpoint's metadata (`model`, `vocab` or `csv`, `step`,
/// `spec_fingerprint`, `data_blake3`) with `format` = [`MODEL_FORMAT`]. The
/// checkpoint is fully validated against the spec first.
pub fn export_model(spec: &JobSpec, checkpoint: &Path, out: &Path) -> Result<(), TrainError> {
    let parsed = checkpoint::read(checkpoint)?;
    let mut md = parsed.metadata.clone();
    // A checkpoint, or a parallel job's global checkpoint.
    let (meta, _, params) = crate::parallel::params_of(spec, None, parsed, checkpoint)?;
    md.insert("format".into(), MODEL_FORMAT.into());
    for key in ["round", "workers"] {
        md.remove(key);
    }
    let tensors = crate::parallel::host_tensors(&meta, params);
    checkpoint::write_atomic(out, &checkpoint::to_bytes(&tensors, &md))
}

/// Loads a model file written by [`export_model`] (config and vocabulary
/// come from its metadata) and generates `tokens` characters after `prompt`.
/// `temperature` 0 is greedy; otherwise sampling is seeded by `seed`. GPT
/// models only. Returns the generated characters (without the prompt).
pub fn sample(
    model: &Path,
    prompt: &str,
    tokens: usize,
    temperature: f64,
    seed: u64,
    device: &Device,
) -> Result<String, TrainError> {
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(TrainError::Sample(format!(
            "temperature must be a number >= 0, got {temperature}"
        )));
    }
    let (net, parsed) = load(model, device)?;
    let ModelMeta::Gpt {
        block_size,
        vocab_size,
        ..
    } = net.meta
    else {
        return Err(TrainError::Sample(
            "sampling needs a GPT model; this file holds an MLP classifier".into(),
        ));
    };
    let vocab = vocab_of(model, &parsed, vocab_size)?;
    let mut ids = encode(&vocab, prompt, "prompt", TrainError::Sample)?;
    if ids.is_empty() {
        // An empty prompt starts from a newline if the vocab has one, else
        // from the first character.
        ids.push(vocab.binary_search(&'\n').unwrap_or(0) as u32);
    }
    let mut rng = Rng::derive(seed, "sample", 0);
    let mut out = String::new();
    for _ in 0..tokens {
        let ctx = &ids[ids.len().saturating_sub(block_size)..];
        let input = Tensor::from_slice(ctx, (1, ctx.len()), device)?;
        let logits = net.gpt_logits(&input)?.detach();
        let last = logits
            .get(ctx.len() - 1)?
            .to_dtype(candle_core::DType::F64)?
            .to_vec1::<f64>()?;
        let next = if temperature == 0.0 {
            argmax(&last)
        } else {
            let max = last.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
            let w: Vec<f64> = last
                .iter()
                .map(|&v| ((v - max) / temperature).exp())
                .collect();
            let total: f64 = w.iter().sum();
            let mut u = rng.next_f64() * total;
            let mut pick = w.len() - 1;
            for (i, &wi) in w.iter().enumerate() {
                if u < wi {
                    pick = i;
                    break;
                }
                u -= wi;
            }
            pick
        };
        ids.push(next as u32);
        out.push(vocab[next]);
    }
    Ok(out)
}

/// Opens a model file written by [`export_model`]: the model, and the
/// file's metadata (its vocabulary or CSV features).
fn load(model: &Path, device: &Device) -> Result<(Model, checkpoint::Parsed), TrainError> {
    let mut parsed = checkpoint::read(model)?;
    let format = parsed.meta(model, "format")?;
    if format != MODEL_FORMAT {
        return Err(TrainError::checkpoint(
            model,
            format!("format is {format:?}, expected {MODEL_FORMAT:?} (export a checkpoint first)"),
        ));
    }
    let meta: ModelMeta = serde_json::from_str(parsed.meta(model, "model")?)
        .map_err(|e| TrainError::checkpoint(model, format!("bad model metadata: {e}")))?;
    let values = parsed.take_params(model, &meta, "")?;
    parsed.no_extra(model)?;
    Ok((Model::from_values(meta, values, device)?, parsed))
}

/// A GPT model file's vocabulary, checked against its config.
fn vocab_of(
    model: &Path,
    parsed: &checkpoint::Parsed,
    vocab_size: usize,
) -> Result<Vec<char>, TrainError> {
    let vocab =
        parse_vocab(parsed.meta(model, "vocab")?).map_err(|e| TrainError::checkpoint(model, e))?;
    if vocab.len() != vocab_size {
        return Err(TrainError::checkpoint(
            model,
            format!(
                "vocab has {} entries, model expects {vocab_size}",
                vocab.len()
            ),
        ));
    }
    Ok(vocab)
}

/// `text` as token ids; a character outside the vocabulary is refused,
/// naming it.
fn encode(
    vocab: &[char],
    text: &str,
    what: &str,
    error: fn(String) -> TrainError,
) -> Result<Vec<u32>, TrainError> {
    let mut unknown: Vec<char> = text
        .chars()
        .filter(|c| vocab.binary_search(c).is_err())
        .collect();
    unknown.sort_unstable();
    unknown.dedup();
    if !unknown.is_empty() {
        return Err(error(format!(
            "{what} has characters not in the model's vocabulary: {}",
            unknown
                .iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(text
        .chars()
        .filter_map(|c| vocab.binary_search(&c).ok().map(|i| i as u32))
        .collect())
}

/// What a model's logits are asked for.
#[derive(Debug, Clone, Copy)]
pub enum LogitsInput<'a> {
    /// Text, for a GPT: the logits at each of its characters (at most
    /// `block_size` of them).
    Text(&'a str),
    /// Rows of raw feature values, for an MLP: standardised as in
    /// training, then one row of class logits each.
    Features(&'a [Vec<f32>]),
}

/// The logits of a model file written by [`export_model`] on `input`: one
/// row per character of the text (GPT) or per feature row (MLP).
pub fn logits(
    model: &Path,
    input: LogitsInput<'_>,
    device: &Device,
) -> Result<Vec<Vec<f32>>, TrainError> {
    let (net, parsed) = load(model, device)?;
    let out = match (&net.meta, input) {
        (
            ModelMeta::Gpt {
                block_size,
                vocab_size,
                ..
            },
            LogitsInput::Text(text),
        ) => {
            let ids = encode(
                &vocab_of(model, &parsed, *vocab_size)?,
                text,
                "the text",
                TrainError::Input,
            )?;
            if ids.is_empty() || ids.len() > *block_size {
                return Err(TrainError::Input(format!(
                    "the text has {} characters; the model takes 1 to {block_size}",
                    ids.len()
                )));
            }
            let input = Tensor::from_slice(&ids, (1, ids.len()), device)?;
            net.gpt_logits(&input)?
        }
        (ModelMeta::Mlp { inputs, .. }, LogitsInput::Features(rows)) => {
            let info: crate::CsvInfo = serde_json::from_str(parsed.meta(model, "csv")?)
                .map_err(|e| TrainError::checkpoint(model, format!("bad csv metadata: {e}")))?;
            let mut flat = Vec::with_capacity(rows.len() * inputs);
            for (i, row) in rows.iter().enumerate() {
                if row.len() != *inputs {
                    return Err(TrainError::Input(format!(
                        "row {} has {} features; the model takes {inputs} ({})",
                        i + 1,
                        row.len(),
                        info.features.join(", ")
                    )));
                }
                for ((v, m), s) in row.iter().zip(&info.mean).zip(&info.std) {
                    flat.push((v - m) / s);
                }
            }
            let x = Tensor::from_vec(flat, (rows.len(), *inputs), device)?;
            net.mlp_logits(&x)?
        }
        (ModelMeta::Gpt { .. }, LogitsInput::Features(_)) => {
            return Err(TrainError::Input(
                "this file holds a GPT: give it text, not features".into(),
            ))
        }
        (ModelMeta::Mlp { .. }, LogitsInput::Text(_)) => {
            return Err(TrainError::Input(
                "this file holds an MLP classifier: give it feature rows, not text".into(),
            ))
        }
        (ModelMeta::Container { .. }, _) => {
            return Err(TrainError::Input(
                "a container job's model is its script's: load it in PyTorch".into(),
            ))
        }
    };
    Ok(out
        .detach()
        .to_dtype(candle_core::DType::F32)?
        .to_vec2::<f32>()?)
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}
