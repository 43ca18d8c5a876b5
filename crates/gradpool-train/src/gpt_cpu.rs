//! The GPT's training loss and gradients on the CPU, with a hand-written
//! backward pass instead of candle's autograd.
//!
//! candle's autograd allocates a zeroed buffer and adds into it for every
//! gradient of every op, copies tensors for the attention's reshapes and
//! splits, and runs the attention as a batch of tiny matrix products. Here
//! every activation is computed once into its own buffer, the attention of
//! each (sequence, head) pair reads queries, keys and values in place (gemm
//! with strides) and its softmax is fused with the causal mask, and all
//! matrix products go straight to candle's CPU gemm.
//!
//! Determinism: every output element is computed by one fixed sequence of
//! f32 operations. Work is split across threads only by whole units (rows,
//! fixed-size chunks, attention heads) that each write their own outputs, and
//! every sum over rows (bias and LayerNorm gradients, embedding gradients,
//! the loss) runs sequentially in row order, so results do not depend on the
//! number of threads. Products small enough for one thread (the attention's)
//! stay below gemm's threading threshold, and larger ones are split by gemm
//! without splitting sums.

use crate::model::{Model, ModelMeta};
use crate::ops::{exp_f32, gelu_parts, lane_sum, row_stats};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result, Storage, Tensor};
use std::ops::Deref;

/// Below about this many elements of work an op stays on the calling thread.
const PAR_MIN_WORK: usize = 16 * 1024;
/// Elements per unit of the elementwise kernels.
pub(crate) const CHUNK: usize = 4096;

/// A raw pointer into an output buffer whose disjoint parts are written by
/// different threads.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(*mut f32);
// SAFETY: used only to hand disjoint ranges of one live buffer to the units
// of `par_units`, which all finish before the buffer is used again.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    pub(crate) fn new(v: &mut [f32]) -> SyncPtr {
        SyncPtr(v.as_mut_ptr())
    }

    /// # Safety
    /// `start + len` must be within the buffer and no other live reference
    /// may overlap the range.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice<'a>(&self, start: usize, len: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

/// Runs `f(unit)` for every unit of `0..n`, over candle's CPU pool when there
/// are several threads and `work` (elements touched) makes it worth it.
pub(crate) fn par_units(n: usize, work: usize, f: impl Fn(usize) + Sync) {
    if n > 1 && work >= PAR_MIN_WORK && candle_core::utils::get_num_threads() > 1 {
        candle_core::utils::barrier_pool().execute_chunked(n, |r| r.for_each(&f));
    } else {
        (0..n).for_each(f);
    }
}

/// Applies `f(row_index, row)` to every `cols`-wide row of `data`.
fn par_rows(data: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = data.len() / cols;
    let per_unit = (CHUNK / cols).max(1);
    let ptr = SyncPtr::new(data);
    par_units(rows.div_ceil(per_unit), data.len(), |u| {
        for r in u * per_unit..rows.min((u + 1) * per_unit) {
            // SAFETY: each row belongs to exactly one unit.
            f(r, unsafe { ptr.slice(r * cols, cols) });
        }
    });
}

/// Applies `f(chunk_start, chunk)` to fixed chunks of `data`.
fn par_chunks(data: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    let n = data.len();
    let ptr = SyncPtr::new(data);
    par_units(n.div_ceil(CHUNK), n, |u| {
        let lo = u * CHUNK;
        let len = CHUNK.min(n - lo);
        // SAFETY: each chunk belongs to exactly one unit.
        f(lo, unsafe { ptr.slice(lo, len) });
    });
}

fn f32s(s: &CpuStorage) -> Result<&[f32]> {
    s.as_slice::<f32>()
}

fn f32s_mut(s: &mut CpuStorage) -> Result<&mut [f32]> {
    match s {
        CpuStorage::F32(v) => Ok(v.as_mut_slice()),
        _ => bail!("expected f32 storage"),
    }
}

/// `[rows, cols]` row-major at `offset`.
fn lay(rows: usize, cols: usize, offset: usize) -> Layout {
    Layout::contiguous_with_offset((rows, cols), offset)
}

/// The transpose of a row-major `[cols, rows]` matrix at `offset`, seen as
/// `[rows, cols]`.
fn lay_t(rows: usize, cols: usize, offset: usize) -> Layout {
    Layout::new((rows, cols).into(), vec![1, rows], offset)
}

/// `a [m, k] @ b [k, n]` through candle's CPU gemm.
fn mm(
    a: (&CpuStorage, Layout),
    b: (&CpuStorage, Layout),
    m: usize,
    n: usize,
    k: usize,
) -> Result<CpuStorage> {
    a.0.matmul(b.0, (1, m, n, k), &a.1, &b.1)
}

/// Read access to every parameter of a model.
struct Params<'a> {
    guards: Vec<(Box<dyn Deref<Target = Storage> + 'a>, &'a Layout)>,
}

impl<'a> Params<'a> {
    fn new(model: &'a Model) -> Result<Params<'a>> {
        let guards = model
            .vars
            .iter()
            .map(|v| {
                let (g, l) = v.as_tensor().storage_and_layout();
                (Box::new(g) as Box<dyn Deref<Target = Storage> + 'a>, l)
            })
            .collect::<Vec<_>>();
        for (_, l) in &guards {
            if !l.is_contiguous() {
                bail!("parameters must be contiguous")
            }
        }
        Ok(Params { guards })
    }

    /// The storage of parameter `i` and its start offset.
    fn get(&self, i: usize) -> Result<(&CpuStorage, usize)> {
        match &**self.guards[i].0 {
            Storage::Cpu(s) => Ok((s, self.guards[i].1.start_offset())),
            _ => bail!("expected a CPU parameter"),
        }
    }

    fn slice(&self, i: usize) -> Result<&[f32]> {
        let (s, off) = self.get(i)?;
        let n = self.guards[i].1.shape().elem_count();
        Ok(&f32s(s)?[off..off + n])
    }

    /// Parameter `i` as the left or right operand of a product: `[rows,
    /// cols]` as stored, or transposed (`rows`, `cols` of the view).
    fn mat(
        &self,
        i: usize,
        rows: usize,
        cols: usize,
        transposed: bool,
    ) -> Result<(&CpuStorage, Layout)> {
        let (s, off) = self.get(i)?;
        Ok((
            s,
            if transposed {
                lay_t(rows, cols, off)
            } else {
                lay(rows, cols, off)
            },
        ))
    }
}

/// Parameter indices of one block, in `ModelMeta::params` order.
struct BlockIdx {
    ln1_w: usize,
    ln1_b: usize,
    qkv_w: usize,
    qkv_b: usize,
    proj_w: usize,
    proj_b: usize,
    ln2_w: usize,
    ln2_b: usize,
    fc_w: usize,
    fc_b: usize,
    out_w: usize,
    out_b: usize,
}

/// What the backward pass of one block needs from its forward pass.
struct BlockCache {
    xin: Vec<f32>,
    st1: Vec<f32>,
    h1: CpuStorage,
    qkv: CpuStorage,
    att: CpuStorage,
    y: CpuStorage,
    xmid: Vec<f32>,
    st2: Vec<f32>,
    h2: CpuStorage,
    /// GELU's derivative at the MLP's pre-activations.
    f: Vec<f32>,
    g: CpuStorage,
}

// ---------------------------------------------------------------- kernels

/// LayerNorm of every `c`-wide row: the output and `(mean, rstd)` per row.
fn ln_fwd(x: &[f32], w: &[f32], b: &[f32], c: usize) -> (Vec<f32>, Vec<f32>) {
    let rows = x.len() / c;
    let mut y = vec![0f32; x.len()];
    let mut st = vec![0f32; 2 * rows];
    let sp = SyncPtr::new(&mut st);
    par_rows(&mut y, c, |r, yr| {
        // SAFETY: row r's two statistics belong to row r's unit.
        let s = unsafe { sp.slice(2 * r, 2) };
        ln_fwd_row(&x[r * c..(r + 1) * c], w, b, yr, s)
    });
    (y, st)
}

simd_dispatch!(ln_fwd_row => ln_fwd_row_body(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    st: &mut [f32],
));

/// One row of [`ln_fwd`]; `st` receives `(mean, rstd)`.
#[inline(always)]
fn ln_fwd_row_body(x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], st: &mut [f32]) {
    let (mean, rstd) = row_stats(x);
    for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
        *y = (x - mean) * rstd * w + b;
    }
    st[0] = mean;
    st[1] = rstd;
}

/// LayerNorm backward: adds the input gradient to `dx` and returns the
/// weight and bias gradients.
fn ln_bwd(
    x: &[f32],
    st: &[f32],
    w: &[f32],
    dy: &[f32],
    c: usize,
    dx: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    par_rows(dx, c, |r, dxr| {
        let rows = r * c..(r + 1) * c;
        ln_bwd_row(&x[rows.clone()], &st[2 * r..2 * r + 2], w, &dy[rows], dxr)
    });
    let mut dw = vec![0f32; c];
    let mut db = vec![0f32; c];
    for (r, (xr, gr)) in x.chunks_exact(c).zip(dy.chunks_exact(c)).enumerate() {
        let (mean, rstd) = (st[2 * r], st[2 * r + 1]);
        for i in 0..c {
            dw[i] += gr[i] * ((xr[i] - mean) * rstd);
            db[i] += gr[i];
        }
    }
    (dw, db)
}

simd_dispatch!(ln_bwd_row => ln_bwd_row_body(
    x: &[f32],
    st: &[f32],
    w: &[f32],
    g: &[f32],
    dx: &mut [f32],
));

/// One row of [`ln_bwd`]: adds the input gradient to `dx`.
#[inline(always)]
fn ln_bwd_row_body(x: &[f32], st: &[f32], w: &[f32], g: &[f32], dx: &mut [f32]) {
    let c = x.len();
    let (mean, rstd) = (st[0], st[1]);
    let s1 = lane_sum(c, |i| g[i] * w[i]);
    let s2 = lane_sum(c, |i| g[i] * w[i] * ((x[i] - mean) * rstd));
    let m1 = s1 / c as f32;
    let m2 = s2 / c as f32;
    for i in 0..c {
        let xh = (x[i] - mean) * rstd;
        dx[i] += rstd * (g[i] * w[i] - m1 - xh * m2);
    }
}

/// Sum of the `cols`-wide rows of `g`, in row order.
fn col_sum(g: &[f32], cols: usize) -> Vec<f32> {
    let mut s = vec![0f32; cols];
    for row in g.chunks_exact(cols) {
        for (a, v) in s.iter_mut().zip(row) {
            *a += v;
        }
    }
    s
}

/// The first error of a parallel section, if any.
struct FirstError(std::sync::Mutex<Option<candle_core::Error>>);

impl FirstError {
    fn new() -> FirstError {
        FirstError(std::sync::Mutex::new(None))
    }

    fn record(&self, r: Result<()>) {
        if let Err(e) = r {
            let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(e);
        }
    }

    fn into_result(self) -> Result<()> {
        match self.0.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Causal self-attention of every (sequence, head) pair, the matrix
/// products through gemm. `qkv` is `[B*T, 3C]` (queries, keys, values side
/// by side, heads within each); returns the output `[B*T, C]` and the
/// attention weights `[B, H, T, T]` (zero above the diagonal).
fn attn_fwd_mm(
    qkv: &CpuStorage,
    (b, t, nh, hd): (usize, usize, usize, usize),
    scale: f32,
) -> Result<(Vec<f32>, CpuStorage)> {
    let c = nh * hd;
    let c3 = 3 * c;
    let mut y = vec![0f32; b * t * c];
    let mut att = vec![0f32; b * nh * t * t];
    let yp = SyncPtr::new(&mut y);
    let ap = SyncPtr::new(&mut att);
    let err = FirstError::new();
    par_units(b * nh, b * nh * t * t * hd, |u| {
        err.record((|| {
            let (bi, h) = (u / nh, u % nh);
            let base = bi * t * c3 + h * hd;
            // S = Q K^T
            let s = mm(
                (qkv, Layout::new((t, hd).into(), vec![c3, 1], base)),
                (qkv, Layout::new((hd, t).into(), vec![1, c3], base + c)),
                t,
                t,
                hd,
            )?;
            let mut s = into_vec(s)?;
            causal_softmax_rows(&mut s, t, scale);
            let p = CpuStorage::F32(s);
            // Y = P V
            let yh = mm(
                (&p, lay(t, t, 0)),
                (qkv, Layout::new((t, hd).into(), vec![c3, 1], base + 2 * c)),
                t,
                hd,
                t,
            )?;
            let yh = f32s(&yh)?;
            for i in 0..t {
                // SAFETY: head h's columns of the rows of sequence bi, and
                // unit u's attention matrix, belong to this unit only.
                unsafe { yp.slice((bi * t + i) * c + h * hd, hd) }
                    .copy_from_slice(&yh[i * hd..(i + 1) * hd]);
            }
            unsafe { ap.slice(u * t * t, t * t) }.copy_from_slice(f32s(&p)?);
            Ok(())
        })())
    });
    err.into_result()?;
    Ok((y, CpuStorage::F32(att)))
}

/// Backward of [`attn_fwd_mm`]: the gradient of `qkv` from that of the
/// output (`dy`, `[B*T, C]`).
fn attn_bwd_mm(
    qkv: &CpuStorage,
    att: &CpuStorage,
    dy: &CpuStorage,
    (b, t, nh, hd): (usize, usize, usize, usize),
    scale: f32,
) -> Result<Vec<f32>> {
    let c = nh * hd;
    let c3 = 3 * c;
    let mut dqkv = vec![0f32; b * t * c3];
    let dp = SyncPtr::new(&mut dqkv);
    let err = FirstError::new();
    let pa = f32s(att)?;
    par_units(b * nh, b * nh * t * t * hd, |u| {
        err.record((|| {
            let (bi, h) = (u / nh, u % nh);
            let base = bi * t * c3 + h * hd;
            let dyl = Layout::new((t, hd).into(), vec![c, 1], bi * t * c + h * hd);
            let ql = Layout::new((t, hd).into(), vec![c3, 1], base);
            let kl = Layout::new((t, hd).into(), vec![c3, 1], base + c);
            // dP = dY V^T
            let dpm = mm(
                (dy, dyl.clone()),
                (qkv, Layout::new((hd, t).into(), vec![1, c3], base + 2 * c)),
                t,
                t,
                hd,
            )?;
            // dV = P^T dY
            let dv = mm(
                (att, Layout::new((t, t).into(), vec![1, t], u * t * t)),
                (dy, dyl),
                t,
                hd,
                t,
            )?;
            let mut ds = into_vec(dpm)?;
            causal_softmax_bwd_rows(&pa[u * t * t..(u + 1) * t * t], &mut ds, t, scale);
            let ds = CpuStorage::F32(ds);
            // dQ = dS K, dK = dS^T Q
            let dq = mm((&ds, lay(t, t, 0)), (qkv, kl), t, hd, t)?;
            let dk = mm((&ds, lay_t(t, t, 0)), (qkv, ql), t, hd, t)?;
            let (dq, dk, dv) = (f32s(&dq)?, f32s(&dk)?, f32s(&dv)?);
            for i in 0..t {
                let o = (bi * t + i) * c3 + h * hd;
                let r = i * hd..(i + 1) * hd;
                // SAFETY: head h's columns of the rows of sequence bi belong
                // to this unit only.
                unsafe { dp.slice(o, hd) }.copy_from_slice(&dq[r.clone()]);
                unsafe { dp.slice(o + c, hd) }.copy_from_slice(&dk[r.clone()]);
                unsafe { dp.slice(o + 2 * c, hd) }.copy_from_slice(&dv[r]);
            }
            Ok(())
        })())
    });
    err.into_result()?;
    Ok(dqkv)
}

simd_dispatch!(causal_softmax_rows => causal_softmax_rows_body(s: &mut [f32], t: usize, scale: f32));

/// Row-wise softmax of `scale * s` (`[T, T]`) under the causal mask, in
/// place; zeros above the diagonal.
#[inline(always)]
fn causal_softmax_rows_body(s: &mut [f32], t: usize, scale: f32) {
    for (i, row) in s.chunks_exact_mut(t).enumerate() {
        let (valid, masked) = row.split_at_mut(i + 1);
        masked.fill(0.0);
        let max = valid.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * scale;
        for v in valid.iter_mut() {
            *v = exp_f32(*v * scale - max);
        }
        let mut sum = 0f32;
        for v in valid.iter() {
            sum += v;
        }
        let inv = 1.0 / sum;
        for v in valid.iter_mut() {
            *v *= inv;
        }
    }
}

simd_dispatch!(causal_softmax_bwd_rows => causal_softmax_bwd_rows_body(
    p: &[f32],
    dp: &mut [f32],
    t: usize,
    scale: f32,
));

/// Backward of [`causal_softmax_rows_body`]: turns `dp`, the gradient of
/// the weights `p`, into that of the unscaled scores.
#[inline(always)]
fn causal_softmax_bwd_rows_body(p: &[f32], dp: &mut [f32], t: usize, scale: f32) {
    for (i, (pr, dr)) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)).enumerate() {
        let mut dot = 0f32;
        for (&a, &b) in pr[..=i].iter().zip(&dr[..=i]) {
            dot += a * b;
        }
        for (d, &a) in dr.iter_mut().zip(pr) {
            *d = scale * a * (*d - dot);
        }
    }
}

simd_dispatch!(gelu_fwd_chunk => gelu_fwd_chunk_body(x: &mut [f32], d: &mut [f32]));

/// GELU in place, and its derivative into `d`.
#[inline(always)]
fn gelu_fwd_chunk_body(x: &mut [f32], d: &mut [f32]) {
    for (v, dv) in x.iter_mut().zip(d.iter_mut()) {
        let (cdf, pdf) = gelu_parts(*v);
        *dv = cdf + *v * pdf;
        *v *= cdf;
    }
}

simd_dispatch!(mul_chunk => mul_chunk_body(x: &mut [f32], d: &[f32]));

#[inline(always)]
fn mul_chunk_body(x: &mut [f32], d: &[f32]) {
    for (v, &dv) in x.iter_mut().zip(d) {
        *v *= dv;
    }
}

/// Mean cross-entropy of `logits` (`[N, V]`) against `targets`; turns
/// `logits` into the gradient of the mean.
fn cross_entropy(logits: &mut [f32], targets: &[u32], v: usize) -> Result<f32> {
    let n = targets.len();
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= v) {
        bail!("cross-entropy target {bad} out of range {v}")
    }
    let scale = 1.0 / n as f32;
    let mut losses = vec![0f32; n];
    let lp = SyncPtr::new(&mut losses);
    par_rows(logits, v, |r, row| {
        let tgt = targets[r] as usize;
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let xt = row[tgt];
        for x in row.iter_mut() {
            *x = exp_f32(*x - max);
        }
        let mut sum = 0f32;
        for x in row.iter() {
            sum += x;
        }
        // SAFETY: row r's loss belongs to row r's unit.
        let l = unsafe { lp.slice(r, 1) };
        l[0] = max + sum.ln() - xt;
        let k = scale / sum;
        for x in row.iter_mut() {
            *x *= k;
        }
        row[tgt] -= scale;
    });
    let total: f64 = losses.iter().map(|&l| l as f64).sum();
    Ok((total / n as f64) as f32)
}

// ---------------------------------------------------------------- the model

/// The mean training loss of a batch and the gradient of every parameter
/// (in `ModelMeta::params` order), for a GPT on the CPU.
pub(crate) fn loss_and_grads(
    model: &Model,
    inputs: &Tensor,
    targets: &Tensor,
) -> Result<(f32, Vec<Tensor>)> {
    let ModelMeta::Gpt {
        n_layer,
        n_head: nh,
        n_embd: c,
        vocab_size: vocab,
        ..
    } = model.meta
    else {
        bail!("not a GPT model")
    };
    let (b, t) = inputs.dims2()?;
    let n = b * t;
    if nh == 0 || c % nh != 0 {
        bail!("width {c} is not a multiple of the {nh} heads")
    }
    let hd = c / nh;
    let dims = (b, t, nh, hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let idx: Vec<u32> = inputs.flatten_all()?.to_vec1()?;
    let tg: Vec<u32> = targets.to_vec1()?;
    if tg.len() != n {
        bail!("{} targets for {n} positions", tg.len())
    }
    if let Some(&bad) = idx.iter().find(|&&i| i as usize >= vocab) {
        bail!("token id {bad} out of range {vocab}")
    }
    let ix = |name: &str| model.index_of(name);
    let tok_i = ix("tok_emb")?;
    let pos_i = ix("pos_emb")?;
    let blocks = (0..n_layer)
        .map(|l| -> Result<BlockIdx> {
            let p = |s: &str| ix(&format!("blocks.{l}.{s}"));
            Ok(BlockIdx {
                ln1_w: p("ln1.weight")?,
                ln1_b: p("ln1.bias")?,
                qkv_w: p("attn.qkv.weight")?,
                qkv_b: p("attn.qkv.bias")?,
                proj_w: p("attn.proj.weight")?,
                proj_b: p("attn.proj.bias")?,
                ln2_w: p("ln2.weight")?,
                ln2_b: p("ln2.bias")?,
                fc_w: p("mlp.fc.weight")?,
                fc_b: p("mlp.fc.bias")?,
                out_w: p("mlp.out.weight")?,
                out_b: p("mlp.out.bias")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (lnf_w, lnf_b) = (ix("ln_f.weight")?, ix("ln_f.bias")?);
    let (head_w, head_b) = (ix("head.weight")?, ix("head.bias")?);

    let ps = Params::new(model)?;
    let mut grads: Vec<Option<Vec<f32>>> = vec![None; model.vars.len()];

    // ---- forward
    let mut x = vec![0f32; n * c];
    {
        let tok = ps.slice(tok_i)?;
        let pos = ps.slice(pos_i)?;
        if pos.len() < t * c {
            bail!("sequence of {t} is longer than the block size")
        }
        for (r, xr) in x.chunks_exact_mut(c).enumerate() {
            let ti = idx[r] as usize;
            let pi = r % t;
            for ((a, &e), &p) in xr
                .iter_mut()
                .zip(&tok[ti * c..(ti + 1) * c])
                .zip(&pos[pi * c..(pi + 1) * c])
            {
                *a = e + p;
            }
        }
    }
    let mut caches = Vec::with_capacity(n_layer);
    for bl in &blocks {
        let (h1, st1) = ln_fwd(&x, ps.slice(bl.ln1_w)?, ps.slice(bl.ln1_b)?, c);
        let h1 = CpuStorage::F32(h1);
        let mut qkv = mm(
            (&h1, lay(n, c, 0)),
            ps.mat(bl.qkv_w, c, 3 * c, false)?,
            n,
            3 * c,
            c,
        )?;
        let bq = ps.slice(bl.qkv_b)?;
        par_rows(f32s_mut(&mut qkv)?, 3 * c, |_, r| {
            for (a, &bb) in r.iter_mut().zip(bq) {
                *a += bb;
            }
        });
        let (y, att) = attn_fwd_mm(&qkv, dims, scale)?;
        let y = CpuStorage::F32(y);
        let mut xmid = mm((&y, lay(n, c, 0)), ps.mat(bl.proj_w, c, c, false)?, n, c, c)?;
        let bp = ps.slice(bl.proj_b)?;
        par_rows(f32s_mut(&mut xmid)?, c, |r, row| {
            for ((a, &bb), &xv) in row.iter_mut().zip(bp).zip(&x[r * c..(r + 1) * c]) {
                *a = (*a + bb) + xv;
            }
        });
        let CpuStorage::F32(xmid) = xmid else {
            bail!("expected f32 storage")
        };
        let (h2, st2) = ln_fwd(&xmid, ps.slice(bl.ln2_w)?, ps.slice(bl.ln2_b)?, c);
        let h2 = CpuStorage::F32(h2);
        let mut f = mm(
            (&h2, lay(n, c, 0)),
            ps.mat(bl.fc_w, c, 4 * c, false)?,
            n,
            4 * c,
            c,
        )?;
        let bf = ps.slice(bl.fc_b)?;
        par_rows(f32s_mut(&mut f)?, 4 * c, |_, r| {
            for (a, &bb) in r.iter_mut().zip(bf) {
                *a += bb;
            }
        });
        let CpuStorage::F32(f) = f else {
            bail!("expected f32 storage")
        };
        let mut g = f;
        let mut f = vec![0f32; g.len()];
        let fp = SyncPtr::new(&mut f);
        par_chunks(&mut g, |lo, ch| {
            // SAFETY: the derivative's chunk belongs to this unit.
            gelu_fwd_chunk(ch, unsafe { fp.slice(lo, ch.len()) })
        });
        let g = CpuStorage::F32(g);
        let mut xout = mm(
            (&g, lay(n, 4 * c, 0)),
            ps.mat(bl.out_w, 4 * c, c, false)?,
            n,
            c,
            4 * c,
        )?;
        let bo = ps.slice(bl.out_b)?;
        par_rows(f32s_mut(&mut xout)?, c, |r, row| {
            for ((a, &bb), &xv) in row.iter_mut().zip(bo).zip(&xmid[r * c..(r + 1) * c]) {
                *a = (*a + bb) + xv;
            }
        });
        let CpuStorage::F32(xout) = xout else {
            bail!("expected f32 storage")
        };
        let xin = std::mem::replace(&mut x, xout);
        caches.push(BlockCache {
            xin,
            st1,
            h1,
            qkv,
            att,
            y,
            xmid,
            st2,
            h2,
            f,
            g,
        });
    }
    let (hf, stf) = ln_fwd(&x, ps.slice(lnf_w)?, ps.slice(lnf_b)?, c);
    let hf = CpuStorage::F32(hf);
    let mut logits = mm(
        (&hf, lay(n, c, 0)),
        ps.mat(head_w, c, vocab, false)?,
        n,
        vocab,
        c,
    )?;
    let bh = ps.slice(head_b)?;
    let lg = f32s_mut(&mut logits)?;
    par_rows(lg, vocab, |_, r| {
        for (a, &bb) in r.iter_mut().zip(bh) {
            *a += bb;
        }
    });

    // ---- loss and backward
    let loss = cross_entropy(lg, &tg, vocab)?;
    let dlogits = logits;
    grads[head_w] = Some(into_vec(mm(
        (&hf, lay_t(c, n, 0)),
        (&dlogits, lay(n, vocab, 0)),
        c,
        vocab,
        n,
    )?)?);
    grads[head_b] = Some(col_sum(f32s(&dlogits)?, vocab));
    let dhf = mm(
        (&dlogits, lay(n, vocab, 0)),
        ps.mat(head_w, vocab, c, true)?,
        n,
        c,
        vocab,
    )?;
    drop(dlogits);
    let mut dx = vec![0f32; n * c];
    let (dw, db) = ln_bwd(&x, &stf, ps.slice(lnf_w)?, f32s(&dhf)?, c, &mut dx);
    grads[lnf_w] = Some(dw);
    grads[lnf_b] = Some(db);
    drop(dhf);
    let mut dx = CpuStorage::F32(dx);

    for (bl, ca) in blocks.iter().zip(caches).rev() {
        // MLP
        grads[bl.out_w] = Some(into_vec(mm(
            (&ca.g, lay_t(4 * c, n, 0)),
            (&dx, lay(n, c, 0)),
            4 * c,
            c,
            n,
        )?)?);
        grads[bl.out_b] = Some(col_sum(f32s(&dx)?, c));
        let mut df = mm(
            (&dx, lay(n, c, 0)),
            ps.mat(bl.out_w, c, 4 * c, true)?,
            n,
            4 * c,
            c,
        )?;
        drop(ca.g);
        let f = &ca.f;
        par_chunks(f32s_mut(&mut df)?, |lo, ch| {
            let len = ch.len();
            mul_chunk(ch, &f[lo..lo + len])
        });
        grads[bl.fc_w] = Some(into_vec(mm(
            (&ca.h2, lay_t(c, n, 0)),
            (&df, lay(n, 4 * c, 0)),
            c,
            4 * c,
            n,
        )?)?);
        grads[bl.fc_b] = Some(col_sum(f32s(&df)?, 4 * c));
        let dh2 = mm(
            (&df, lay(n, 4 * c, 0)),
            ps.mat(bl.fc_w, 4 * c, c, true)?,
            n,
            c,
            4 * c,
        )?;
        drop(df);
        let (dw, db) = ln_bwd(
            &ca.xmid,
            &ca.st2,
            ps.slice(bl.ln2_w)?,
            f32s(&dh2)?,
            c,
            f32s_mut(&mut dx)?,
        );
        grads[bl.ln2_w] = Some(dw);
        grads[bl.ln2_b] = Some(db);

        // attention
        grads[bl.proj_w] = Some(into_vec(mm(
            (&ca.y, lay_t(c, n, 0)),
            (&dx, lay(n, c, 0)),
            c,
            c,
            n,
        )?)?);
        grads[bl.proj_b] = Some(col_sum(f32s(&dx)?, c));
        let dy = mm((&dx, lay(n, c, 0)), ps.mat(bl.proj_w, c, c, true)?, n, c, c)?;
        let dqkv = CpuStorage::F32(attn_bwd_mm(&ca.qkv, &ca.att, &dy, dims, scale)?);
        drop(dy);
        grads[bl.qkv_w] = Some(into_vec(mm(
            (&ca.h1, lay_t(c, n, 0)),
            (&dqkv, lay(n, 3 * c, 0)),
            c,
            3 * c,
            n,
        )?)?);
        grads[bl.qkv_b] = Some(col_sum(f32s(&dqkv)?, 3 * c));
        let dh1 = mm(
            (&dqkv, lay(n, 3 * c, 0)),
            ps.mat(bl.qkv_w, 3 * c, c, true)?,
            n,
            c,
            3 * c,
        )?;
        let (dw, db) = ln_bwd(
            &ca.xin,
            &ca.st1,
            ps.slice(bl.ln1_w)?,
            f32s(&dh1)?,
            c,
            f32s_mut(&mut dx)?,
        );
        grads[bl.ln1_w] = Some(dw);
        grads[bl.ln1_b] = Some(db);
    }

    // embeddings, in row order
    let dx = f32s(&dx)?;
    let mut dtok = vec![0f32; ps.slice(tok_i)?.len()];
    let mut dpos = vec![0f32; ps.slice(pos_i)?.len()];
    for (r, g) in dx.chunks_exact(c).enumerate() {
        let ti = idx[r] as usize;
        for (a, &v) in dtok[ti * c..(ti + 1) * c].iter_mut().zip(g) {
            *a += v;
        }
        let pi = r % t;
        for (a, &v) in dpos[pi * c..(pi + 1) * c].iter_mut().zip(g) {
            *a += v;
        }
    }
    grads[tok_i] = Some(dtok);
    grads[pos_i] = Some(dpos);
    drop(ps);

    let device = inputs.device();
    let gs = grads
        .into_iter()
        .zip(&model.specs)
        .map(|(g, s)| match g {
            Some(g) => Tensor::from_vec(g, s.shape.as_slice(), device),
            None => bail!("no gradient for {}", s.name),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((loss, gs))
}

fn into_vec(s: CpuStorage) -> Result<Vec<f32>> {
    match s {
        CpuStorage::F32(v) => Ok(v),
        _ => bail!("expected f32 storage"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::Device;

    /// The hand-written gradients match candle's autograd through the
    /// composed forward pass (`Model::gpt_logits`).
    #[test]
    fn gradients_match_autograd() {
        let meta = ModelMeta::Gpt {
            n_layer: 2,
            n_head: 2,
            n_embd: 16,
            block_size: 8,
            vocab_size: 11,
        };
        let dev = Device::Cpu;
        let mut model = Model::init(meta, 5, &dev).unwrap();
        // Non-trivial LayerNorm and bias values.
        let mut rng = Rng::new(9);
        let values: Vec<Vec<f32>> = model
            .values()
            .unwrap()
            .into_iter()
            .map(|v| {
                v.into_iter()
                    .map(|x| x + 0.1 * rng.normal() as f32)
                    .collect()
            })
            .collect();
        model = Model::from_values(model.meta.clone(), values, &dev).unwrap();
        let (b, t) = (3, 7);
        let ids: Vec<u32> = (0..b * t).map(|_| rng.below(11) as u32).collect();
        let tg: Vec<u32> = (0..b * t).map(|_| rng.below(11) as u32).collect();
        let inputs = Tensor::from_vec(ids, (b, t), &dev).unwrap();
        let targets = Tensor::from_vec(tg, b * t, &dev).unwrap();

        let (loss, grads) = loss_and_grads(&model, &inputs, &targets).unwrap();
        let lg = model.gpt_logits(&inputs).unwrap();
        let ref_loss = crate::ops::cross_entropy(&lg, &targets).unwrap();
        let ref_grads = ref_loss.backward().unwrap();
        let ref_loss = ref_loss.to_scalar::<f32>().unwrap();
        assert!((loss - ref_loss).abs() < 1e-5, "{loss} vs {ref_loss}");
        for ((var, g), spec) in model.vars.iter().zip(&grads).zip(&model.specs) {
            let want = ref_grads.get(var.as_tensor()).unwrap();
            let a = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(a.len(), w.len(), "{}", spec.name);
            let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            for (x, y) in a.iter().zip(&w) {
                assert!(
                    (x - y).abs() <= 1e-4 * scale,
                    "{}: {x} vs {y} (scale {scale})",
                    spec.name
                );
            }
        }
    }

    /// The AVX2 builds of the kernels give the same bits as the baseline
    /// builds (the `_body` functions called directly).
    #[test]
    fn simd_builds_are_bit_identical() {
        let mut rng = Rng::new(3);
        let mut r = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32 * 3.0).collect() };
        let t = 13;
        let s = r(t * t);
        let d = r(t * t);
        let x = r(1000);
        let run = |simd: bool| {
            let mut p = s.clone();
            let mut ds = d.clone();
            let mut g = x.clone();
            let mut dg = vec![0f32; g.len()];
            let (w, b) = (&s[..100], &d[..100]);
            let mut y = vec![0f32; 100];
            let mut st = vec![0f32; 2];
            let mut dx = x[..100].to_vec();
            if simd {
                ln_fwd_row(&x[..100], w, b, &mut y, &mut st);
                ln_bwd_row(&x[..100], &st, w, &x[100..200], &mut dx);
            } else {
                ln_fwd_row_body(&x[..100], w, b, &mut y, &mut st);
                ln_bwd_row_body(&x[..100], &st, w, &x[100..200], &mut dx);
            }
            if simd {
                causal_softmax_rows(&mut p, t, 0.3);
                causal_softmax_bwd_rows(&p, &mut ds, t, 0.3);
                gelu_fwd_chunk(&mut g, &mut dg);
            } else {
                causal_softmax_rows_body(&mut p, t, 0.3);
                causal_softmax_bwd_rows_body(&p, &mut ds, t, 0.3);
                gelu_fwd_chunk_body(&mut g, &mut dg);
            }
            [p, ds, g, dg, y, st, dx]
        };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (a, b) in run(false).iter().zip(&run(true)) {
            assert_eq!(bits(a), bits(b));
        }
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -80f32;
        while x < 80.0 {
            let e = exp_f32(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((e - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) < 1e-37);
    }
}
