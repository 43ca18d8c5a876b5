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
//! `model.kind = "container"` trains the customer's own script in an OCI
//! image (see [`ContainerConfig`]):
//!
//! ```toml
//! [model]
//! kind = "container"
//!
//! [container]
//! image = "image.oci.tar.gz"          # uploaded by the CLI, pinned by digest
//! command = ["python3", "/job/train.py"]
//! files = ["train.py"]                # mounted read-only under /job
//! memory_gib = 2
//! segment_minutes = 60                # default; a segment past it fails
//! cross_class_tolerance = 0.025       # default; see verification
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
    /// A confidential job's key holders; `None`: not confidential.
    pub privacy: Option<Privacy>,
}

/// A confidential job (`[privacy] confidential = true`): its data, files
/// and checkpoints reach the pool only sealed under a data key the
/// customer's CLI makes, sealed in turn to the key holders' encryption
/// keys (see [`crate::privacy`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Privacy {
    pub providers: KeyHolders,
}

/// Who may hold a confidential job's data key (`privacy.providers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum KeyHolders {
    /// `"isolated"`: providers certified into the isolated tier.
    Isolated,
    /// `"any"`: every provider with an encryption key when the job is
    /// submitted. It keeps the data from the pool's operator and from
    /// observers, not from providers.
    Any,
    /// Providers by id (`prov_…`) or by their encryption key (64 hex
    /// digits).
    Listed(Vec<KeyHolder>),
}

/// One provider a confidential job names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum KeyHolder {
    Id(crate::ProviderId),
    Key(crate::privacy::EncryptionPublicKey),
}

/// The most providers a confidential job may list.
pub const MAX_KEY_HOLDERS: usize = 256;

/// A parallel job (DiLoCo). Round `r` starts from global checkpoint `r`:
/// every worker trains `inner_steps` steps of its own shard of the data
/// from it (steps `[r·H, (r+1)·H)` of the schedule, the last round
/// possibly shorter), then the outer step averages the workers'
/// pseudo-gradients (global minus worker weights) and applies them with
/// Nesterov momentum, giving global checkpoint `r + 1`. `train.steps`
/// counts each worker's steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// The customer's own training script in an OCI image.
    Container(ContainerConfig),
}

/// A container job: its script, run once per segment in a sandbox (the
/// segment contract is in the `gradpool.segment` Python package and
/// [`crate::container`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerConfig {
    /// The OCI archive on the customer's machine, relative to the spec:
    /// what `job submit` uploads. A pool's copy of the spec may lack it.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub image: Option<PathBuf>,
    /// The archive's sha256: checked when given, and set by `job submit`,
    /// so the job pins the image by digest.
    pub image_sha256: Option<crate::Sha256Hex>,
    /// The command the container runs, as a list (no shell).
    pub command: Vec<String>,
    /// The job's own files, mounted read-only under `/job` by their names.
    pub files: Vec<JobFile>,
    /// A parallel job's initial checkpoint on the customer's machine,
    /// relative to the spec: the weights every worker of round 0 starts
    /// from (the script's own, at step 0). `job submit` makes it by running
    /// the script for no steps when the spec names none.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub initial: Option<PathBuf>,
    /// The initial checkpoint's sha256: set by `job submit`.
    pub initial_sha256: Option<crate::Sha256Hex>,
    /// The memory the container may use, in GiB.
    pub memory_gib: u32,
    /// How long one segment may run before it is killed and failed, in
    /// minutes (default [`DEFAULT_SEGMENT_MINUTES`]).
    pub segment_minutes: u32,
    /// The largest relative L2 distance a replay in another
    /// reproducibility class may show and still match (default
    /// [`crate::verification::CROSS_CLASS_TOLERANCE`], calibrated on the
    /// native runtime and the example's short segments): a script whose
    /// segments drift more across devices and thread counts says so here.
    pub cross_class_tolerance: f64,
}

/// One of a container job's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobFile {
    /// Where it is on the customer's machine, relative to the spec.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub path: PathBuf,
    /// Its name under `/job`: the path's last component.
    pub name: String,
    /// Its sha256, from `[container.file_sha256]`: set by `job submit`.
    pub sha256: Option<crate::Sha256Hex>,
}

impl ContainerConfig {
    /// Whether the image and every file are pinned by digest, as a pool
    /// requires of a submitted job; `None` if so, else the field to set.
    pub fn unpinned(&self) -> Option<String> {
        if self.image_sha256.is_none() {
            return Some("container.image_sha256".to_owned());
        }
        if self.initial.is_some() && self.initial_sha256.is_none() {
            return Some("container.initial_sha256".to_owned());
        }
        self.files
            .iter()
            .find(|f| f.sha256.is_none())
            .map(|f| format!("container.file_sha256.{}", f.name))
    }
}

/// A character-level GPT: token and position embeddings, `n_layer` pre-norm
/// blocks of causal self-attention and a GELU MLP, a final LayerNorm and a
/// linear head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GptConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub block_size: usize,
}

/// An MLP classifier for tabular data: ReLU hidden layers of the given widths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MlpConfig {
    pub hidden: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// UTF-8 text, modelled character by character.
    Text,
    /// CSV with a header row: numeric feature columns and one label column.
    Csv,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DataSpec {
    pub format: DataFormat,
    /// The data file, relative to the spec file. `--data` overrides it.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    pub device: DeviceRequest,
    /// Minimum device memory, in GiB.
    pub min_memory_gib: u32,
    /// Train only on providers whose owners declared this region (in
    /// their provider config): keeps a parallel job's workers close.
    pub region: Option<String>,
    /// Train only on providers the pool's operator certified into this
    /// tier (`"isolated"`), their certification unexpired.
    pub tier: Option<crate::state::ProviderTier>,
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// The JSON Schema of a job spec's TOML (`JobSpecToml`) and of the
/// tables it names, for the pool's OpenAPI document.
#[cfg(feature = "openapi")]
pub fn toml_schemas() -> Vec<(
    String,
    utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
)> {
    use utoipa::{PartialSchema, ToSchema};
    let mut out = vec![(RawSpec::name().into_owned(), RawSpec::schema())];
    RawSpec::schemas(&mut out);
    out
}

#[derive(Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = JobSpecToml))]
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
    container: Option<RawContainer>,
    privacy: Option<RawPrivacy>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = SpecPrivacy))]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    #[serde(default)]
    confidential: bool,
    providers: Option<toml::Value>,
}

impl RawPrivacy {
    fn validate(self) -> Result<Option<Privacy>, SpecError> {
        let field = "privacy.providers";
        let expected = "\"isolated\", \"any\" or a list of provider ids (prov_…) and \
                        encryption keys (64 hex digits)";
        if !self.confidential {
            return match self.providers {
                Some(_) => Err(invalid(field, "only with privacy.confidential = true")),
                None => Ok(None),
            };
        }
        let providers = match self.providers {
            None => return Err(invalid(field, format!("required: {expected}"))),
            Some(toml::Value::String(s)) if s == "isolated" => KeyHolders::Isolated,
            Some(toml::Value::String(s)) if s == "any" => KeyHolders::Any,
            Some(toml::Value::Array(list)) => {
                if list.is_empty() || list.len() > MAX_KEY_HOLDERS {
                    return Err(invalid(
                        field,
                        format!("a list of 1 to {MAX_KEY_HOLDERS} providers"),
                    ));
                }
                let mut holders = Vec::with_capacity(list.len());
                for (i, v) in list.iter().enumerate() {
                    let at = format!("{field}[{i}]");
                    let s = v
                        .as_str()
                        .ok_or_else(|| invalid(&at, format!("a string: {expected}")))?;
                    let holder = if s.starts_with("prov_") {
                        KeyHolder::Id(
                            crate::ProviderId::parse(s).map_err(|e| invalid(&at, e.to_string()))?,
                        )
                    } else {
                        KeyHolder::Key(s.parse().map_err(|e: String| invalid(&at, e))?)
                    };
                    if holders.contains(&holder) {
                        return Err(invalid(&at, format!("{s} is listed twice")));
                    }
                    holders.push(holder);
                }
                KeyHolders::Listed(holders)
            }
            Some(other) => {
                return Err(invalid(field, format!("{expected}, got {other}")));
            }
        };
        Ok(Some(Privacy { providers }))
    }
}

#[derive(Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = SpecContainer))]
#[serde(deny_unknown_fields)]
struct RawContainer {
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    image: Option<PathBuf>,
    image_sha256: Option<String>,
    command: Vec<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    files: Vec<PathBuf>,
    #[serde(default)]
    file_sha256: std::collections::BTreeMap<String, String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    initial: Option<PathBuf>,
    initial_sha256: Option<String>,
    memory_gib: u32,
    #[serde(default = "default_segment_minutes")]
    segment_minutes: u32,
    cross_class_tolerance: Option<f64>,
}

fn default_segment_minutes() -> u32 {
    DEFAULT_SEGMENT_MINUTES
}

/// How long a container segment may run when the spec does not say.
pub const DEFAULT_SEGMENT_MINUTES: u32 = 60;
/// The longest a container segment may be allowed to run: a day.
pub const MAX_SEGMENT_MINUTES: u32 = 24 * 60;

/// The most memory a container job may ask for, in GiB.
pub const MAX_CONTAINER_MEMORY_GIB: u32 = 1024;
/// The most files a container job may bring.
pub const MAX_JOB_FILES: usize = 64;

/// What is wrong with a job file's name under `/job`, if anything: 1 to
/// 128 characters of `A`–`Z`, `a`–`z`, `0`–`9`, `.`, `_` and `-`, not
/// starting with a dot.
fn file_name_problem(name: &str) -> Option<String> {
    let ok = (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    (!ok).then(|| {
        format!(
            "a file name of 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-', not starting with '.', got {name:?}"
        )
    })
}

fn parse_sha(field: &str, value: &str) -> Result<crate::Sha256Hex, SpecError> {
    value
        .parse()
        .map_err(|e: crate::hash::BadDigest| invalid(field, e.to_string()))
}

impl RawContainer {
    fn validate(self) -> Result<ContainerConfig, SpecError> {
        let image_sha256 = self
            .image_sha256
            .as_deref()
            .map(|s| parse_sha("container.image_sha256", s))
            .transpose()?;
        if self.image.is_none() && image_sha256.is_none() {
            return Err(invalid(
                "container.image",
                "required: the OCI archive to upload (or container.image_sha256 of one already uploaded)",
            ));
        }
        if self.command.is_empty() || self.command.len() > 64 {
            return Err(invalid(
                "container.command",
                "a list of 1 to 64 arguments, e.g. [\"python3\", \"/job/train.py\"]",
            ));
        }
        for (i, arg) in self.command.iter().enumerate() {
            if arg.len() > 4096 || arg.contains('\0') || (i == 0 && arg.is_empty()) {
                return Err(invalid(
                    &format!("container.command[{i}]"),
                    "an argument of at most 4096 bytes without NUL (the first not empty)",
                ));
            }
        }
        if !(1..=MAX_CONTAINER_MEMORY_GIB).contains(&self.memory_gib) {
            return Err(invalid(
                "container.memory_gib",
                format!(
                    "an integer from 1 to {MAX_CONTAINER_MEMORY_GIB}, got {}",
                    self.memory_gib
                ),
            ));
        }
        if !(1..=MAX_SEGMENT_MINUTES).contains(&self.segment_minutes) {
            return Err(invalid(
                "container.segment_minutes",
                format!(
                    "an integer from 1 to {MAX_SEGMENT_MINUTES}, got {}",
                    self.segment_minutes
                ),
            ));
        }
        let tolerance = self
            .cross_class_tolerance
            .unwrap_or(crate::verification::CROSS_CLASS_TOLERANCE);
        if !(tolerance > 0.0 && tolerance <= 1.0) {
            return Err(invalid(
                "container.cross_class_tolerance",
                format!("a number above 0 and at most 1, got {tolerance}"),
            ));
        }
        let files = self.files()?;
        let initial_sha256 = self
            .initial_sha256
            .as_deref()
            .map(|s| parse_sha("container.initial_sha256", s))
            .transpose()?;
        Ok(ContainerConfig {
            image: self.image,
            image_sha256,
            command: self.command,
            files,
            initial: self.initial,
            initial_sha256,
            memory_gib: self.memory_gib,
            segment_minutes: self.segment_minutes,
            cross_class_tolerance: tolerance,
        })
    }

    fn files(&self) -> Result<Vec<JobFile>, SpecError> {
        if self.files.len() > MAX_JOB_FILES {
            return Err(invalid(
                "container.files",
                format!("at most {MAX_JOB_FILES} files"),
            ));
        }
        let mut files: Vec<JobFile> = Vec::new();
        for (i, path) in self.files.iter().enumerate() {
            let field = format!("container.files[{i}]");
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| invalid(&field, format!("a file path, got {path:?}")))?
                .to_owned();
            if let Some(problem) = file_name_problem(&name) {
                return Err(invalid(&field, problem));
            }
            if files.iter().any(|f| f.name == name) {
                return Err(invalid(
                    &field,
                    format!("two files named {name:?}: /job holds one"),
                ));
            }
            let sha256 = self
                .file_sha256
                .get(&name)
                .map(|s| parse_sha(&format!("container.file_sha256.{name}"), s))
                .transpose()?;
            files.push(JobFile {
                path: path.clone(),
                name,
                sha256,
            });
        }
        if let Some(name) = self
            .file_sha256
            .keys()
            .find(|k| !files.iter().any(|f| &f.name == *k))
        {
            return Err(invalid(
                &format!("container.file_sha256.{name}"),
                "the name of one of container.files",
            ));
        }
        Ok(files)
    }
}

#[derive(Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = SpecParallel))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = SpecModel))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
enum ModelKind {
    Gpt,
    Mlp,
    Container,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = SpecData))]
#[serde(deny_unknown_fields)]
struct RawData {
    format: DataFormat,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    file: Option<PathBuf>,
    label_column: Option<String>,
    sha256: Option<String>,
    eval_fraction: Option<f64>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = SpecTrain))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = SpecVerification))]
#[serde(deny_unknown_fields)]
struct RawVerification {
    #[serde(default)]
    level: VerificationLevel,
}

#[derive(Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = SpecBudget))]
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
        if let Some(dir) = path.parent() {
            spec.resolve_paths(dir);
        }
        Ok(spec)
    }

    /// Makes the spec's relative paths (`data.file`, a container's image
    /// and files) relative to `dir`, the spec file's directory.
    pub fn resolve_paths(&mut self, dir: &std::path::Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        if let Some(file) = &mut self.data.file {
            resolve(file);
        }
        if let ModelConfig::Container(c) = &mut self.model {
            if let Some(image) = &mut c.image {
                resolve(image);
            }
            if let Some(initial) = &mut c.initial {
                resolve(initial);
            }
            for f in &mut c.files {
                resolve(&mut f.path);
            }
        }
    }

    /// The container job's settings, if it is one.
    pub fn container(&self) -> Option<&ContainerConfig> {
        match &self.model {
            ModelConfig::Container(c) => Some(c),
            _ => None,
        }
    }

    /// The largest distance a replay in another class may show and still
    /// match: a container job's own, else the native runtime's.
    pub fn cross_class_tolerance(&self) -> f64 {
        self.container()
            .map_or(crate::verification::CROSS_CLASS_TOLERANCE, |c| {
                c.cross_class_tolerance
            })
    }

    /// What runs the job's segments.
    pub fn runtime(&self) -> crate::state::Runtime {
        match &self.model {
            ModelConfig::Container(_) => crate::state::Runtime::Container,
            ModelConfig::Gpt(_) | ModelConfig::Mlp(_) => crate::state::Runtime::Native,
        }
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
            ModelConfig::Mlp(_) | ModelConfig::Container(_) => None,
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
            ModelConfig::Mlp(_) | ModelConfig::Container(_) => None,
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
        let model = match (self.model.validate()?, self.container) {
            (None, Some(c)) => ModelConfig::Container(c.validate()?),
            (None, None) => {
                return Err(invalid(
                    "container",
                    "required for model kind \"container\": a [container] table (image, command, memory_gib)",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(invalid("container", "only for model kind \"container\""))
            }
            (Some(model), None) => model,
        };
        let data = self.data.validate(&model)?;
        check_steps(self.train.steps)?;
        let parallel = self
            .parallel
            .map(|p| p.validate(self.train.steps))
            .transpose()?;
        if let ModelConfig::Container(c) = &model {
            if parallel.is_none() && (c.initial.is_some() || c.initial_sha256.is_some()) {
                return Err(invalid(
                    "container.initial",
                    "only for a parallel job (a [parallel] table): a job that trains segment \
                     after segment starts from the script's own initial weights",
                ));
            }
        }
        let train = self.train.validate(parallel.as_ref())?;
        let privacy = self
            .privacy
            .map(RawPrivacy::validate)
            .transpose()?
            .flatten();
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
            privacy,
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
    /// The model; `None` for a container, whose model is its script's.
    fn validate(self) -> Result<Option<ModelConfig>, SpecError> {
        match self.kind {
            ModelKind::Container => {
                for (field, present) in [
                    ("model.n_layer", self.n_layer.is_some()),
                    ("model.n_head", self.n_head.is_some()),
                    ("model.n_embd", self.n_embd.is_some()),
                    ("model.block_size", self.block_size.is_some()),
                    ("model.hidden", self.hidden.is_some()),
                ] {
                    if present {
                        return Err(invalid(
                            field,
                            "not for model kind \"container\": the script defines the model",
                        ));
                    }
                }
                Ok(None)
            }
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
                Ok(Some(ModelConfig::Gpt(GptConfig {
                    n_layer,
                    n_head,
                    n_embd,
                    block_size,
                })))
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
                Ok(Some(ModelConfig::Mlp(MlpConfig { hidden })))
            }
        }
    }
}

impl RawData {
    fn validate(self, model: &ModelConfig) -> Result<DataSpec, SpecError> {
        match (model, self.format) {
            (ModelConfig::Gpt(_), DataFormat::Text)
            | (ModelConfig::Mlp(_), DataFormat::Csv)
            | (ModelConfig::Container(_), _) => {}
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

    const CONTAINER: &str = r#"
name = "torch"
[model]
kind = "container"
[container]
image = "image.oci.tar.gz"
command = ["python3", "/job/train.py"]
files = ["src/train.py", "vocab.json"]
memory_gib = 2
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
    fn a_container_spec_names_its_files_and_resolves_their_paths() {
        let mut spec = JobSpec::from_toml_str(CONTAINER).unwrap();
        let c = spec.container().unwrap();
        assert_eq!(c.command, ["python3", "/job/train.py"]);
        assert_eq!(c.memory_gib, 2);
        assert_eq!(c.segment_minutes, DEFAULT_SEGMENT_MINUTES);
        assert_eq!(
            spec.cross_class_tolerance(),
            crate::verification::CROSS_CLASS_TOLERANCE
        );
        let names: Vec<&str> = c.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["train.py", "vocab.json"]);
        assert_eq!(c.unpinned().as_deref(), Some("container.image_sha256"));
        assert_eq!(spec.flops_per_step(), None);
        spec.resolve_paths(std::path::Path::new("/jobs/a"));
        let c = spec.container().unwrap();
        assert_eq!(
            c.image.as_deref(),
            Some(std::path::Path::new("/jobs/a/image.oci.tar.gz"))
        );
        assert_eq!(
            c.files[0].path,
            std::path::Path::new("/jobs/a/src/train.py")
        );
    }

    #[test]
    fn a_pinned_container_spec_is_pinned() {
        let sha = "ab".repeat(32);
        let text = CONTAINER.replace(
            "memory_gib = 2",
            &format!(
                "memory_gib = 2\nimage_sha256 = \"{sha}\"\n[container.file_sha256]\n\"train.py\" = \"{sha}\"\n\"vocab.json\" = \"{sha}\""
            ),
        );
        let spec = JobSpec::from_toml_str(&text).unwrap();
        let c = spec.container().unwrap();
        assert_eq!(c.unpinned(), None);
        assert_eq!(
            c.files[1].sha256.as_ref().map(|s| s.as_str()),
            Some(sha.as_str())
        );
    }

    #[test]
    fn bad_container_fields_are_named() {
        let refused = |from: &str, to: &str| {
            let text = CONTAINER.replace(from, to);
            assert_ne!(text, CONTAINER, "{from}");
            JobSpec::from_toml_str(&text)
                .unwrap_err()
                .field()
                .to_owned()
        };
        assert_eq!(
            refused("memory_gib = 2", "memory_gib = 0"),
            "container.memory_gib"
        );
        assert_eq!(
            refused("memory_gib = 2", "memory_gib = 2\nmemory = 3"),
            "container.memory"
        );
        assert_eq!(
            refused("memory_gib = 2", "memory_gib = 2\nsegment_minutes = 0"),
            "container.segment_minutes"
        );
        for bad in ["0.0", "-0.1", "1.5", "nan"] {
            assert_eq!(
                refused(
                    "memory_gib = 2",
                    &format!("memory_gib = 2\ncross_class_tolerance = {bad}")
                ),
                "container.cross_class_tolerance",
                "{bad}"
            );
        }
        assert_eq!(
            refused("command = [\"python3\", \"/job/train.py\"]", "command = []"),
            "container.command"
        );
        assert_eq!(
            refused(
                "command = [\"python3\", \"/job/train.py\"]",
                "command = \"python3\""
            ),
            "container.command"
        );
        assert_eq!(
            refused("\"vocab.json\"]", "\"other/train.py\"]"),
            "container.files[1]"
        );
        assert_eq!(
            refused("\"vocab.json\"]", "\".hidden\"]"),
            "container.files[1]"
        );
        assert_eq!(
            refused("image = \"image.oci.tar.gz\"\n", ""),
            "container.image"
        );
        assert_eq!(
            refused("memory_gib = 2", "memory_gib = 2\nimage_sha256 = \"zz\""),
            "container.image_sha256"
        );
        assert_eq!(
            refused(
                "memory_gib = 2",
                "memory_gib = 2\n[container.file_sha256]\n\"nope.py\" = \"00\""
            ),
            "container.file_sha256.nope.py"
        );
        assert_eq!(
            refused("kind = \"container\"", "kind = \"container\"\nn_layer = 2"),
            "model.n_layer"
        );
        assert_eq!(
            refused("kind = \"container\"", "kind = \"gpt\""),
            "model.n_layer"
        );
        let text = CONTAINER
            .replace("[container]", "[other]")
            .replace("image = \"image.oci.tar.gz\"\ncommand", "[x]\ncommand");
        assert!(JobSpec::from_toml_str(&text).is_err());
        let no_table = CONTAINER.split("[container]").next().unwrap().to_owned()
            + CONTAINER.split("memory_gib = 2").nth(1).unwrap();
        assert_eq!(
            JobSpec::from_toml_str(&no_table).unwrap_err().field(),
            "container"
        );
        // An initial checkpoint is a parallel job's round 0.
        let initial = CONTAINER.replace(
            "memory_gib = 2",
            "memory_gib = 2\ninitial = \"init.safetensors\"",
        );
        assert_eq!(
            JobSpec::from_toml_str(&initial).unwrap_err().field(),
            "container.initial"
        );
        let parallel = format!("{initial}[parallel]\nworkers = 2\ninner_steps = 30\n");
        let spec = JobSpec::from_toml_str(&parallel).unwrap();
        let c = spec.container().unwrap();
        assert_eq!(
            c.initial.as_deref(),
            Some(std::path::Path::new("init.safetensors"))
        );
        assert_eq!(spec.parallel.unwrap().workers, 2);
    }

    #[test]
    fn a_privacy_table_names_who_may_hold_the_key() {
        let with = |table: &str| format!("{GOOD}\n[privacy]\n{table}\n");
        let holders = |table: &str| {
            JobSpec::from_toml_str(&with(table))
                .unwrap()
                .privacy
                .map(|p| p.providers)
        };
        assert_eq!(JobSpec::from_toml_str(GOOD).unwrap().privacy, None);
        assert_eq!(holders("confidential = false"), None);
        assert_eq!(
            holders("confidential = true\nproviders = \"isolated\""),
            Some(KeyHolders::Isolated)
        );
        assert_eq!(
            holders("confidential = true\nproviders = \"any\""),
            Some(KeyHolders::Any)
        );
        let key = "ab".repeat(32);
        let listed = holders(&format!(
            "confidential = true\nproviders = [\"prov_0123456789abcdef\", \"{key}\"]"
        ));
        assert_eq!(
            listed,
            Some(KeyHolders::Listed(vec![
                KeyHolder::Id(crate::ProviderId::parse("prov_0123456789abcdef").unwrap()),
                KeyHolder::Key(key.parse().unwrap()),
            ]))
        );
        let refused = |table: &str| {
            JobSpec::from_toml_str(&with(table))
                .unwrap_err()
                .field()
                .to_owned()
        };
        assert_eq!(refused("confidential = true"), "privacy.providers");
        assert_eq!(
            refused("confidential = true\nproviders = \"everyone\""),
            "privacy.providers"
        );
        assert_eq!(
            refused("confidential = true\nproviders = []"),
            "privacy.providers"
        );
        assert_eq!(
            refused("confidential = true\nproviders = [\"prov_xyz\"]"),
            "privacy.providers[0]"
        );
        assert_eq!(
            refused("confidential = true\nproviders = [\"abcd\"]"),
            "privacy.providers[0]"
        );
        assert_eq!(
            refused(&format!(
                "confidential = true\nproviders = [\"{key}\", \"{key}\"]"
            )),
            "privacy.providers[1]"
        );
        assert_eq!(refused("providers = \"any\""), "privacy.providers");
        assert_eq!(refused("confidential = \"yes\""), "privacy.confidential");
    }
}
