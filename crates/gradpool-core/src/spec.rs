//! The job spec: what a customer asks for, in TOML.
//!
//! ```toml
//! name = "shakespeare-gpt"
//!
//! [model]
//! kind = "gpt"
//! n_layer = 4
//! n_head = 4
//! n_embd = 128
//! block_size = 64
//!
//! [data]
//! format = "text"
//! file = "../data/tinyshakespeare.txt"
//!
//! [train]
//! seed = 1337
//! steps = 300
//! batch_size = 12
//! checkpoint_every = 50
//! lr = 0.001
//! ```
//!
//! A `[parallel]` table makes the job train on several workers at once
//! (DiLoCo: each worker takes `inner_steps` steps from the same global
//! checkpoint, then an outer step averages their changes):
//!
//! ```toml
//! [parallel]
//! workers = 4
//! inner_steps = 50
//! outer_lr = 0.7          # default
//! outer_momentum = 0.9    # default, Nesterov
//! compression = "none"    # or "int8"
//! min_workers = 3         # default: workers
//! ```
//!
//! Parsing refuses unknown fields and wrong types with the field's full path
//! (`train.lr: invalid type: string "fast", expected f64`), then validates
//! values ([`SpecError::Invalid`] names the field and what was expected).
//! Everything a provider could choose is fixed here: that is what makes
//! training deterministic and checkable.

use crate::money::Piconero;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A validated job spec.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub name: String,
    pub model: ModelConfig,
    pub data: DataSpec,
    pub train: TrainConfig,
    pub resources: Resources,
    pub verification: VerificationLevel,
    pub budget: Budget,
    /// Many workers at once; `None` trains segment after segment.
    pub parallel: Option<ParallelConfig>,
}

/// A parallel job (DiLoCo). Round `r` starts from global checkpoint `r`:
/// every worker trains `inner_steps` steps of its own shard of the data
/// from it (steps `[r·H, (r+1)·H)` of the schedule, the last round
/// possibly shorter), then the outer step averages the workers'
/// pseudo-gradients (global minus worker weights) and applies them with
/// Nesterov momentum, giving global checkpoint `r + 1`. `train.steps`
/// counts each worker's steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ParallelConfig {
    /// Worker slots, 1–64. Worker `w` trains on shard `w` of the data.
    pub workers: u32,
    /// `H`: each worker's steps per round.
    pub inner_steps: u64,
    /// The outer step's learning rate.
    pub outer_lr: f64,
    /// The outer step's Nesterov momentum, in [0, 1).
    pub outer_momentum: f64,
    /// How pseudo-gradients and outer updates travel.
    pub compression: Compression,
    /// A round may close with fewer workers than `workers`, down to this.
    pub min_workers: u32,
}

impl ParallelConfig {
    /// Rounds of a job of `steps` steps: `⌈steps / inner_steps⌉`.
    pub fn rounds(&self, steps: u64) -> u64 {
        steps.div_ceil(self.inner_steps)
    }

    /// Steps `[start, end)` of round `round` of a job of `steps` steps.
    pub fn round_steps(&self, round: u64, steps: u64) -> (u64, u64) {
        let start = round.saturating_mul(self.inner_steps).min(steps);
        (start, start.saturating_add(self.inner_steps).min(steps))
    }
}

/// How a parallel job's transfers are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// f32, as trained.
    #[default]
    None,
    /// The fixed int8 codebook of [`crate::int8`]: blocks of 256 values
    /// with one f32 scale each, about a quarter of the bytes.
    Int8,
}

impl Compression {
    /// The spec's spelling: `none` or `int8`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Int8 => "int8",
        }
    }
}

/// The model to train.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Gpt(GptConfig),
    Mlp(MlpConfig),
}

/// A character-level GPT: token and position embeddings, `n_layer` pre-norm
/// blocks of causal self-attention and a GELU MLP, a final LayerNorm and a
/// linear head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub block_size: usize,
}

/// An MLP classifier for tabular data: ReLU hidden layers of the given widths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlpConfig {
    pub hidden: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// UTF-8 text, modelled character by character.
    Text,
    /// CSV with a header row: numeric feature columns and one label column.
    Csv,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    pub format: DataFormat,
    /// The data file, relative to the spec file. `--data` overrides it.
    pub file: Option<PathBuf>,
    /// For CSV: the column holding the class label.
    pub label_column: Option<String>,
    /// If set, the data must have this sha256.
    pub sha256: Option<crate::Sha256Hex>,
    /// Fraction of the examples held out for evaluation: the last
    /// characters of a text (default 0.1), the last rows of a CSV (default
    /// 0.2). Every checkpoint reports its loss on them.
    pub eval_fraction: f64,
}

/// Optimisation: AdamW with linear warm-up, cosine decay and gradient
/// clipping, with every choice fixed by the spec.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub seed: u64,
    pub steps: u64,
    pub batch_size: usize,
    /// Steps per segment: a checkpoint is committed every this many steps.
    pub checkpoint_every: u64,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this value; `None` disables clipping.
    pub grad_clip: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceRequest {
    /// Any device the pool has.
    #[default]
    Any,
    Cpu,
    Cuda,
}

impl DeviceRequest {
    /// The spec's spelling: `any`, `cpu` or `cuda`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceRequest::Any => "any",
            DeviceRequest::Cpu => "cpu",
            DeviceRequest::Cuda => "cuda",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    pub device: DeviceRequest,
    /// Minimum device memory, in GiB.
    pub min_memory_gib: u32,
    /// Train only on providers whose owners declared this region (in
    /// their provider config): keeps a parallel job's workers close.
    pub region: Option<String>,
}

/// What is wrong with a region name, if anything: 1 to 32 characters of
/// `a`–`z`, `0`–`9` and `-` (e.g. `eu-west`, `us-east-2`). The same rule
/// holds in a job spec (`resources.region`) and a provider config.
pub fn region_problem(region: &str) -> Option<String> {
    let ok = (1..=32).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (!ok).then(|| {
        format!("1 to 32 characters of a-z, 0-9 and '-' (e.g. \"eu-west\"), got {region:?}")
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerificationLevel {
    None,
    #[default]
    Standard,
    Paranoid,
}

impl VerificationLevel {
    /// The spec's spelling: `none`, `standard` or `paranoid`.
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationLevel::None => "none",
            VerificationLevel::Standard => "standard",
            VerificationLevel::Paranoid => "paranoid",
        }
    }
}

impl std::str::FromStr for VerificationLevel {
    type Err = crate::state::UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(VerificationLevel::None),
            "standard" => Ok(VerificationLevel::Standard),
            "paranoid" => Ok(VerificationLevel::Paranoid),
            other => Err(crate::state::UnknownState {
                kind: "verification level",
                value: other.to_owned(),
            }),
        }
    }
}

impl TryFrom<String> for VerificationLevel {
    type Error = crate::state::UnknownState;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// What the customer is willing to pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    pub max_price_per_hour: Option<Piconero>,
    pub total: Option<Piconero>,
}

/// Why a spec was refused. Every variant names the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Not TOML, an unknown field, a missing field or a wrong type.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// Well-formed but a value is out of range or inconsistent.
    #[error("{field}: {expected}")]
    Invalid { field: String, expected: String },
}

impl SpecError {
    /// The dotted path of the field the error is about (`train.lr`).
    pub fn field(&self) -> &str {
        match self {
            SpecError::Parse { path, .. } => path,
            SpecError::Invalid { field, .. } => field,
        }
    }
}

fn invalid(field: &str, expected: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.to_owned(),
        expected: expected.into(),
    }
}

// The TOML schema. Kept flat (no internally tagged enums) so that serde can
// report the exact path of an unknown or mistyped field.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    #[serde(default = "default_runtime")]
    runtime: String,
    model: RawModel,
    data: RawData,
    train: RawTrain,
    #[serde(default)]
    resources: Resources,
    #[serde(default)]
    verification: RawVerification,
    #[serde(default)]
    budget: RawBudget,
    parallel: Option<RawParallel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParallel {
    workers: u32,
    inner_steps: u64,
    #[serde(default = "default_outer_lr")]
    outer_lr: f64,
    #[serde(default = "default_outer_momentum")]
    outer_momentum: f64,
    #[serde(default)]
    compression: Compression,
    min_workers: Option<u32>,
}

fn default_outer_lr() -> f64 {
    0.7
}
fn default_outer_momentum() -> f64 {
    0.9
}

/// The most workers a parallel job may have.
pub const MAX_WORKERS: u32 = 64;

impl RawParallel {
    fn validate(self, steps: u64) -> Result<ParallelConfig, SpecError> {
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return Err(invalid(
                "parallel.workers",
                format!("an integer from 1 to {MAX_WORKERS}, got {}", self.workers),
            ));
        }
        let longest = steps.min(MAX_CHECKPOINT_EVERY);
        if !(1..=longest).contains(&self.inner_steps) {
            return Err(invalid(
                "parallel.inner_steps",
                format!(
                    "an integer from 1 to {longest} (train.steps, and at most {MAX_CHECKPOINT_EVERY}), got {}",
                    self.inner_steps
                ),
            ));
        }
        if !(self.outer_lr.is_finite() && self.outer_lr > 0.0 && self.outer_lr <= 10.0) {
            return Err(invalid(
                "parallel.outer_lr",
                format!("a number above 0 and at most 10, got {}", self.outer_lr),
            ));
        }
        if !(self.outer_momentum.is_finite() && (0.0..1.0).contains(&self.outer_momentum)) {
            return Err(invalid(
                "parallel.outer_momentum",
                format!("a number in [0, 1), got {}", self.outer_momentum),
            ));
        }
        let min_workers = self.min_workers.unwrap_or(self.workers);
        if !(1..=self.workers).contains(&min_workers) {
            return Err(invalid(
                "parallel.min_workers",
                format!(
                    "an integer from 1 to parallel.workers ({}), got {min_workers}",
                    self.workers
                ),
            ));
        }
        Ok(ParallelConfig {
            workers: self.workers,
            inner_steps: self.inner_steps,
            outer_lr: self.outer_lr,
            outer_momentum: self.outer_momentum,
            compression: self.compression,
            min_workers,
        })
    }
}

fn default_runtime() -> String {
    "native".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    kind: ModelKind,
    n_layer: Option<usize>,
    n_head: Option<usize>,
    n_embd: Option<usize>,
    block_size: Option<usize>,
    hidden: Option<Vec<usize>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ModelKind {
    Gpt,
    Mlp,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawData {
    format: DataFormat,
    file: Option<PathBuf>,
    label_column: Option<String>,
    sha256: Option<String>,
    eval_fraction: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrain {
    seed: u64,
    steps: u64,
    batch_size: usize,
    checkpoint_every: Option<u64>,
    lr: f64,
    min_lr: Option<f64>,
    warmup_steps: Option<u64>,
    #[serde(default = "default_weight_decay")]
    weight_decay: f64,
    #[serde(default = "default_beta1")]
    beta1: f64,
    #[serde(default = "default_beta2")]
    beta2: f64,
    #[serde(default = "default_eps")]
    eps: f64,
    #[serde(default = "default_grad_clip")]
    grad_clip: f64,
}

fn default_weight_decay() -> f64 {
    0.1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.99
}
fn default_eps() -> f64 {
    1e-8
}
fn default_grad_clip() -> f64 {
    1.0
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawVerification {
    #[serde(default)]
    level: VerificationLevel,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    max_price_xmr_per_hour: Option<String>,
    total_xmr: Option<String>,
}

/// Upper bounds that keep one job within what a provider can hold.
const MAX_STEPS: u64 = 10_000_000;
/// The longest segment: its loss trace travels in one commit request.
pub const MAX_CHECKPOINT_EVERY: u64 = 100_000;
const MAX_WIDTH: usize = 16_384;
const MAX_LAYERS: usize = 256;
const MAX_BLOCK: usize = 65_536;
const MAX_BATCH: usize = 65_536;

impl JobSpec {
    /// Parses and validates a spec from TOML text.
    pub fn from_toml_str(text: &str) -> Result<JobSpec, SpecError> {
        let de = toml::Deserializer::new(text);
        let raw: RawSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().trim().to_owned();
            let message = match inner.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    format!("{message} (line {line})")
                }
                None => message,
            };
            SpecError::Parse {
                path: if path == "." { "spec".to_owned() } else { path },
                message,
            }
        })?;
        raw.validate()
    }

    /// Reads a spec file; relative `data.file` paths are resolved against the
    /// spec's directory.
    pub fn from_file(path: &std::path::Path) -> Result<JobSpec, SpecFileError> {
        let text = std::fs::read_to_string(path).map_err(|error| SpecFileError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut spec = JobSpec::from_toml_str(&text).map_err(|error| SpecFileError::Spec {
            path: path.to_owned(),
            error,
        })?;
        if let (Some(file), Some(dir)) = (&spec.data.file, path.parent()) {
            if file.is_relative() {
                spec.data.file = Some(dir.join(file));
            }
        }
        Ok(spec)
    }

    /// Number of segments: `ceil(steps / checkpoint_every)`.
    pub fn segment_count(&self) -> u32 {
        self.train.steps.div_ceil(self.train.checkpoint_every) as u32
    }

    /// Steps `[start, end)` of segment `index`.
    pub fn segment_steps(&self, index: u32) -> (u64, u64) {
        let k = self.train.checkpoint_every;
        let start = u64::from(index) * k;
        (start, (start + k).min(self.train.steps))
    }

    /// An estimate of the floating-point operations of one training step
    /// (forward and backward), from which the pool caps the time it bills
    /// for a segment. For a GPT: `6 × parameters × tokens` for the dense
    /// layers plus `12 × layers × block² × width` per sequence for
    /// attention, with a vocabulary of at most [`MAX_VOCAB_ESTIMATE`]
    /// characters. `None` for an MLP, whose input width depends on the data.
    pub fn flops_per_step(&self) -> Option<f64> {
        match &self.model {
            ModelConfig::Gpt(g) => {
                let (l, d, t) = (g.n_layer as f64, g.n_embd as f64, g.block_size as f64);
                let params = self.parameter_estimate()?;
                let batch = self.train.batch_size as f64;
                Some(batch * (6.0 * params * t + 12.0 * l * t * t * d))
            }
            ModelConfig::Mlp(_) => None,
        }
    }

    /// An estimate of the model's parameter count: for a GPT, `12 × layers
    /// × width²` for the blocks plus the embeddings and output layer, with
    /// a vocabulary of at most [`MAX_VOCAB_ESTIMATE`] characters. `None`
    /// for an MLP, whose input width depends on the data.
    pub fn parameter_estimate(&self) -> Option<f64> {
        match &self.model {
            ModelConfig::Gpt(g) => {
                let (l, d, t) = (g.n_layer as f64, g.n_embd as f64, g.block_size as f64);
                Some(12.0 * l * d * d + 2.0 * MAX_VOCAB_ESTIMATE * d + t * d)
            }
            ModelConfig::Mlp(_) => None,
        }
    }
}

/// The vocabulary size assumed by [`JobSpec::flops_per_step`]: a
/// character-level model of text rarely sees more distinct characters.
pub const MAX_VOCAB_ESTIMATE: f64 = 256.0;

/// A spec file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum SpecFileError {
    #[error("cannot read job spec {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("job spec {path} refused: {error}")]
    Spec { path: PathBuf, error: SpecError },
}

impl RawSpec {
    fn validate(self) -> Result<JobSpec, SpecError> {
        if self.name.trim().is_empty() || self.name.len() > 128 {
            return Err(invalid(
                "name",
                "a non-empty name of at most 128 characters",
            ));
        }
        if self.runtime != "native" {
            return Err(invalid(
                "runtime",
                format!(
                    "\"native\" (the only runtime this pool runs), got {:?}",
                    self.runtime
                ),
            ));
        }
        let model = self.model.validate()?;
        let data = self.data.validate(&model)?;
        check_steps(self.train.steps)?;
        let parallel = self
            .parallel
            .map(|p| p.validate(self.train.steps))
            .transpose()?;
        let train = self.train.validate(parallel.as_ref())?;
        let budget = Budget {
            max_price_per_hour: parse_amount(
                "budget.max_price_xmr_per_hour",
                self.budget.max_price_xmr_per_hour,
            )?,
            total: parse_amount("budget.total_xmr", self.budget.total_xmr)?,
        };
        if let Some(problem) = self.resources.region.as_deref().and_then(region_problem) {
            return Err(invalid("resources.region", problem));
        }
        Ok(JobSpec {
            name: self.name,
            model,
            data,
            train,
            resources: self.resources,
            verification: self.verification.level,
            budget,
            parallel,
        })
    }
}

fn parse_amount(field: &str, value: Option<String>) -> Result<Option<Piconero>, SpecError> {
    value
        .map(|v| Piconero::from_xmr_str(&v).map_err(|e| invalid(field, e.to_string())))
        .transpose()
}

fn require<T>(field: &str, kind: &str, value: Option<T>) -> Result<T, SpecError> {
    value.ok_or_else(|| invalid(field, format!("required for model kind \"{kind}\"")))
}

fn in_range(field: &str, value: usize, lo: usize, hi: usize) -> Result<usize, SpecError> {
    if (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            field,
            format!("an integer from {lo} to {hi}, got {value}"),
        ))
    }
}

impl RawModel {
    fn validate(self) -> Result<ModelConfig, SpecError> {
        match self.kind {
            ModelKind::Gpt => {
                if self.hidden.is_some() {
                    return Err(invalid("model.hidden", "only for model kind \"mlp\""));
                }
                let n_layer = in_range(
                    "model.n_layer",
                    require("model.n_layer", "gpt", self.n_layer)?,
                    1,
                    MAX_LAYERS,
                )?;
                let n_head = in_range(
                    "model.n_head",
                    require("model.n_head", "gpt", self.n_head)?,
                    1,
                    1024,
                )?;
                let n_embd = in_range(
                    "model.n_embd",
                    require("model.n_embd", "gpt", self.n_embd)?,
                    1,
                    MAX_WIDTH,
                )?;
                let block_size = in_range(
                    "model.block_size",
                    require("model.block_size", "gpt", self.block_size)?,
                    1,
                    MAX_BLOCK,
                )?;
                if n_embd % n_head != 0 {
                    return Err(invalid(
                        "model.n_embd",
                        format!("a multiple of model.n_head ({n_head}), got {n_embd}"),
                    ));
                }
                Ok(ModelConfig::Gpt(GptConfig {
                    n_layer,
                    n_head,
                    n_embd,
                    block_size,
                }))
            }
            ModelKind::Mlp => {
                for (field, present) in [
                    ("model.n_layer", self.n_layer.is_some()),
                    ("model.n_head", self.n_head.is_some()),
                    ("model.n_embd", self.n_embd.is_some()),
                    ("model.block_size", self.block_size.is_some()),
                ] {
                    if present {
                        return Err(invalid(field, "only for model kind \"gpt\""));
                    }
                }
                let hidden = require("model.hidden", "mlp", self.hidden)?;
                if hidden.is_empty() || hidden.len() > 64 {
                    return Err(invalid("model.hidden", "a list of 1 to 64 layer widths"));
                }
                for (i, &w) in hidden.iter().enumerate() {
                    in_range(&format!("model.hidden[{i}]"), w, 1, MAX_WIDTH)?;
                }
                Ok(ModelConfig::Mlp(MlpConfig { hidden }))
            }
        }
    }
}

impl RawData {
    fn validate(self, model: &ModelConfig) -> Result<DataSpec, SpecError> {
        match (model, self.format) {
            (ModelConfig::Gpt(_), DataFormat::Text) | (ModelConfig::Mlp(_), DataFormat::Csv) => {}
            (ModelConfig::Gpt(_), DataFormat::Csv) => {
                return Err(invalid("data.format", "\"text\" for model kind \"gpt\""))
            }
            (ModelConfig::Mlp(_), DataFormat::Text) => {
                return Err(invalid("data.format", "\"csv\" for model kind \"mlp\""))
            }
        }
        if self.format == DataFormat::Csv && self.label_column.is_none() {
            return Err(invalid(
                "data.label_column",
                "required for data format \"csv\"",
            ));
        }
        if self.format == DataFormat::Text && self.label_column.is_some() {
            return Err(invalid("data.label_column", "only for data format \"csv\""));
        }
        let sha256 = self
            .sha256
            .map(|s| {
                s.parse()
                    .map_err(|e: crate::hash::BadDigest| invalid("data.sha256", e.to_string()))
            })
            .transpose()?;
        let eval_fraction = self.eval_fraction.unwrap_or(match self.format {
            DataFormat::Text => 0.1,
            DataFormat::Csv => 0.2,
        });
        if !(0.0..0.9).contains(&eval_fraction) {
            return Err(invalid(
                "data.eval_fraction",
                format!("a number from 0 to 0.9, got {eval_fraction}"),
            ));
        }
        Ok(DataSpec {
            format: self.format,
            file: self.file,
            label_column: self.label_column,
            sha256,
            eval_fraction,
        })
    }
}

fn check_steps(steps: u64) -> Result<(), SpecError> {
    if (1..=MAX_STEPS).contains(&steps) {
        Ok(())
    } else {
        Err(invalid(
            "train.steps",
            format!("an integer from 1 to {MAX_STEPS}, got {steps}"),
        ))
    }
}

impl RawTrain {
    /// Steps per segment: the spec's, or a parallel job's inner steps (a
    /// worker commits once per round).
    fn checkpoint_every(&self, parallel: Option<&ParallelConfig>) -> Result<u64, SpecError> {
        let longest = self.steps.min(MAX_CHECKPOINT_EVERY);
        match (self.checkpoint_every, parallel) {
            (None, Some(p)) => Ok(p.inner_steps),
            (Some(k), Some(p)) if k != p.inner_steps => Err(invalid(
                "train.checkpoint_every",
                format!(
                    "with [parallel] a worker commits after each round's parallel.inner_steps ({}) \
                     steps: leave it out or set it to {}, got {k}",
                    p.inner_steps, p.inner_steps
                ),
            )),
            (Some(k), _) if (1..=longest).contains(&k) => Ok(k),
            (Some(k), _) => Err(invalid(
                "train.checkpoint_every",
                format!(
                    "an integer from 1 to {longest} (train.steps, and at most {MAX_CHECKPOINT_EVERY}), got {k}"
                ),
            )),
            (None, None) => Err(invalid(
                "train.checkpoint_every",
                format!(
                    "required: the steps per segment, an integer from 1 to {longest} (a checkpoint \
                     is committed after each)"
                ),
            )),
        }
    }

    fn validate(self, parallel: Option<&ParallelConfig>) -> Result<TrainConfig, SpecError> {
        check_steps(self.steps)?;
        in_range("train.batch_size", self.batch_size, 1, MAX_BATCH)?;
        let checkpoint_every = self.checkpoint_every(parallel)?;
        let positive = |field: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(invalid(field, format!("a positive number, got {v}")))
            }
        };
        let lr = positive("train.lr", self.lr)?;
        let min_lr = self.min_lr.unwrap_or(lr / 10.0);
        if !(min_lr.is_finite() && (0.0..=lr).contains(&min_lr)) {
            return Err(invalid(
                "train.min_lr",
                format!("a number from 0 to train.lr ({lr}), got {min_lr}"),
            ));
        }
        let warmup_steps = self.warmup_steps.unwrap_or(0);
        if warmup_steps > self.steps {
            return Err(invalid(
                "train.warmup_steps",
                format!("at most train.steps ({}), got {warmup_steps}", self.steps),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(invalid(
                "train.weight_decay",
                format!("a number >= 0, got {}", self.weight_decay),
            ));
        }
        for (field, b) in [("train.beta1", self.beta1), ("train.beta2", self.beta2)] {
            if !(b.is_finite() && (0.0..1.0).contains(&b)) {
                return Err(invalid(field, format!("a number in [0, 1), got {b}")));
            }
        }
        let eps = positive("train.eps", self.eps)?;
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return Err(invalid(
                "train.grad_clip",
                format!(
                    "a number >= 0 (0 disables clipping), got {}",
                    self.grad_clip
                ),
            ));
        }
        Ok(TrainConfig {
            seed: self.seed,
            steps: self.steps,
            batch_size: self.batch_size,
            checkpoint_every,
            lr,
            min_lr,
            warmup_steps,
            weight_decay: self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            eps,
            grad_clip: (self.grad_clip > 0.0).then_some(self.grad_clip),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "tiny"
[model]
kind = "gpt"
n_layer = 2
n_head = 2
n_embd = 32
block_size = 16
[data]
format = "text"
[train]
seed = 7
steps = 100
batch_size = 4
checkpoint_every = 30
lr = 0.001
"#;

    #[test]
    fn parses_a_good_spec_with_defaults() {
        let spec = JobSpec::from_toml_str(GOOD).unwrap();
        assert_eq!(spec.segment_count(), 4);
        assert_eq!(spec.segment_steps(3), (90, 100));
        assert_eq!(spec.train.min_lr, 0.0001);
        assert_eq!(spec.train.grad_clip, Some(1.0));
        assert_eq!(spec.verification, VerificationLevel::Standard);
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let text = GOOD.replace("lr = 0.001", "lr = 0.001\nlearning_rate = 3");
        let err = JobSpec::from_toml_str(&text).unwrap_err();
        assert_eq!(err.field(), "train.learning_rate");
        let msg = err.to_string();
        assert!(msg.contains("unknown field `learning_rate`"), "{msg}");
        assert!(msg.contains("expected one of"), "{msg}");
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let text = GOOD.replace("lr = 0.001", "lr = \"fast\"");
        let err = JobSpec::from_toml_str(&text).unwrap_err();
        assert_eq!(err.field(), "train.lr", "{err}");
        assert!(err.to_string().contains("expected f64"), "{err}");
    }

    #[test]
    fn inconsistent_values_are_named() {
        let text = GOOD.replace("n_embd = 32", "n_embd = 33");
        let err = JobSpec::from_toml_str(&text).unwrap_err();
        assert_eq!(err.field(), "model.n_embd");
        let text = GOOD.replace("checkpoint_every = 30", "checkpoint_every = 0");
        assert_eq!(
            JobSpec::from_toml_str(&text).unwrap_err().field(),
            "train.checkpoint_every"
        );
        let text = GOOD.replace("block_size = 16", "");
        assert_eq!(
            JobSpec::from_toml_str(&text).unwrap_err().field(),
            "model.block_size"
        );
        let text = GOOD.replace("format = \"text\"", "format = \"csv\"");
        assert_eq!(
            JobSpec::from_toml_str(&text).unwrap_err().field(),
            "data.format"
        );
        let text = GOOD.replace("lr = 0.001", "lr = -1.0");
        assert_eq!(
            JobSpec::from_toml_str(&text).unwrap_err().field(),
            "train.lr"
        );
    }

    const PARALLEL: &str = "[parallel]\nworkers = 4\ninner_steps = 30\n";

    #[test]
    fn a_parallel_table_gives_rounds_of_inner_steps() {
        let text = format!("{}{PARALLEL}", GOOD.replace("checkpoint_every = 30\n", ""));
        let spec = JobSpec::from_toml_str(&text).unwrap();
        let p = spec.parallel.unwrap();
        assert_eq!(p.workers, 4);
        assert_eq!(p.min_workers, 4);
        assert_eq!(p.outer_lr, 0.7);
        assert_eq!(p.outer_momentum, 0.9);
        assert_eq!(p.compression, Compression::None);
        // A worker commits after each round.
        assert_eq!(spec.train.checkpoint_every, 30);
        assert_eq!(p.rounds(spec.train.steps), 4);
        assert_eq!(p.round_steps(0, 100), (0, 30));
        assert_eq!(p.round_steps(3, 100), (90, 100));
        let text = format!("{GOOD}{PARALLEL}compression = \"int8\"\nmin_workers = 2\nouter_lr = 1.0\nouter_momentum = 0.5\n");
        let p = JobSpec::from_toml_str(&text).unwrap().parallel.unwrap();
        assert_eq!(
            (p.compression, p.min_workers, p.outer_lr, p.outer_momentum),
            (Compression::Int8, 2, 1.0, 0.5)
        );
        // Without the table, nothing changes.
        assert_eq!(JobSpec::from_toml_str(GOOD).unwrap().parallel, None);
    }

    #[test]
    fn bad_parallel_fields_are_named() {
        let refused = |extra: &str| {
            let text = format!("{GOOD}{}", PARALLEL.to_owned() + extra);
            JobSpec::from_toml_str(&text).unwrap_err()
        };
        let cases = [
            (
                "workers = 0",
                "[parallel]\nworkers = 0\ninner_steps = 30\n",
                "parallel.workers",
            ),
            (
                "workers = 65",
                "[parallel]\nworkers = 65\ninner_steps = 30\n",
                "parallel.workers",
            ),
            (
                "inner_steps = 0",
                "[parallel]\nworkers = 4\ninner_steps = 0\n",
                "parallel.inner_steps",
            ),
            (
                "inner_steps > steps",
                "[parallel]\nworkers = 4\ninner_steps = 101\n",
                "parallel.inner_steps",
            ),
        ];
        for (what, table, field) in cases {
            let text = format!("{GOOD}{table}");
            let err = JobSpec::from_toml_str(&text).unwrap_err();
            assert_eq!(err.field(), field, "{what}: {err}");
        }
        for (extra, field) in [
            ("min_workers = 5\n", "parallel.min_workers"),
            ("min_workers = 0\n", "parallel.min_workers"),
            ("outer_lr = 0.0\n", "parallel.outer_lr"),
            ("outer_lr = -0.7\n", "parallel.outer_lr"),
            ("outer_lr = nan\n", "parallel.outer_lr"),
            ("outer_momentum = 1.0\n", "parallel.outer_momentum"),
            ("compression = \"zip\"\n", "parallel.compression"),
            ("rounds = 3\n", "parallel.rounds"),
        ] {
            let err = refused(extra);
            assert_eq!(err.field(), field, "{extra}: {err}");
        }
        // checkpoint_every, if given, must be the inner steps.
        let text = format!("{GOOD}{}", PARALLEL.replace("30", "25"));
        let err = JobSpec::from_toml_str(&text).unwrap_err();
        assert_eq!(err.field(), "train.checkpoint_every", "{err}");
        assert!(err.to_string().contains("parallel.inner_steps"), "{err}");
        // And without [parallel] it is required, by name.
        let text = GOOD.replace("checkpoint_every = 30\n", "");
        assert_eq!(
            JobSpec::from_toml_str(&text).unwrap_err().field(),
            "train.checkpoint_every"
        );
    }

    #[test]
    fn a_region_is_checked_and_named() {
        let text = format!("{GOOD}[resources]\nregion = \"eu-west\"\n");
        let spec = JobSpec::from_toml_str(&text).unwrap();
        assert_eq!(spec.resources.region.as_deref(), Some("eu-west"));
        for bad in [
            "\"\"",
            "\"EU West\"",
            "\"a/b\"",
            &format!("\"{}\"", "x".repeat(33)),
        ] {
            let text = format!("{GOOD}[resources]\nregion = {bad}\n");
            let err = JobSpec::from_toml_str(&text).unwrap_err();
            assert_eq!(err.field(), "resources.region", "{bad}: {err}");
        }
    }

    #[test]
    fn resources_fields_are_optional_and_checked() {
        let text = format!("{GOOD}[resources]\ndevice = \"cuda\"\n");
        let spec = JobSpec::from_toml_str(&text).unwrap();
        assert_eq!(spec.resources.device, DeviceRequest::Cuda);
        assert_eq!(spec.resources.min_memory_gib, 0);
        let text = format!("{GOOD}[resources]\ngpus = 2\n");
        assert_eq!(
            JobSpec::from_toml_str(&text).unwrap_err().field(),
            "resources.gpus"
        );
    }

    #[test]
    fn missing_section_is_named() {
        let text = GOOD.replace("[data]\nformat = \"text\"\n", "");
        let err = JobSpec::from_toml_str(&text).unwrap_err();
        assert!(err.to_string().contains("missing field `data`"), "{err}");
    }
}
