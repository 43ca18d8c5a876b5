//! Model architectures, their parameters and seeded initialisation.
//!
//! Parameters are stored as `[in, out]` for linear layers (`y = x W + b`),
//! `[vocab, C]` / `[block, C]` for embeddings and `[C]` for LayerNorm and
//! biases. Every parameter is initialised from its own stream of the crate's
//! generator, derived from `(seed, name)`: normal(0, 0.02) for weights and
//! embeddings, zeros for biases, ones for LayerNorm weights.

use crate::dataset::{DataKind, Dataset};
use crate::rng::Rng;
use crate::TrainError;
use candle_core::{DType, Device, Tensor, Var};
use gradpool_core::spec::{JobSpec, ModelConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A model's full shape: the spec's config plus what the data fixes
/// (vocabulary, features, classes). Recorded in checkpoints and model files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl ModelMeta {
    /// The model a spec trains on this data.
    pub fn new(spec: &JobSpec, data: &Dataset) -> Result<ModelMeta, TrainError> {
        match (&spec.model, &data.kind) {
            (ModelConfig::Gpt(g), DataKind::Text { vocab, .. }) => Ok(ModelMeta::Gpt {
                n_layer: g.n_layer,
                n_head: g.n_head,
                n_embd: g.n_embd,
                block_size: g.block_size,
                vocab_size: vocab.len(),
            }),
            (ModelConfig::Mlp(m), DataKind::Csv { info, .. }) => Ok(ModelMeta::Mlp {
                inputs: info.features.len(),
                hidden: m.hidden.clone(),
                classes: info.classes.len(),
            }),
            (ModelConfig::Gpt(_), _) => Err(TrainError::Data(
                "a GPT model needs text data, got CSV".into(),
            )),
            (ModelConfig::Mlp(_), _) => Err(TrainError::Data(
                "an MLP model needs CSV data, got text".into(),
            )),
        }
    }

    /// Every parameter, in a fixed order.
    pub(crate) fn params(&self) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        let linear = |out: &mut Vec<ParamSpec>, name: &str, i: usize, o: usize| {
            out.push(ParamSpec::new(
                format!("{name}.weight"),
                vec![i, o],
                Init::Normal,
            ));
            out.push(ParamSpec::new(format!("{name}.bias"), vec![o], Init::Zeros));
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
                let ln = |out: &mut Vec<ParamSpec>, name: &str| {
                    out.push(ParamSpec::new(
                        format!("{name}.weight"),
                        vec![c],
                        Init::Ones,
                    ));
                    out.push(ParamSpec::new(format!("{name}.bias"), vec![c], Init::Zeros));
                };
                out.push(ParamSpec::new(
                    "tok_emb".into(),
                    vec![*vocab_size, c],
                    Init::Normal,
                ));
                out.push(ParamSpec::new(
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
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Init {
    Normal,
    Zeros,
    Ones,
}

/// One parameter: name, shape, initialiser and whether AdamW decays it.
#[derive(Debug, Clone)]
pub(crate) struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl ParamSpec {
    fn new(name: String, shape: Vec<usize>, init: Init) -> ParamSpec {
        ParamSpec { name, shape, init }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Weight decay applies to tensors with at least 2 dimensions (linear
    /// weights and embeddings), as in nanoGPT; not to biases or LayerNorm.
    pub fn decays(&self) -> bool {
        self.shape.len() >= 2
    }

    /// Deterministic initial values from the job's seed.
    pub fn initial_values(&self, seed: u64) -> Vec<f32> {
        let n = self.numel();
        match self.init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal => {
                let mut rng = Rng::derive(seed, &format!("init:{}", self.name), 0);
                (0..n).map(|_| (rng.normal() * 0.02) as f32).collect()
            }
        }
    }
}

/// A model's parameters as trainable variables on a device.
pub(crate) struct Model {
    pub meta: ModelMeta,
    pub specs: Vec<ParamSpec>,
    pub vars: Vec<Var>,
    index: BTreeMap<String, usize>,
    mask: Option<Tensor>,
}

impl Model {
    /// Builds a model from host values, one per parameter in `meta.params()`
    /// order (the caller has checked the shapes).
    pub fn from_values(
        meta: ModelMeta,
        values: Vec<Vec<f32>>,
        device: &Device,
    ) -> Result<Model, TrainError> {
        let specs = meta.params();
        let mut vars = Vec::with_capacity(specs.len());
        for (spec, v) in specs.iter().zip(values) {
            vars.push(Var::from_vec(v, spec.shape.as_slice(), device)?);
        }
        let index = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let mask = match (&meta, device.is_cpu()) {
            (ModelMeta::Gpt { block_size, .. }, false) => {
                Some(crate::ops::causal_mask(*block_size, device)?)
            }
            _ => None,
        };
        Ok(Model {
            meta,
            specs,
            vars,
            index,
            mask,
        })
    }

    /// A freshly initialised model.
    pub fn init(meta: ModelMeta, seed: u64, device: &Device) -> Result<Model, TrainError> {
        let values = meta
            .params()
            .iter()
            .map(|p| p.initial_values(seed))
            .collect();
        Model::from_values(meta, values, device)
    }

    /// The position of parameter `name` in `vars`.
    pub(crate) fn index_of(&self, name: &str) -> candle_core::Result<usize> {
        match self.index.get(name) {
            Some(&i) => Ok(i),
            None => candle_core::bail!("no parameter {name}"),
        }
    }

    fn p(&self, name: &str) -> candle_core::Result<&Tensor> {
        match self.index.get(name) {
            Some(&i) => Ok(self.vars[i].as_tensor()),
            None => candle_core::bail!("no parameter {name}"),
        }
    }

    fn linear(&self, x: &Tensor, name: &str) -> candle_core::Result<Tensor> {
        let w = self.p(&format!("{name}.weight"))?;
        let b = self.p(&format!("{name}.bias"))?;
        crate::ops::add_bias(&x.matmul(w)?, b)
    }

    fn layer_norm(&self, x: &Tensor, name: &str) -> candle_core::Result<Tensor> {
        let w = self.p(&format!("{name}.weight"))?;
        let b = self.p(&format!("{name}.bias"))?;
        crate::ops::layer_norm(x, w, b)
    }

    /// GPT logits `[B*T, V]` for token ids `[B, T]` (u32).
    pub fn gpt_logits(&self, idx: &Tensor) -> candle_core::Result<Tensor> {
        let ModelMeta::Gpt {
            n_layer,
            n_head,
            n_embd: c,
            ..
        } = self.meta
        else {
            candle_core::bail!("not a GPT model")
        };
        let (b, t) = idx.dims2()?;
        let hd = c / n_head;
        let scale = 1.0 / (hd as f64).sqrt();
        let tok = self.p("tok_emb")?.embedding(&idx.flatten_all()?)?;
        let pos = self.p("pos_emb")?.narrow(0, 0, t)?;
        let mut x = crate::ops::add_bias(&tok.reshape((b, t * c))?, &pos.flatten_all()?)?
            .reshape((b * t, c))?;
        let mask = match &self.mask {
            Some(m) => m.narrow(0, 0, t)?.narrow(1, 0, t)?,
            None => Tensor::zeros((1, 1), DType::F32, idx.device())?,
        };
        for l in 0..n_layer {
            let h = self.layer_norm(&x, &format!("blocks.{l}.ln1"))?;
            let qkv = self
                .linear(&h, &format!("blocks.{l}.attn.qkv"))?
                .reshape((b, t, 3, n_head, hd))?
                .permute((2, 0, 3, 1, 4))?
                .contiguous()?;
            let q = qkv.get(0)?;
            let k = qkv.get(1)?;
            let v = qkv.get(2)?;
            let att = q.matmul(&k.t()?)?;
            let att = crate::ops::causal_softmax(&att, scale, &mask)?;
            let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b * t, c))?;
            x = (x + self.linear(&y, &format!("blocks.{l}.attn.proj"))?)?;
            let h = self.layer_norm(&x, &format!("blocks.{l}.ln2"))?;
            let h = crate::ops::gelu(&self.linear(&h, &format!("blocks.{l}.mlp.fc"))?)?;
            x = (x + self.linear(&h, &format!("blocks.{l}.mlp.out"))?)?;
        }
        let x = self.layer_norm(&x, "ln_f")?;
        self.linear(&x, "head")
    }

    /// MLP logits `[B, classes]` for standardised features `[B, inputs]`.
    pub fn mlp_logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let ModelMeta::Mlp { hidden, .. } = &self.meta else {
            candle_core::bail!("not an MLP model")
        };
        let mut h = x.clone();
        for i in 0..hidden.len() {
            h = self.linear(&h, &format!("layers.{i}"))?.relu()?;
        }
        self.linear(&h, "out")
    }

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.specs.iter().map(ParamSpec::numel).sum()
    }

    /// Host copies of every parameter, in order.
    pub fn values(&self) -> Result<Vec<Vec<f32>>, TrainError> {
        self.vars
            .iter()
            .map(|v| Ok(v.as_tensor().flatten_all()?.to_vec1::<f32>()?))
            .collect()
    }
}
