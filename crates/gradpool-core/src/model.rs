//! The shape of a model: its parameters' names and shapes, and the memory
//! training it takes.
//!
//! A [`ModelMeta`] is what the spec fixes plus what the data fixes (the
//! vocabulary of a text, the features and classes of a CSV). The trainer
//! builds its tensors from it; the pool checks every committed checkpoint
//! against it ([`crate::checkpoint::inspect`]) and refuses, at submit, a
//! job no provider could hold in memory ([`ModelMeta::memory`]).
//!
//! Parameters are stored as `[in, out]` for linear layers (`y = x W + b`),
//! `[vocab, C]` / `[block, C]` for embeddings and `[C]` for LayerNorm and
//! biases.

use crate::spec::{JobSpec, ModelConfig};
use serde::{Deserialize, Serialize};

/// A model's full shape: the spec's config plus what the data fixes.
/// Recorded in checkpoints and model files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelMeta {
    /// Character-level GPT.
    Gpt {
        n_layer: usize,
        n_head: usize,
        n_embd: usize,
        block_size: usize,
        vocab_size: usize,
    },
    /// MLP classifier.
    Mlp {
        inputs: usize,
        hidden: Vec<usize>,
        classes: usize,
    },
    /// A container job's model: its script's, whose layout gradpool does
    /// not know beforehand. It has no [`ModelMeta::params`]; its
    /// checkpoints are checked by [`crate::container::canonical`] against
    /// the layout of the one before, and it takes the memory the spec
    /// gives it.
    Container { memory_gib: u32 },
}

/// What the data fixes of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum DataShape {
    /// Text: the number of distinct characters.
    Text { vocab_size: usize },
    /// CSV: the number of feature columns and of distinct labels.
    Csv { inputs: usize, classes: usize },
}

/// How a parameter starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// Normal(0, 0.02) from the job's seed: weights and embeddings.
    Normal,
    /// Zeros: biases.
    Zeros,
    /// Ones: LayerNorm weights.
    Ones,
}

/// One parameter: name, shape and initialiser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl Param {
    fn new(name: String, shape: Vec<usize>, init: Init) -> Param {
        Param { name, shape, init }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The parameter's deterministic initial values from the job's seed:
    /// zeros, ones, or normal(0, 0.02) from its own stream of
    /// [`crate::rng::Rng`], derived from `(seed, "init:NAME")`.
    pub fn initial_values(&self, seed: u64) -> Vec<f32> {
        let n = self.numel();
        match self.init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal => {
                let mut rng = crate::rng::Rng::derive(seed, &format!("init:{}", self.name), 0);
                (0..n).map(|_| (rng.normal() * 0.02) as f32).collect()
            }
        }
    }

    /// Weight decay applies to tensors with at least 2 dimensions (linear
    /// weights and embeddings), as in nanoGPT; not to biases or LayerNorm.
    pub fn decays(&self) -> bool {
        self.shape.len() >= 2
    }
}

/// The prefixes of a checkpoint's tensors: for each parameter its value
/// and AdamW's two moments.
pub const CHECKPOINT_PREFIXES: [&str; 3] = ["param.", "adam_m.", "adam_v."];

/// The memory training a model takes on one device, in bytes (f32 tensors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemoryEstimate {
    pub parameters: u64,
    /// The weights.
    pub weights_bytes: u64,
    /// Their gradients and AdamW's two moments.
    pub optimizer_bytes: u64,
    /// What one step keeps for its backward pass, for the spec's batch.
    pub activations_bytes: u64,
    pub total_bytes: u64,
}

impl ModelMeta {
    /// The model a spec trains on data of this shape.
    pub fn of(spec: &JobSpec, data: DataShape) -> Result<ModelMeta, String> {
        match (&spec.model, data) {
            (ModelConfig::Gpt(g), DataShape::Text { vocab_size }) => Ok(ModelMeta::Gpt {
                n_layer: g.n_layer,
                n_head: g.n_head,
                n_embd: g.n_embd,
                block_size: g.block_size,
                vocab_size,
            }),
            (ModelConfig::Mlp(m), DataShape::Csv { inputs, classes }) => Ok(ModelMeta::Mlp {
                inputs,
                hidden: m.hidden.clone(),
                classes,
            }),
            (ModelConfig::Gpt(_), _) => Err("a GPT model needs text data, got CSV".into()),
            (ModelConfig::Mlp(_), _) => Err("an MLP model needs CSV data, got text".into()),
            (ModelConfig::Container(c), _) => Ok(ModelMeta::Container {
                memory_gib: c.memory_gib,
            }),
        }
    }

    /// Every parameter, in a fixed order (none for a container job's).
    pub fn params(&self) -> Vec<Param> {
        let mut out = Vec::new();
        let linear = |out: &mut Vec<Param>, name: &str, i: usize, o: usize| {
            out.push(Param::new(
                format!("{name}.weight"),
                vec![i, o],
                Init::Normal,
            ));
            out.push(Param::new(format!("{name}.bias"), vec![o], Init::Zeros));
        };
        match self {
            ModelMeta::Gpt {
                n_layer,
                n_embd: c,
                block_size,
                vocab_size,
                ..
            } => {
                let c = *c;
                let ln = |out: &mut Vec<Param>, name: &str| {
                    out.push(Param::new(format!("{name}.weight"), vec![c], Init::Ones));
                    out.push(Param::new(format!("{name}.bias"), vec![c], Init::Zeros));
                };
                out.push(Param::new(
                    "tok_emb".into(),
                    vec![*vocab_size, c],
                    Init::Normal,
                ));
                out.push(Param::new(
                    "pos_emb".into(),
                    vec![*block_size, c],
                    Init::Normal,
                ));
                for l in 0..*n_layer {
                    ln(&mut out, &format!("blocks.{l}.ln1"));
                    linear(&mut out, &format!("blocks.{l}.attn.qkv"), c, 3 * c);
                    linear(&mut out, &format!("blocks.{l}.attn.proj"), c, c);
                    ln(&mut out, &format!("blocks.{l}.ln2"));
                    linear(&mut out, &format!("blocks.{l}.mlp.fc"), c, 4 * c);
                    linear(&mut out, &format!("blocks.{l}.mlp.out"), 4 * c, c);
                }
                ln(&mut out, "ln_f");
                linear(&mut out, "head", c, *vocab_size);
            }
            ModelMeta::Mlp {
                inputs,
                hidden,
                classes,
            } => {
                let mut prev = *inputs;
                for (i, &h) in hidden.iter().enumerate() {
                    linear(&mut out, &format!("layers.{i}"), prev, h);
                    prev = h;
                }
                linear(&mut out, "out", prev, *classes);
            }
            ModelMeta::Container { .. } => {}
        }
        out
    }

    /// The number of parameters, computed without listing them (so a
    /// shape of absurd size gives a large number, not an allocation).
    pub fn parameter_count(&self) -> u64 {
        let n = match self {
            ModelMeta::Gpt {
                n_layer,
                n_embd,
                block_size,
                vocab_size,
                ..
            } => {
                let (l, c, t, v) = (w(*n_layer), w(*n_embd), w(*block_size), w(*vocab_size));
                // Two layer norms, qkv, the projection and the MLP's two
                // layers: 12·C² + 13·C.
                let per_block = sum(&[mul(&[12, c, c]), mul(&[13, c])]);
                sum(&[
                    mul(&[v, c]),
                    mul(&[t, c]),
                    mul(&[l, per_block]),
                    mul(&[2, c]),
                    mul(&[c, v]),
                    v,
                ])
            }
            ModelMeta::Mlp {
                inputs,
                hidden,
                classes,
            } => {
                let mut prev = w(*inputs);
                let mut n = 0u128;
                for &h in hidden.iter().chain(std::iter::once(classes)) {
                    n = sum(&[n, mul(&[prev, w(h)]), w(h)]);
                    prev = w(h);
                }
                n
            }
            // Not known before the script has run.
            ModelMeta::Container { .. } => 0,
        };
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// The memory a training step of `batch_size` examples takes: the
    /// weights, their gradients and AdamW's moments (4 copies of the
    /// parameters in all) and the activations kept for the backward pass.
    /// A container job takes the memory its spec gives it, all counted as
    /// activations.
    pub fn memory(&self, batch_size: usize) -> MemoryEstimate {
        let p = u128::from(self.parameter_count());
        let b = w(batch_size);
        let floats: u128 = match self {
            ModelMeta::Gpt {
                n_layer,
                n_head,
                n_embd,
                block_size,
                vocab_size,
            } => {
                let (l, h, c, t, v) = (
                    w(*n_layer),
                    w(*n_head),
                    w(*n_embd),
                    w(*block_size),
                    w(*vocab_size),
                );
                // Per block: the residual input, two layer norms, q/k/v,
                // the attention output and projection, the MLP's hidden
                // layer before and after GELU (16·C a position), and the
                // attention scores and probabilities (2·H·T a position).
                // Then the logits and their gradient.
                let per_block = sum(&[mul(&[16, c]), mul(&[2, h, t])]);
                let per_position = sum(&[mul(&[l, per_block]), mul(&[2, c]), mul(&[2, v])]);
                mul(&[b, t, per_position])
            }
            ModelMeta::Mlp {
                inputs,
                hidden,
                classes,
            } => {
                let widths = sum(&hidden.iter().map(|&h| mul(&[2, w(h)])).collect::<Vec<_>>());
                mul(&[b, sum(&[w(*inputs), widths, mul(&[2, w(*classes)])])])
            }
            ModelMeta::Container { memory_gib } => u128::from(*memory_gib) << 28,
        };
        let bytes = |x: u128| u64::try_from(x.saturating_mul(4)).unwrap_or(u64::MAX);
        let weights_bytes = bytes(p);
        let optimizer_bytes = bytes(3 * p);
        let activations_bytes = bytes(floats);
        MemoryEstimate {
            parameters: u64::try_from(p).unwrap_or(u64::MAX),
            weights_bytes,
            optimizer_bytes,
            activations_bytes,
            total_bytes: weights_bytes
                .saturating_add(optimizer_bytes)
                .saturating_add(activations_bytes),
        }
    }
}

fn w(x: usize) -> u128 {
    x as u128
}

/// A product that saturates instead of overflowing.
fn mul(xs: &[u128]) -> u128 {
    xs.iter().fold(1u128, |a, &x| a.saturating_mul(x))
}

/// A sum that saturates instead of overflowing.
fn sum(xs: &[u128]) -> u128 {
    xs.iter().fold(0u128, |a, &x| a.saturating_add(x))
}

/// `n` bytes for people: `1.5 GiB`, `320 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut x = n as f64;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt(n_layer: usize, n_embd: usize, block_size: usize, vocab_size: usize) -> ModelMeta {
        ModelMeta::Gpt {
            n_layer,
            n_head: 4,
            n_embd,
            block_size,
            vocab_size,
        }
    }

    #[test]
    fn the_parameter_count_is_the_sum_over_the_parameters() {
        for meta in [
            gpt(1, 8, 8, 11),
            gpt(4, 128, 64, 65),
            ModelMeta::Mlp {
                inputs: 4,
                hidden: vec![16, 8],
                classes: 3,
            },
        ] {
            let listed: usize = meta.params().iter().map(Param::numel).sum();
            assert_eq!(meta.parameter_count(), listed as u64, "{meta:?}");
        }
    }

    #[test]
    fn memory_grows_with_the_model_and_saturates_instead_of_overflowing() {
        let small = gpt(4, 128, 64, 65).memory(12);
        assert_eq!(small.weights_bytes, 4 * small.parameters);
        assert_eq!(small.optimizer_bytes, 12 * small.parameters);
        assert!(small.total_bytes < 100 << 20, "{small:?}");
        let huge = gpt(256, 16384, 65536, 65).memory(65536);
        assert!(huge.total_bytes > 1 << 50, "{huge:?}");
        let absurd = gpt(usize::MAX, usize::MAX, usize::MAX, usize::MAX).memory(usize::MAX);
        assert_eq!(absurd.total_bytes, u64::MAX);
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
