//! Checkpoints and model files: safetensors written byte-deterministically.
//!
//! A checkpoint holds, for every parameter `NAME`, the tensors
//! `param.NAME`, `adam_m.NAME` and `adam_v.NAME` (f32), and metadata:
//! `format` ([`CHECKPOINT_FORMAT`]), `step`, `model` (JSON of
//! [`ModelMeta`]), `vocab` (text: JSON list of characters) or `csv` (JSON of
//! [`CsvInfo`](crate::CsvInfo)), and `spec_fingerprint` (blake3 over the
//! spec's training-relevant fields and the data's hash).
//!
//! The file is written by this module, not by the `safetensors` crate: the
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

/// Format tag of checkpoint files.
pub const CHECKPOINT_FORMAT: &str = "gradpool-checkpoint-v1";
/// Format tag of exported model files.
pub const MODEL_FORMAT: &str = "gradpool-model-v1";

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
    blake3::hash(canonical.as_bytes()).to_hex().to_string()
}

/// Serialises tensors and metadata as safetensors bytes, deterministically.
pub(crate) fn to_bytes(
    tensors: &BTreeMap<String, HostTensor>,
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
    for (name, t) in tensors {
        let len = t.data.len() * 4;
        let mut info = serde_json::Map::new();
        info.insert(
            "data_offsets".into(),
            serde_json::json!([offset, offset + len]),
        );
        info.insert("dtype".into(), serde_json::Value::String("F32".into()));
        info.insert("shape".into(), serde_json::json!(t.shape));
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
    for t in tensors.values() {
        for x in &t.data {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory, flushed, then renamed over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
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
    let bad = |r: String| TrainError::checkpoint(path, r);
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        bad(format!(
            "not a valid safetensors file (truncated or corrupt?): {e}"
        ))
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
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
    let mut parsed = read(path)?;
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
        Some(d) => ModelMeta::new(spec, d)?,
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
