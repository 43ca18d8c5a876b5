//! AdamW with decoupled weight decay, bias correction from the global step,
//! and optional clipping of the global gradient L2 norm.
//!
//! On the CPU the update of each parameter is one fused sequential loop
//! (moments kept in host memory); on other devices it is written with tensor
//! ops. Weight decay applies only to tensors with at least 2 dimensions.

use crate::gpt_cpu::{par_units, SyncPtr, CHUNK};
use crate::model::Model;
use crate::ops::with_f32;
use crate::TrainError;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Tensor};
use gradpool_core::spec::TrainConfig;
use std::cell::RefCell;

/// Host values of every parameter, in order.
pub(crate) type HostValues = Vec<Vec<f32>>;

/// First and second moments of one parameter.
pub(crate) enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Device { m: Tensor, v: Tensor },
}

/// The optimizer state: moments for every parameter of a model.
pub(crate) struct AdamW {
    pub moments: Vec<Moments>,
}

/// Hyper-parameters of one update.
#[derive(Clone, Copy)]
struct Update {
    step_size: f32,
    decay_factor: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    bc2_sqrt: f32,
    grad_scale: f32,
}

struct FusedAdam<'a> {
    m: RefCell<&'a mut [f32]>,
    v: RefCell<&'a mut [f32]>,
    u: Update,
}

impl InplaceOp2 for FusedAdam<'_> {
    fn name(&self) -> &'static str {
        "gradpool-adamw"
    }

    fn cpu_fwd(
        &self,
        p: &mut CpuStorage,
        pl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let (Some((pa, pb)), Some((ga, gb))) = (pl.contiguous_offsets(), gl.contiguous_offsets())
        else {
            candle_core::bail!("adamw needs contiguous tensors")
        };
        let CpuStorage::F32(p) = p else {
            candle_core::bail!("adamw needs f32 parameters")
        };
        let p = &mut p[pa..pb];
        let g = &g.as_slice::<f32>()?[ga..gb];
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        if p.len() != g.len() || m.len() != p.len() || v.len() != p.len() {
            candle_core::bail!("adamw: size mismatch");
        }
        let u = self.u;
        let n = p.len();
        let (pp, mp, vp) = (SyncPtr::new(p), SyncPtr::new(&mut m), SyncPtr::new(&mut v));
        // Elementwise, so any split gives the same result.
        par_units(n.div_ceil(CHUNK), 4 * n, |k| {
            let lo = k * CHUNK;
            let len = CHUNK.min(n - lo);
            // SAFETY: chunk k of each buffer belongs to unit k only.
            let (p, m, v) = unsafe { (pp.slice(lo, len), mp.slice(lo, len), vp.slice(lo, len)) };
            adam_chunk(p, &g[lo..lo + len], m, v, u)
        });
        Ok(())
    }
}

simd_dispatch!(adam_chunk => adam_chunk_body(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    u: Update,
));

#[inline(always)]
fn adam_chunk_body(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], u: Update) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let gi = g * u.grad_scale;
        let mi = *m + (gi - *m) * (1.0 - u.beta1);
        let vi = *v * u.beta2 + gi * gi * (1.0 - u.beta2);
        *m = mi;
        *v = vi;
        let denom = vi.sqrt() / u.bc2_sqrt + u.eps;
        *p = *p * u.decay_factor - u.step_size * mi / denom;
    }
}

impl AdamW {
    /// Zero moments for a model.
    pub fn new(model: &Model) -> Result<AdamW, TrainError> {
        let moments = model
            .specs
            .iter()
            .zip(&model.vars)
            .map(|(s, var)| -> Result<Moments, TrainError> {
                if var.device().is_cpu() {
                    Ok(Moments::Host {
                        m: vec![0.0; s.numel()],
                        v: vec![0.0; s.numel()],
                    })
                } else {
                    Ok(Moments::Device {
                        m: var.zeros_like()?,
                        v: var.zeros_like()?,
                    })
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(AdamW { moments })
    }

    /// Moments from host values (a checkpoint), placed like the model.
    pub fn from_values(
        model: &Model,
        m: Vec<Vec<f32>>,
        v: Vec<Vec<f32>>,
    ) -> Result<AdamW, TrainError> {
        let moments = model
            .vars
            .iter()
            .zip(m.into_iter().zip(v))
            .map(|(var, (m, v))| -> Result<Moments, TrainError> {
                if var.device().is_cpu() {
                    Ok(Moments::Host { m, v })
                } else {
                    Ok(Moments::Device {
                        m: Tensor::from_vec(m, var.shape(), var.device())?,
                        v: Tensor::from_vec(v, var.shape(), var.device())?,
                    })
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(AdamW { moments })
    }

    /// Host copies of the moments, in parameter order.
    pub fn values(&self) -> Result<(HostValues, HostValues), TrainError> {
        let mut ms = Vec::new();
        let mut vs = Vec::new();
        for mo in &self.moments {
            match mo {
                Moments::Host { m, v } => {
                    ms.push(m.clone());
                    vs.push(v.clone());
                }
                Moments::Device { m, v } => {
                    ms.push(m.flatten_all()?.to_vec1::<f32>()?);
                    vs.push(v.flatten_all()?.to_vec1::<f32>()?);
                }
            }
        }
        Ok((ms, vs))
    }

    /// One AdamW update of every parameter of `model` for global step `step`
    /// (0-based) with learning rate `lr`. Returns the global gradient norm
    /// (before clipping).
    pub fn step(
        &mut self,
        model: &Model,
        grads: &GradStore,
        train: &TrainConfig,
        step: u64,
        lr: f64,
    ) -> Result<f64, TrainError> {
        let mut gs: Vec<Tensor> = Vec::with_capacity(model.vars.len());
        for var in &model.vars {
            let g = match grads.get(var.as_tensor()) {
                Some(g) => g.contiguous()?,
                None => var.zeros_like()?,
            };
            gs.push(g);
        }
        self.step_with(model, &gs, train, step, lr)
    }

    /// [`AdamW::step`] with the gradient of every parameter given in order
    /// (contiguous, shaped like the parameter).
    pub fn step_with(
        &mut self,
        model: &Model,
        gs: &[Tensor],
        train: &TrainConfig,
        step: u64,
        lr: f64,
    ) -> Result<f64, TrainError> {
        if gs.len() != model.vars.len() {
            return Err(TrainError::Segment(format!(
                "{} gradients for {} parameters",
                gs.len(),
                model.vars.len()
            )));
        }
        // Global norm, accumulated in f64 in parameter order.
        let mut sq = 0f64;
        for g in gs {
            sq += if g.device().is_cpu() {
                with_f32(g, |s| {
                    s.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()
                })?
            } else {
                g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64
            };
        }
        let norm = sq.sqrt();
        if !norm.is_finite() {
            return Err(TrainError::Diverged {
                step,
                what: format!("gradient norm is {norm}"),
            });
        }
        let grad_scale = match train.grad_clip {
            Some(clip) if norm > clip => clip / (norm + 1e-6),
            _ => 1.0,
        };
        let t = (step + 1) as i32;
        let bc1 = 1.0 - train.beta1.powi(t);
        let bc2 = 1.0 - train.beta2.powi(t);
        for (((spec, var), g), mo) in model
            .specs
            .iter()
            .zip(&model.vars)
            .zip(gs)
            .zip(&mut self.moments)
        {
            let u = Update {
                step_size: (lr / bc1) as f32,
                decay_factor: if spec.decays() {
                    (1.0 - lr * train.weight_decay) as f32
                } else {
                    1.0
                },
                beta1: train.beta1 as f32,
                beta2: train.beta2 as f32,
                eps: train.eps as f32,
                bc2_sqrt: bc2.sqrt() as f32,
                grad_scale: grad_scale as f32,
            };
            match mo {
                Moments::Host { m, v } => {
                    let op = FusedAdam {
                        m: RefCell::new(m.as_mut_slice()),
                        v: RefCell::new(v.as_mut_slice()),
                        u,
                    };
                    var.as_tensor().inplace_op2(g, &op)?;
                }
                Moments::Device { m, v } => {
                    let g = (g * u.grad_scale as f64)?;
                    let nm = ((&*m * u.beta1 as f64)? + (&g * (1.0 - u.beta1 as f64))?)?;
                    let nv = ((&*v * u.beta2 as f64)? + (g.sqr()? * (1.0 - u.beta2 as f64))?)?;
                    let denom = ((nv.sqrt()? / u.bc2_sqrt as f64)? + u.eps as f64)?;
                    let upd = ((&nm / denom)? * u.step_size as f64)?;
                    let p = ((var.as_tensor() * u.decay_factor as f64)? - upd)?;
                    var.set(&p)?;
                    *m = nm;
                    *v = nv;
                }
            }
        }
        Ok(norm)
    }
}
