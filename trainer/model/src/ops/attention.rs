//! Multi-head self-attention: one CPU kernel with its own backward, and the composed twin.
//!
//! The composed path (split heads, transpose, `contiguous`, batched matmul, scale, mask, softmax,
//! dropout, matmul, merge heads) costs ~10 tensor passes and allocations forward and ~20 back,
//! and candle's batched matmul runs each of the B·heads small products on the whole thread pool.
//! Here each (sequence, head) pair is one task on the rayon pool: its products run
//! single-threaded through `gemm` on strided views of the fused `[B, L, 3H]` projections, and the
//! context is written straight into `[B, L, H]`; nothing is transposed or copied.

use super::{matmul_in, softmax_last_dim, supports, supports_cuda, DropoutMask};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Which keys each query may see, besides the additive key bias: all of them by default.
///
/// The rule lives on the device: per-token segment ids uploaded once with the batch, expanded by
/// tensor ops into the `[B, 1, L, L]` additive mask once per rule and batch (the first layer of
/// each type asks, later layers reuse it); the window is a cached `[L, L]` table.
#[derive(Clone, Debug, Default)]
pub struct Visibility {
    /// Keys at most this many positions from the query (ModernBERT's local layers: 64).
    pub radius: Option<usize>,
    /// Per-token segment (document) ids `[B, L]` u32 on the device: a query sees only the keys
    /// of its own segment.
    pub segments: Option<Tensor>,
    /// The expanded mask, once built.
    dense: std::sync::OnceLock<Option<Tensor>>,
    /// The short-row kernel's `[B, L, 2]` rule for a key bias (its tensor id), once built.
    rows_rule: std::sync::OnceLock<(candle_core::TensorId, Tensor)>,
}

impl Visibility {
    /// Every key visible.
    pub fn all() -> Self {
        Visibility::default()
    }

    /// Keys limited to `radius` positions either side (`None`: no limit) and to the segment
    /// of the query (`segments` `[B, L]`; `None`: one per row).
    pub fn new(radius: Option<usize>, segments: Option<Tensor>) -> Self {
        Visibility {
            radius,
            segments,
            dense: Default::default(),
            rows_rule: Default::default(),
        }
    }

    /// This rule with keys limited to `radius` positions either side (`None`: no limit).
    pub fn with_radius(&self, radius: Option<usize>) -> Self {
        Visibility::new(radius, self.segments.clone())
    }

    /// The short-row kernel's rule `[B, L, 2]` f32 (each token's key bias and segment id) for
    /// `key_bias` `[B, L]`: built by three device ops the first time a layer asks, then reused
    /// by every layer of this rule that passes the same key bias tensor (a different one gets its
    /// own, uncached).
    pub(super) fn rows_rule(&self, key_bias: &Tensor, batch: usize, len: usize) -> Result<Tensor> {
        if let Some((id, rule)) = self.rows_rule.get() {
            if *id == key_bias.id() {
                return Ok(rule.clone());
            }
            return self.build_rows_rule(key_bias, batch, len);
        }
        let rule = self.build_rows_rule(key_bias, batch, len)?;
        let _ = self.rows_rule.set((key_bias.id(), rule.clone()));
        Ok(rule)
    }

    fn build_rows_rule(&self, key_bias: &Tensor, batch: usize, len: usize) -> Result<Tensor> {
        let bias = key_bias.reshape((batch, len, 1))?.to_dtype(DType::F32)?;
        let segments = match &self.segments {
            Some(s) => s.reshape((batch, len, 1))?.to_dtype(DType::F32)?,
            None => bias.zeros_like()?,
        };
        Tensor::cat(&[&bias, &segments], 2)?.contiguous()
    }

    /// The rule as an additive `[B, 1, L, L]` (or `[1, 1, L, L]` for a window alone) mask of 0 and
    /// -∞, `None` when every key is visible; built on the device the first time it is asked for.
    fn dense(&self, batch: usize, len: usize, device: &Device) -> Result<Option<Tensor>> {
        if let Some(d) = self.dense.get() {
            return Ok(d.clone());
        }
        let d = self.expand(batch, len, device)?;
        let _ = self.dense.set(d.clone());
        Ok(d)
    }

    fn expand(&self, batch: usize, len: usize, device: &Device) -> Result<Option<Tensor>> {
        let window = match self.radius {
            Some(r) => Some(window_bias(len, r, device)?),
            None => None,
        };
        let Some(s) = &self.segments else {
            return window.map(|w| w.reshape((1, 1, len, len))).transpose();
        };
        if s.dims() != [batch, len] {
            candle_core::bail!("attention: segment ids {:?} for {batch}×{len}", s.dims());
        }
        let same = s
            .reshape((batch, len, 1))?
            .broadcast_eq(&s.reshape((batch, 1, len))?)?;
        let zero = Tensor::zeros((), DType::F32, device)?.broadcast_as((batch, len, len))?;
        let hidden = zero.affine(1.0, f64::NEG_INFINITY)?;
        let bias = same.where_cond(&zero, &hidden)?;
        let bias = match window {
            Some(w) => bias.broadcast_add(&w)?,
            None => bias,
        };
        Ok(Some(bias.reshape((batch, 1, len, len))?))
    }
}

/// The window rule as an additive `[L, L]` table (0 within `radius` of the diagonal, -∞
/// beyond), cached per (len, radius, device).
fn window_bias(len: usize, radius: usize, device: &Device) -> Result<Tensor> {
    super::tables::cached(&format!("window-{len}-{radius}"), device, || {
        let table: Vec<f32> = (0..len * len)
            .map(|k| match (k / len).abs_diff(k % len) <= radius {
                true => 0.0,
                false => f32::NEG_INFINITY,
            })
            .collect();
        crate::transfer::upload(table, (len, len), device)
    })
}

/// The CPU kernel's form of a rule: host segment ids and the window.
#[derive(Clone, Debug, Default)]
struct HostVisibility {
    radius: Option<usize>,
    segments: Option<Arc<Vec<u32>>>,
}

impl HostVisibility {
    /// The rule of `v` on the host (its segments are a CPU tensor: nothing crosses).
    fn of(v: &Visibility) -> Result<Self> {
        Ok(HostVisibility {
            radius: v.radius,
            segments: match &v.segments {
                Some(s) => Some(Arc::new(s.flatten_all()?.to_vec1::<u32>()?)),
                None => None,
            },
        })
    }

    fn restricts(&self) -> bool {
        self.radius.is_some() || self.segments.is_some()
    }

    /// Whether query `i` of row `b` (rows of `len`) sees key `j`.
    #[inline]
    fn sees(&self, b: usize, len: usize, i: usize, j: usize) -> bool {
        self.radius.is_none_or(|r| i.abs_diff(j) <= r)
            && self
                .segments
                .as_ref()
                .is_none_or(|s| s[b * len + i] == s[b * len + j])
    }

    /// Sets the scores of query `i` (row `b`) for keys it may not see to -∞.
    fn hide(&self, b: usize, len: usize, i: usize, scores: &mut [f32]) {
        for (j, s) in scores.iter_mut().enumerate() {
            if !self.sees(b, len, i, j) {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}

/// Multi-head self-attention: `qkv` `[B, L, 3H]` holds the query, key and value projections
/// (H columns each, `heads` heads per block); `key_bias` `[B, L]` is added to every query's scores
/// (0 for tokens, -10000 for padding); `visible` limits the keys each query sees (a window,
/// documents; hidden keys get probability 0); `dropout` masks the `[B, heads, L, L]`
/// probabilities (element index in that shape); the two products run in `compute` (see
/// [`matmul_in`]). Returns the context `[B, L, H]`.
pub fn attention(
    qkv: &Tensor,
    heads: usize,
    key_bias: &Tensor,
    visible: &Visibility,
    dropout: Option<DropoutMask>,
    compute: DType,
) -> Result<Tensor> {
    let dropout = dropout.filter(|m| m.p > 0.0);
    // The kernel runs its products in f32, so it serves only an f32 `compute`.
    if supports(qkv.device(), qkv.dtype()) && compute == DType::F32 {
        // CPU tensors: nothing crosses a bus.
        let bias = key_bias.flatten_all()?.to_vec1::<f32>()?;
        let visible = HostVisibility::of(visible)?;
        if let Some(s) = &visible.segments {
            if s.len() != bias.len() {
                candle_core::bail!(
                    "attention: {} segment ids for {} tokens",
                    s.len(),
                    bias.len()
                );
            }
        }
        let op = FusedAttention::new(heads, bias, visible, dropout);
        return qkv.contiguous()?.apply_op1(op);
    }
    let (len, head_dim) = (qkv.dim(1)?, qkv.dim(2)? / 3 / heads.max(1));
    if supports_cuda("attention", qkv.device(), qkv.dtype())
        && super::attention_rows::fits(len, head_dim)
    {
        return super::attention_rows(qkv, heads, key_bias, visible, dropout);
    }
    attention_composed(qkv, heads, key_bias, visible, dropout, compute)
}

/// [`attention`] from tensor ops (any device).
pub fn attention_composed(
    qkv: &Tensor,
    heads: usize,
    key_bias: &Tensor,
    visible: &Visibility,
    dropout: Option<DropoutMask>,
    compute: DType,
) -> Result<Tensor> {
    let (b, l, three_h) = qkv.dims3()?;
    let h = three_h / 3;
    let dh = h / heads;
    let split = |block: usize| -> Result<Tensor> {
        qkv.narrow(2, block * h, h)?
            .reshape((b, l, heads, dh))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(0)?, split(1)?, split(2)?);
    let scale = 1.0 / (dh as f64).sqrt();
    // Scores, softmax and dropout in f32 whatever the activations' dtype (bf16 rounds the
    // probabilities once, for the value product).
    let scores = (matmul_in(&q, &k.t()?.contiguous()?, compute)?.to_dtype(DType::F32)? * scale)?
        .broadcast_add(&key_bias.to_dtype(DType::F32)?.reshape((b, 1, 1, l))?)?;
    let scores = match visible.dense(b, l, qkv.device())? {
        Some(mask) => scores.broadcast_add(&mask)?,
        None => scores,
    };
    let mut probs = softmax_last_dim(&scores)?;
    if let Some(mask) = dropout {
        probs = mask.apply(&probs)?;
    }
    matmul_in(&probs.to_dtype(qkv.dtype())?, &v, compute)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, l, h))
}

/// Attention over fused projections `qkv` `[B, L, 3H]` (query, key, value blocks of H columns,
/// heads of `H / heads` columns each) → context `[B, L, H]`.
struct FusedAttention {
    heads: usize,
    /// `[B · L]` additive bias on the keys (0 for tokens, large negative for padding).
    key_bias: Arc<Vec<f32>>,
    /// Keys each query may see.
    visible: HostVisibility,
    /// The dropout mask of the `[B · heads · L · L]` probabilities; `None` = none.
    dropout: Option<DropoutMask>,
    /// Softmax probabilities `[B · heads · L · L]` (before dropout), kept for the backward.
    probs: Mutex<Option<Arc<Vec<f32>>>>,
}

impl FusedAttention {
    /// The op for `heads` heads, key bias `[B·L]` and an optional dropout mask.
    fn new(
        heads: usize,
        key_bias: Vec<f32>,
        visible: HostVisibility,
        dropout: Option<DropoutMask>,
    ) -> Self {
        FusedAttention {
            heads,
            key_bias: Arc::new(key_bias),
            visible,
            dropout,
            probs: Mutex::new(None),
        }
    }
}

/// The dimensions of one call.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    len: usize,
    hidden: usize,
    heads: usize,
    head_dim: usize,
}

impl Dims {
    fn of(l: &Layout, heads: usize, what: &str) -> Result<Self> {
        let &[batch, len, three_h] = l.dims() else {
            candle_core::bail!("{what}: expected [B, L, 3H], got {:?}", l.dims())
        };
        let hidden = three_h / 3;
        if three_h % 3 != 0 || heads == 0 || hidden % heads != 0 {
            candle_core::bail!("{what}: width {three_h} is not 3 × a multiple of {heads} heads");
        }
        Ok(Dims {
            batch,
            len,
            hidden,
            heads,
            head_dim: hidden / heads,
        })
    }

    /// Offset of head `h`'s columns of block `block` (0 = query, 1 = key, 2 = value) in sequence
    /// `b` of the `[B, L, 3H]` tensor; rows are `3H` apart.
    fn qkv_offset(&self, b: usize, h: usize, block: usize) -> usize {
        b * self.len * 3 * self.hidden + block * self.hidden + h * self.head_dim
    }

    /// Offset of head `h`'s columns in sequence `b` of a `[B, L, H]` tensor; rows are `H` apart.
    fn ctx_offset(&self, b: usize, h: usize) -> usize {
        b * self.len * self.hidden + h * self.head_dim
    }

    fn tasks(&self) -> usize {
        self.batch * self.heads
    }

    /// The scores' scale, 1/√head_dim.
    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// Task `task`'s `[L, L]` block of the dropout factors, if any, drawn into `buf` (elements
/// `task · L² ..` of the probabilities).
fn task_factors<'a>(
    dropout: &Option<DropoutMask>,
    task: usize,
    buf: &'a mut [f32],
) -> Option<&'a [f32]> {
    let mask = dropout.as_ref()?;
    mask.fill_factors((task * buf.len()) as u64, buf);
    Some(buf)
}

/// The probabilities after dropout: `p` itself without factors, else `p ⊙ factors` in `scratch`.
fn dropped<'a>(p: &'a [f32], factors: Option<&[f32]>, scratch: &'a mut [f32]) -> &'a [f32] {
    match factors {
        Some(m) => {
            scratch
                .iter_mut()
                .zip(p.iter().zip(m))
                .for_each(|(w, (p, m))| *w = p * m);
            scratch
        }
        None => p,
    }
}

fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    Ok(super::rows::f32_rows(s, l, what)?.0)
}

/// A pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every task writes only its own (sequence, head) columns; see the callers.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer `offset` elements on (a method, so closures capture the whole `Sync` struct).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// A strided matrix view: pointer, row stride, column stride (in elements).
#[derive(Clone, Copy)]
struct View(*const f32, isize, isize);

impl View {
    fn t(self) -> View {
        View(self.0, self.2, self.1)
    }
}

/// `dst [m, n] (row stride dst_rs) = alpha · lhs [m, k] · rhs [k, n]`, single-threaded.
///
/// # Safety
/// The views must address `m×k`, `k×n` and `m×n` valid elements; `dst` must not overlap them.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    lhs: View,
    rhs: View,
    alpha: f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs,
            false,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            0.0,
            alpha,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

impl CustomOp1 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    // Kept whole: one kernel, its loop nest and buffers in one place.
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = Dims::of(l, self.heads, "attention")?;
        let qkv = f32_data(s, l, "attention")?;
        let (len, lsq) = (d.len, d.len * d.len);
        if self.key_bias.len() != d.batch * len {
            candle_core::bail!(
                "attention: key bias of {} for {}×{len}",
                self.key_bias.len(),
                d.batch
            );
        }
        let mut ctx = vec![0f32; d.batch * len * d.hidden];
        let mut probs = vec![0f32; d.tasks() * lsq];
        let out = SharedMut(ctx.as_mut_ptr());
        let rs = 3 * d.hidden as isize;
        let scale = d.scale();
        probs.par_chunks_mut(lsq).enumerate().for_each_init(
            || (vec![0f32; lsq], vec![0f32; lsq]),
            |(scratch, factors), (task, p)| {
                let (b, h) = (task / d.heads, task % d.heads);
                let q = View(qkv[d.qkv_offset(b, h, 0)..].as_ptr(), rs, 1);
                let k = View(qkv[d.qkv_offset(b, h, 1)..].as_ptr(), rs, 1);
                let v = View(qkv[d.qkv_offset(b, h, 2)..].as_ptr(), rs, 1);
                // SAFETY: q, k, v address len×head_dim elements inside `qkv`; `p` is len×len.
                unsafe {
                    matmul(
                        len,
                        len,
                        d.head_dim,
                        p.as_mut_ptr(),
                        len as isize,
                        q,
                        k.t(),
                        scale,
                    )
                };
                let bias = &self.key_bias[b * len..(b + 1) * len];
                for (i, row) in p.chunks_mut(len).enumerate() {
                    row.iter_mut().zip(bias).for_each(|(s, &m)| *s += m);
                    if self.visible.restricts() {
                        self.visible.hide(b, len, i, row);
                    }
                }
                super::vmath::softmax_rows(p, len);
                let weights = dropped(p, task_factors(&self.dropout, task, factors), scratch);
                let dst = out.at(d.ctx_offset(b, h));
                // SAFETY: this task alone writes rows of sequence b, columns of head h of `ctx`.
                unsafe {
                    matmul(
                        len,
                        d.head_dim,
                        len,
                        dst,
                        d.hidden as isize,
                        View(weights.as_ptr(), len as isize, 1),
                        v,
                        1.0,
                    )
                };
            },
        );
        *self.probs.lock().expect("attention probabilities lock") = Some(Arc::new(probs));
        Ok((CpuStorage::F32(ctx), Shape::from((d.batch, len, d.hidden))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let Some(probs) = self
            .probs
            .lock()
            .expect("attention probabilities lock")
            .clone()
        else {
            candle_core::bail!("attention backward before forward")
        };
        let back = FusedAttentionBackward {
            heads: self.heads,
            dropout: self.dropout,
            probs,
        };
        Ok(Some(
            arg.contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &back)?,
        ))
    }
}

/// Inputs (qkv `[B, L, 3H]`, d context `[B, L, H]`) → d qkv `[B, L, 3H]`.
struct FusedAttentionBackward {
    heads: usize,
    dropout: Option<DropoutMask>,
    probs: Arc<Vec<f32>>,
}

impl CustomOp2 for FusedAttentionBackward {
    fn name(&self) -> &'static str {
        "fused-attention-bwd"
    }

    // Kept whole: one kernel, its loop nest and buffers in one place.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::of(l1, self.heads, "attention bwd")?;
        let qkv = f32_data(s1, l1, "attention bwd")?;
        let dctx = f32_data(s2, l2, "attention bwd")?;
        let (len, lsq) = (d.len, d.len * d.len);
        if dctx.len() != d.batch * len * d.hidden || self.probs.len() != d.tasks() * lsq {
            candle_core::bail!("attention bwd: gradient or probabilities of the wrong size");
        }
        let mut dqkv = vec![0f32; qkv.len()];
        let out = SharedMut(dqkv.as_mut_ptr());
        let rs = 3 * d.hidden as isize;
        let scale = d.scale();
        (0..d.tasks()).into_par_iter().for_each_init(
            || (vec![0f32; lsq], vec![0f32; lsq], vec![0f32; lsq]),
            |(scratch, ds, factors), task| {
                let (b, h) = (task / d.heads, task % d.heads);
                let p = &self.probs[task * lsq..(task + 1) * lsq];
                let q = View(qkv[d.qkv_offset(b, h, 0)..].as_ptr(), rs, 1);
                let k = View(qkv[d.qkv_offset(b, h, 1)..].as_ptr(), rs, 1);
                let v = View(qkv[d.qkv_offset(b, h, 2)..].as_ptr(), rs, 1);
                let dout = View(dctx[d.ctx_offset(b, h)..].as_ptr(), d.hidden as isize, 1);
                let (dq, dk, dv) = (
                    out.at(d.qkv_offset(b, h, 0)),
                    out.at(d.qkv_offset(b, h, 1)),
                    out.at(d.qkv_offset(b, h, 2)),
                );
                let mask = task_factors(&self.dropout, task, factors);
                let weights = dropped(p, mask, scratch);
                // SAFETY: views address len×head_dim elements of `qkv`/`dctx` or len×len scratch;
                // this task alone writes rows of sequence b, columns of head h of each block.
                unsafe {
                    // d weights = d out · vᵀ;  d v = weightsᵀ · d out.
                    matmul(
                        len,
                        len,
                        d.head_dim,
                        ds.as_mut_ptr(),
                        len as isize,
                        dout,
                        v.t(),
                        1.0,
                    );
                    matmul(
                        len,
                        d.head_dim,
                        len,
                        dv,
                        rs,
                        View(weights.as_ptr(), len as isize, 1).t(),
                        dout,
                        1.0,
                    );
                }
                // d scores = scale · p ⊙ (dp − Σ dp ⊙ p), with dp = d weights ⊙ dropout factors.
                if let Some(m) = mask {
                    ds.iter_mut().zip(m).for_each(|(g, m)| *g *= m);
                }
                super::vmath::softmax_backward_rows(ds, p, len, scale);
                let ds_view = View(ds.as_ptr(), len as isize, 1);
                // SAFETY: as above.
                unsafe {
                    // d q = d scores · k;  d k = d scoresᵀ · q.
                    matmul(len, d.head_dim, len, dq, rs, ds_view, k, 1.0);
                    matmul(len, d.head_dim, len, dk, rs, ds_view.t(), q, 1.0);
                }
            },
        );
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_same_op, max_abs_diff, tensor, var};
    use super::super::{Dropout, Site};
    use super::*;
    use candle_core::Device;

    /// The kernel equals the composed attention, forward and backward, with padded keys and with
    /// and without dropout factors.
    #[test]
    fn kernel_matches_composed_attention() {
        let (b, l, h, heads) = (3usize, 7usize, 12usize, 3usize);
        let qkv = var(&[b, l, 3 * h], 1.5, 41);
        let mut mask = vec![0f32; b * l];
        mask[l - 2..l].fill(-10000.0); // padding at the end of the first row
        mask[2 * l + 1] = -10000.0; // and a padded key inside the third
        let key_bias = Tensor::from_vec(mask, (b, l), &Device::Cpu).unwrap();
        let probe = tensor(&[b, l, h], 1.0, 42);
        let grads = |y: &Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for p in [0.0, 0.3] {
            let mask = Dropout::new(5, &[0], p).mask(0, Site::AttentionProbs);
            let factors = (p > 0.0).then_some(mask);
            if p > 0.0 {
                let f = mask.factors(0, b * heads * l * l);
                assert!(f.contains(&0.0) && f.iter().any(|&v| v > 1.0));
            }
            let f32 = DType::F32;
            let all = Visibility::all();
            let yf = attention(qkv.as_tensor(), heads, &key_bias, &all, factors, f32).unwrap();
            let yc =
                attention_composed(qkv.as_tensor(), heads, &key_bias, &all, factors, f32).unwrap();
            assert_eq!(yf.dims(), &[b, l, h]);
            let d = max_abs_diff(&yf, &yc);
            assert!(d < 1e-5, "p = {p}: forward max difference {d}");
            let (gf, gc) = (grads(&yf), grads(&yc));
            let (gf, gc) = (
                gf.get(qkv.as_tensor()).unwrap(),
                gc.get(qkv.as_tensor()).unwrap(),
            );
            let d = max_abs_diff(gf, gc);
            assert!(d < 1e-5, "p = {p}: gradient max difference {d}");
            // Every block (query, key, value) gets a gradient.
            for block in 0..3 {
                let g = gf
                    .narrow(2, block * h, h)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap();
                assert!(g.to_scalar::<f32>().unwrap() > 0.0, "block {block}");
            }
        }
    }

    /// With a window, documents, or both, the kernel equals the composed attention forward and
    /// backward, and a hidden key changes nothing: perturbing the keys and values of another
    /// document (or beyond the window) leaves a query's output exactly as it was.
    #[test]
    fn windows_and_documents_match_composed_and_hide_keys() {
        let (b, l, h, heads) = (2usize, 9usize, 8usize, 2usize);
        let qkv = var(&[b, l, 3 * h], 1.0, 51);
        let key_bias = Tensor::zeros((b, l), DType::F32, &Device::Cpu).unwrap();
        let segments = Tensor::from_vec(
            vec![0u32, 0, 0, 0, 1, 1, 1, 1, 1, 5, 5, 5, 5, 5, 5, 5, 6, 6],
            (b, l),
            &Device::Cpu,
        )
        .unwrap();
        let rules = [
            Visibility::new(Some(2), None),
            Visibility::new(None, Some(segments.clone())),
            Visibility::new(Some(1), Some(segments.clone())),
        ];
        for rule in &rules {
            assert_same_op(
                || attention(qkv.as_tensor(), heads, &key_bias, rule, None, DType::F32).unwrap(),
                || {
                    attention_composed(qkv.as_tensor(), heads, &key_bias, rule, None, DType::F32)
                        .unwrap()
                },
                &[&qkv],
                1e-5,
            );
        }
        // Query 1 of row 0 (document 0, window radius 1) sees keys 0..=2 only: change keys 4..
        // (document 1) and key 3 (outside the window) and its context stays bit for bit.
        let rule = &rules[2];
        let base = qkv.as_tensor().to_vec3::<f32>().unwrap();
        let mut changed = base.clone();
        for token in &mut changed[0][3..] {
            token[h..].iter_mut().for_each(|v| *v += 3.0);
        }
        let flat = |v: Vec<Vec<Vec<f32>>>| {
            Tensor::from_vec(v.concat().concat(), (b, l, 3 * h), &Device::Cpu).unwrap()
        };
        let run = |t: &Tensor| {
            attention(t, heads, &key_bias, rule, None, DType::F32)
                .unwrap()
                .to_vec3::<f32>()
                .unwrap()
        };
        let (y0, y1) = (run(&flat(base)), run(&flat(changed)));
        assert_eq!(y0[0][1], y1[0][1]);
        assert_ne!(y0[0][3], y1[0][3], "the test must be able to fail");
    }

    /// The short-row kernel's rule (key bias, segment id per token) is built once per rule and
    /// key bias: a second layer gets the same tensor; another key bias its own values.
    #[test]
    fn the_rows_rule_is_built_once_per_key_bias() {
        let dev = Device::Cpu;
        let segments = Tensor::from_vec(vec![0u32, 0, 1, 1], (1, 4), &dev).unwrap();
        let rule = Visibility::new(None, Some(segments));
        let bias = Tensor::from_vec(vec![0f32, 0.0, -1e4, 0.0], (1, 4), &dev).unwrap();
        let first = rule.rows_rule(&bias, 1, 4).unwrap();
        let again = rule.rows_rule(&bias, 1, 4).unwrap();
        assert_eq!(first.id(), again.id());
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&first), [0.0, 0.0, 0.0, 0.0, -1e4, 1.0, 0.0, 1.0]);
        let other = (&bias * 2.0).unwrap();
        let built = rule.rows_rule(&other, 1, 4).unwrap();
        assert_eq!(flat(&built), [0.0, 0.0, 0.0, 0.0, -2e4, 1.0, 0.0, 1.0]);
        // Without segments, every token's segment is 0.
        let plain = Visibility::all().rows_rule(&bias, 1, 4).unwrap();
        assert_eq!(flat(&plain), [0.0, 0.0, 0.0, 0.0, -1e4, 0.0, 0.0, 0.0]);
    }
}
