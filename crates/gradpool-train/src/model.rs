//! Model architectures, their parameters and seeded initialisation.
//!
//! Parameters are stored as `[in, out]` for linear layers (`y = x W + b`),
//! `[vocab, C]` / `[block, C]` for embeddings and `[C]` for LayerNorm and
//! biases. Every parameter is initialised from its own stream of the crate's
//! generator, derived from `(seed, name)`: normal(0, 0.02) for weights and
//! embeddings, zeros for biases, ones for LayerNorm weights.

use crate::TrainError;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::BTreeMap;

pub use gradpool_core::model::{ModelMeta, Param};

/// A model's parameters as trainable variables on a device.
pub(crate) struct Model {
    pub meta: ModelMeta,
    pub specs: Vec<Param>,
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
        if let ModelMeta::Container { .. } = meta {
            return Err(TrainError::Unsupported(
                "a container job's model is its script's: it trains in its image, under podman"
                    .into(),
            ));
        }
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
        self.specs.iter().map(Param::numel).sum()
    }

    /// Host copies of every parameter, in order.
    pub fn values(&self) -> Result<Vec<Vec<f32>>, TrainError> {
        self.vars
            .iter()
            .map(|v| Ok(v.as_tensor().flatten_all()?.to_vec1::<f32>()?))
            .collect()
    }
}
