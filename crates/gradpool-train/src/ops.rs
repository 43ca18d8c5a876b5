//! Fused CPU kernels (layer norm, GELU, causal softmax, cross-entropy) with
//! their backward passes, and composed tensor-op fallbacks for other devices.
//!
//! Every kernel is a plain sequential loop in f32 (sums in f64 where noted),
//! so results do not depend on the number of threads.

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage,
    Tensor, D,
};

/// LayerNorm epsilon, as PyTorch's default.
pub const LN_EPS: f32 = 1e-5;

fn cpu_slice<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => bail!("fused kernel needs a contiguous input"),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(c) => Ok(f(cpu_slice::<f32>(c, l)?)),
        _ => bail!("expected a CPU tensor"),
    }
}

fn with_u32<R>(t: &Tensor, f: impl FnOnce(&[u32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(c) => Ok(f(cpu_slice::<u32>(c, l)?)),
        _ => bail!("expected a CPU tensor"),
    }
}

fn new_tensor(data: Vec<f32>, shape: &Shape, like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(data, shape.clone(), like.device())
}

// ---------------------------------------------------------------- layer norm

struct LayerNorm;

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "gradpool-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice::<f32>(s1, l1)?;
        let w = cpu_slice::<f32>(s2, l2)?;
        let b = cpu_slice::<f32>(s3, l3)?;
        let c = w.len();
        let mut y = vec![0f32; x.len()];
        for (xr, yr) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
            let (mean, rstd) = row_stats(xr);
            for i in 0..c {
                yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
            }
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let wv = with_f32(w, |s| s.to_vec())?;
        let c = wv.len();
        let gv = with_f32(grad, |s| s.to_vec())?;
        let (dx, dw, db) = with_f32(x, |x| {
            let mut dx = vec![0f32; x.len()];
            let mut dw = vec![0f32; c];
            let mut db = vec![0f32; c];
            let mut xhat = vec![0f32; c];
            for ((xr, gr), dxr) in x
                .chunks_exact(c)
                .zip(gv.chunks_exact(c))
                .zip(dx.chunks_exact_mut(c))
            {
                let (mean, rstd) = row_stats(xr);
                let mut s1 = 0f32;
                let mut s2 = 0f32;
                for i in 0..c {
                    xhat[i] = (xr[i] - mean) * rstd;
                    let dxh = gr[i] * wv[i];
                    s1 += dxh;
                    s2 += dxh * xhat[i];
                    dw[i] += gr[i] * xhat[i];
                    db[i] += gr[i];
                }
                let m1 = s1 / c as f32;
                let m2 = s2 / c as f32;
                for i in 0..c {
                    dxr[i] = rstd * (gr[i] * wv[i] - m1 - xhat[i] * m2);
                }
            }
            (dx, dw, db)
        })?;
        Ok((
            Some(new_tensor(dx, x.shape(), x)?),
            Some(new_tensor(dw, w.shape(), w)?),
            Some(new_tensor(db, w.shape(), w)?),
        ))
    }
}

pub(crate) fn row_stats(x: &[f32]) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = lane_sum(x.len(), |i| x[i]) / n;
    let var = lane_sum(x.len(), |i| (x[i] - mean) * (x[i] - mean)) / n;
    (mean, 1.0 / (var + LN_EPS).sqrt())
}

/// `f(0) + .. + f(n - 1)` in f32, accumulated in 8 lanes (`i mod 8`)
/// combined in a fixed order, so that the loop vectorizes; the result does
/// not depend on the vector width the compiler picks.
#[inline(always)]
pub(crate) fn lane_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let full = n / 8 * 8;
    for base in (0..full).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(base + l);
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for i in full..n {
        s += f(i);
    }
    s
}

/// LayerNorm over the last dimension with weight and bias.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op3(w, b, LayerNorm)
    } else {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xhat = xc.broadcast_div(&(var + LN_EPS as f64)?.sqrt()?)?;
        xhat.broadcast_mul(w)?.broadcast_add(b)
    }
}

// ---------------------------------------------------------------- bias add

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "gradpool-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice::<f32>(s1, l1)?;
        let b = cpu_slice::<f32>(s2, l2)?;
        if b.is_empty() || x.len() % b.len() != 0 {
            bail!(
                "add-bias: {} elements do not fit a bias of {}",
                x.len(),
                b.len()
            )
        }
        let mut y = x.to_vec();
        for row in y.chunks_exact_mut(b.len()) {
            for (v, bi) in row.iter_mut().zip(b) {
                *v += bi;
            }
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = b.elem_count();
        let db = with_f32(grad, |g| {
            let mut db = vec![0f32; n];
            for row in g.chunks_exact(n) {
                for (d, gi) in db.iter_mut().zip(row) {
                    *d += gi;
                }
            }
            db
        })?;
        Ok((Some(grad.clone()), Some(new_tensor(db, b.shape(), b)?)))
    }
}

/// `x + b`, where `b`'s shape is the trailing part of `x`'s shape (a bias
/// row added to every row).
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op2(&b.contiguous()?, AddBias)
    } else {
        x.broadcast_add(b)
    }
}

// ---------------------------------------------------------------- GELU (erf)

struct Gelu;

const INV_SQRT2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f32 = 0.398_942_3;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gradpool-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice::<f32>(s, l)?;
        let y: Vec<f32> = x.iter().map(|&v| v * gelu_parts(v).0).collect();
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = with_f32(grad, |s| s.to_vec())?;
        let dx = with_f32(arg, |x| {
            x.iter()
                .zip(&g)
                .map(|(&v, &g)| {
                    let (cdf, pdf) = gelu_parts(v);
                    g * (cdf + v * pdf)
                })
                .collect::<Vec<f32>>()
        })?;
        Ok(Some(new_tensor(dx, arg.shape(), arg)?))
    }
}

/// `(Phi(x), phi(x))`: the standard normal CDF and density, sharing one
/// `exp`. The CDF uses erf by Abramowitz & Stegun 7.1.26 (absolute error
/// below 1.5e-7, under f32 rounding of the result).
#[inline(always)]
pub(crate) fn gelu_parts(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_72;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let e = exp_f32(-0.5 * x * x);
    let z = x.abs() * INV_SQRT2;
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5))));
    let erf_abs = 1.0 - poly * e;
    let erf = erf_abs.copysign(x);
    (0.5 * (1.0 + erf), INV_SQRT_2PI * e)
}

/// `e^x` for f32, branch-free so that loops over it vectorize: Cephes'
/// `expf` (range reduction by `ln 2` in two parts, degree-5 polynomial),
/// within 2 ulp of the exact value. Inputs are clamped to `[-87, 88]`, so
/// very negative inputs give about `1.6e-38` instead of 0.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// GELU with the exact (erf) formula, as PyTorch's default.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(Gelu)
    } else {
        x.gelu_erf()
    }
}

// ------------------------------------------------------- causal softmax

struct CausalSoftmax {
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "gradpool-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice::<f32>(s, l)?;
        let t = l.dims()[l.dims().len() - 1];
        let mut y = vec![0f32; x.len()];
        for (r, (xr, yr)) in x.chunks_exact(t).zip(y.chunks_exact_mut(t)).enumerate() {
            let i = r % t;
            let valid = &xr[..=i];
            let max = valid.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * self.scale;
            let mut sum = 0f32;
            for j in 0..=i {
                let e = (xr[j] * self.scale - max).exp();
                yr[j] = e;
                sum += e;
            }
            let inv = 1.0 / sum;
            for v in &mut yr[..=i] {
                *v *= inv;
            }
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let t = arg.dim(D::Minus1)?;
        let g = with_f32(grad, |s| s.to_vec())?;
        let dx = with_f32(res, |p| {
            let mut dx = vec![0f32; p.len()];
            for (r, ((pr, gr), dr)) in p
                .chunks_exact(t)
                .zip(g.chunks_exact(t))
                .zip(dx.chunks_exact_mut(t))
                .enumerate()
            {
                let i = r % t;
                let mut dot = 0f32;
                for j in 0..=i {
                    dot += pr[j] * gr[j];
                }
                for j in 0..=i {
                    dr[j] = self.scale * pr[j] * (gr[j] - dot);
                }
            }
            dx
        })?;
        Ok(Some(new_tensor(dx, arg.shape(), arg)?))
    }
}

/// Softmax over the last dimension of `scores * scale` (`[.., T, T]`) with a
/// causal mask: entry `(i, j)` is 0 for `j > i`.
pub fn causal_softmax(scores: &Tensor, scale: f64, mask: &Tensor) -> Result<Tensor> {
    if scores.device().is_cpu() {
        scores.contiguous()?.apply_op1(CausalSoftmax {
            scale: scale as f32,
        })
    } else {
        let s = (scores * scale)?.broadcast_add(mask)?;
        softmax_last_dim(&s)
    }
}

/// The additive causal mask (`0` on and below the diagonal, `-inf` above)
/// used by the composed fallback of [`causal_softmax`].
pub fn causal_mask(t: usize, device: &candle_core::Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..t * t)
        .map(|k| {
            if k % t > k / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(m, (t, t), device)
}

fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

// ------------------------------------------------------- cross-entropy

struct CrossEntropy;

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "gradpool-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice::<f32>(s1, l1)?;
        let t = cpu_slice::<u32>(s2, l2)?;
        let v = l1.dims()[1];
        let mut total = 0f64;
        for (xr, &tgt) in x.chunks_exact(v).zip(t) {
            let Some(&xt) = xr.get(tgt as usize) else {
                bail!("cross-entropy target {tgt} out of range {v}")
            };
            total += (logsumexp(xr) - xt) as f64;
        }
        let loss = (total / t.len() as f64) as f32;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let v = logits.dim(1)?;
        let g = grad.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let tg = with_u32(targets, |s| s.to_vec())?;
        let scale = g / tg.len() as f32;
        let dx = with_f32(logits, |x| {
            let mut dx = vec![0f32; x.len()];
            for ((xr, dr), &tgt) in x.chunks_exact(v).zip(dx.chunks_exact_mut(v)).zip(&tg) {
                let lse = logsumexp(xr);
                for j in 0..v {
                    dr[j] = (xr[j] - lse).exp() * scale;
                }
                dr[tgt as usize] -= scale;
            }
            dx
        })?;
        Ok((Some(new_tensor(dx, logits.shape(), logits)?), None))
    }
}

fn logsumexp(x: &[f32]) -> f32 {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f32 = x.iter().map(|&v| (v - max).exp()).sum();
    max + sum.ln()
}

/// Mean cross-entropy of `logits` (`[N, V]`) against `targets` (`[N]`, u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.device().is_cpu() {
        logits.contiguous()?.apply_op2(targets, CrossEntropy)
    } else {
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let shifted = logits.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        let logp = shifted.broadcast_sub(&lse)?;
        let picked = logp.gather(&targets.unsqueeze(1)?, 1)?;
        picked.mean_all()?.neg()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    fn randn(shape: &[usize], seed: u64) -> Var {
        let mut r = Rng::new(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
        Var::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn fused_kernels_match_composed_ops() {
        // layer norm
        let x = randn(&[6, 8], 1);
        let w = randn(&[8], 2);
        let b = randn(&[8], 3);
        let proj = randn(&[6, 8], 4);
        let fused = layer_norm(&x, &w, &b).unwrap();
        let mean = x.mean_keepdim(1).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(1).unwrap();
        let composed = xc
            .broadcast_div(&(var + LN_EPS as f64).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w)
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        close(&fused, &composed, 1e-5);
        let g1 = (fused * &*proj)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (composed * &*proj)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &w, &b] {
            close(g1.get(v).unwrap(), g2.get(v).unwrap(), 1e-4);
        }

        // gelu
        let fused = gelu(&x).unwrap();
        let composed = x.gelu_erf().unwrap();
        close(&fused, &composed, 1e-5);
        let g1 = (fused * &*proj)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (composed * &*proj)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        close(g1.get(&x).unwrap(), g2.get(&x).unwrap(), 1e-4);

        // causal softmax
        let s = randn(&[2, 3, 5, 5], 5);
        let p = randn(&[2, 3, 5, 5], 6);
        let mask = causal_mask(5, &Device::Cpu).unwrap();
        let fused = causal_softmax(&s, 0.5, &mask).unwrap();
        let composed =
            softmax_last_dim(&(&*s * 0.5).unwrap().broadcast_add(&mask).unwrap()).unwrap();
        close(&fused, &composed, 1e-6);
        let g1 = (fused * &*p)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (composed * &*p)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        close(g1.get(&s).unwrap(), g2.get(&s).unwrap(), 1e-5);

        // cross-entropy
        let logits = randn(&[7, 5], 7);
        let tg = Tensor::new(&[0u32, 4, 2, 2, 1, 3, 0], &Device::Cpu).unwrap();
        let fused = cross_entropy(&logits, &tg).unwrap();
        let max = logits.max_keepdim(1).unwrap();
        let sh = logits.broadcast_sub(&max).unwrap();
        let lse = sh.exp().unwrap().sum_keepdim(1).unwrap().log().unwrap();
        let composed = sh
            .broadcast_sub(&lse)
            .unwrap()
            .gather(&tg.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .mean_all()
            .unwrap()
            .neg()
            .unwrap();
        close(&fused, &composed, 1e-6);
        let g1 = (fused * 3.0).unwrap().backward().unwrap();
        let g2 = (composed * 3.0).unwrap().backward().unwrap();
        close(g1.get(&logits).unwrap(), g2.get(&logits).unwrap(), 1e-5);
    }
}
