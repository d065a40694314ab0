//! Attention for short rows (L ≤ [`MAX_LEN`]): one op whose CUDA kernel (`kernels/attention.cu`)
//! and CPU twin here do the same f32 arithmetic in the same order, so `trainer device-check` can
//! compare them bit for bit.
//!
//! The visibility rule is index arithmetic over per-token segment ids and the window radius (no
//! dense mask), dropout on the probabilities is Philox's rule at the `[B, heads, L, L]` element
//! index (the same masks as the composed path), and the backward recomputes the probabilities
//! instead of storing them: a first pass per query row gives dQ and the row's (max, sum,
//! D = Σ p·dp), a second per key row gives dK and dV. The twin follows the kernel's warp layout:
//! lane l of 32 sums keys l, l + 32, … in order, then lanes combine by the butterfly the kernel's
//! shuffles make; dot products run in index order with fused multiply-adds.
//!
//! On the CPU the production kernel is `attention.rs`'s (gemm products, faster there); this twin
//! serves the tests and the device check.

use super::rows::{butterfly, LANES};
use super::{vmath, DropoutMask, Visibility};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The longest row the kernel takes (its shared memory holds two rows of scores per warp).
pub const MAX_LEN: usize = 1024;
/// The widest head the kernel takes.
pub const MAX_HEAD_DIM: usize = 256;
/// `radius` meaning no window.
const NO_WINDOW: u32 = u32::MAX;

/// Whether the kernel takes rows of `len` tokens and heads of `head_dim` columns.
pub fn fits(len: usize, head_dim: usize) -> bool {
    len <= MAX_LEN && head_dim <= MAX_HEAD_DIM && head_dim > 0
}

/// Attention over `qkv` `[B, L, 3H]` (f32 or bf16) through this op on `qkv`'s device: the
/// arguments are [`super::attention`]'s. Differentiable (the backward is [`attention_rows_backward`]).
pub fn attention_rows(
    qkv: &Tensor,
    heads: usize,
    key_bias: &Tensor,
    visible: &Visibility,
    dropout: Option<DropoutMask>,
) -> Result<Tensor> {
    let (op, rule) = RowsAttention::of(qkv, heads, key_bias, visible, dropout)?;
    qkv.contiguous()?.apply_op2(&rule, op)
}

/// The backward of [`attention_rows`]: the gradient of `<attention_rows(qkv, ..), dctx>` with
/// respect to `qkv`, `[B, L, 3H]`. What `trainer device-check` compares across devices.
pub fn attention_rows_backward(
    qkv: &Tensor,
    heads: usize,
    key_bias: &Tensor,
    visible: &Visibility,
    dropout: Option<DropoutMask>,
    dctx: &Tensor,
) -> Result<Tensor> {
    let (op, rule) = RowsAttention::of(qkv, heads, key_bias, visible, dropout)?;
    op.backward(qkv, &rule, dctx)
}

/// One call's constants: heads, the window, whether segments restrict, the dropout key.
#[derive(Clone, Copy, Debug)]
pub(super) struct RowsAttention {
    pub heads: usize,
    pub radius: u32,
    pub use_segments: bool,
    pub dropout: Option<DropoutMask>,
}

impl RowsAttention {
    /// The op and its rule tensor `[B, L, 2]` f32 (key bias, segment id) on `qkv`'s device.
    fn of(
        qkv: &Tensor,
        heads: usize,
        key_bias: &Tensor,
        visible: &Visibility,
        dropout: Option<DropoutMask>,
    ) -> Result<(Self, Tensor)> {
        let (b, l, three_h) = qkv.dims3()?;
        if three_h % 3 != 0 || heads == 0 || (three_h / 3) % heads != 0 {
            candle_core::bail!("attention: width {three_h} is not 3 × a multiple of {heads} heads");
        }
        if !fits(l, three_h / 3 / heads) {
            candle_core::bail!(
                "attention: rows of {l} with heads of {} exceed the short-row kernel",
                three_h / 3 / heads
            );
        }
        let rule = visible.rows_rule(key_bias, b, l)?;
        let radius = match visible.radius {
            Some(r) => u32::try_from(r).unwrap_or(NO_WINDOW - 1),
            None => NO_WINDOW,
        };
        let op = RowsAttention {
            heads,
            radius,
            use_segments: visible.segments.is_some(),
            dropout: dropout.filter(|m| m.p > 0.0),
        };
        Ok((op, rule))
    }

    /// d qkv from (qkv, the rule, d context): the backward kernels.
    fn backward(self, qkv: &Tensor, rule: &Tensor, dctx: &Tensor) -> Result<Tensor> {
        qkv.contiguous()?
            .apply_op3_no_bwd(rule, &dctx.contiguous()?, &RowsAttentionBackward(self))
    }

    /// The Philox key words, the drop threshold and the keep factor (threshold 0: no dropout).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn dropout_words(&self) -> (u32, u32, u32, f32) {
        match &self.dropout {
            Some(m) => {
                let (threshold, keep) = m.threshold_and_keep();
                (m.key as u32, (m.key >> 32) as u32, threshold, keep)
            }
            None => (0, 0, 0, 1.0),
        }
    }
}

/// The CPU twin's view of one call.
pub(super) struct Rows<'a> {
    qkv: &'a [f32],
    rule: &'a [f32],
    batch: usize,
    len: usize,
    hidden: usize,
    heads: usize,
    dh: usize,
    scale: f32,
    op: RowsAttention,
}

impl Rows<'_> {
    fn row(&self) -> usize {
        3 * self.hidden
    }

    /// Head `h`'s columns of block `block` (0 query, 1 key, 2 value) at token `t` of sequence `b`.
    #[inline(always)]
    fn head(&self, b: usize, t: usize, block: usize, h: usize) -> &[f32] {
        let at = (b * self.len + t) * self.row() + block * self.hidden + h * self.dh;
        &self.qkv[at..at + self.dh]
    }

    #[inline(always)]
    fn sees(&self, b: usize, i: usize, j: usize) -> bool {
        let rule = &self.rule[b * self.len * 2..];
        (self.op.radius == NO_WINDOW || i.abs_diff(j) <= self.op.radius as usize)
            && (!self.op.use_segments || rule[2 * i + 1] == rule[2 * j + 1])
    }

    #[inline(always)]
    fn score(&self, b: usize, i: usize, j: usize, dot: f32) -> f32 {
        if !self.sees(b, i, j) {
            return f32::NEG_INFINITY;
        }
        dot * self.scale + self.rule[(b * self.len + j) * 2]
    }

    /// Query row `i`'s dropout factors (element index in `[B, heads, L, L]`).
    fn factors(&self, b: usize, h: usize, i: usize) -> Vec<f32> {
        let first = (((b * self.heads + h) * self.len + i) * self.len) as u64;
        match &self.op.dropout {
            Some(m) => m.factors(first, self.len),
            None => vec![1.0; self.len],
        }
    }

    /// The kernel's `softmax_row`: scores of query `i` into `w`, then `exp(s - max)`; returns
    /// (max, sum).
    #[inline(always)]
    fn softmax_row(&self, b: usize, h: usize, i: usize, w: &mut [f32]) -> (f32, f32) {
        let q = self.head(b, i, 0, h);
        dots(q, |j| self.head(b, j, 1, h), w);
        let mut maxes = [f32::NEG_INFINITY; LANES];
        for (j, wj) in w.iter_mut().enumerate() {
            let s = self.score(b, i, j, *wj);
            *wj = s;
            maxes[j % LANES] = maxes[j % LANES].max(s);
        }
        let m = butterfly(maxes, f32::max);
        let mut parts = [0f32; LANES];
        for (j, wj) in w.iter_mut().enumerate() {
            let e = if m == f32::NEG_INFINITY {
                0.0
            } else {
                vmath::exp(*wj - m)
            };
            *wj = e;
            parts[j % LANES] += e;
        }
        (m, butterfly(parts, |a, b| a + b))
    }
}

/// Σ a·b in index order with fused multiply-adds from 0 (the kernel's dot products).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0, |acc, (x, y)| x.mul_add(*y, acc))
}

/// `out[j] = dot(a, row(j))` for every j, eight rows at a time: each is [`dot`]'s chain (index
/// order from 0), interleaved so the chains run side by side.
#[inline(always)]
fn dots<'a>(a: &[f32], row: impl Fn(usize) -> &'a [f32], out: &mut [f32]) {
    const BLOCK: usize = 8;
    let full = out.len() / BLOCK * BLOCK;
    for (c, chunk) in out[..full].chunks_mut(BLOCK).enumerate() {
        let rows: [&[f32]; BLOCK] = std::array::from_fn(|r| row(c * BLOCK + r));
        let mut acc = [0f32; BLOCK];
        for (d, &x) in a.iter().enumerate() {
            for (s, r) in acc.iter_mut().zip(&rows) {
                *s = x.mul_add(r[d], *s);
            }
        }
        chunk.copy_from_slice(&acc);
    }
    for (j, o) in out.iter_mut().enumerate().skip(full) {
        *o = dot(a, row(j));
    }
}

/// Probability from a score and its row's (max, sum): the kernel's `prob`.
#[inline(always)]
fn prob(s: f32, m: f32, sum: f32) -> f32 {
    if m == f32::NEG_INFINITY {
        0.0
    } else {
        vmath::exp(s - m) / sum
    }
}

/// The f32 values of a contiguous f32 or bf16 CPU tensor, and its dtype.
fn f32_values(s: &CpuStorage, l: &Layout, what: &str) -> Result<(Vec<f32>, DType)> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: contiguous input only")
    };
    Ok(match s {
        CpuStorage::F32(v) => (v[a..b].to_vec(), DType::F32),
        CpuStorage::BF16(v) => (v[a..b].iter().map(|x| x.to_f32()).collect(), DType::BF16),
        _ => candle_core::bail!("{what}: f32 or bf16 only"),
    })
}

/// `values` stored in `dtype` (bf16 rounds to nearest even, as the kernel's stores).
fn storage_of(values: Vec<f32>, dtype: DType) -> CpuStorage {
    match dtype {
        DType::BF16 => CpuStorage::BF16(values.into_iter().map(half::bf16::from_f32).collect()),
        _ => CpuStorage::F32(values),
    }
}

/// The twin's inputs checked against the op.
fn rows_of<'a>(
    op: RowsAttention,
    (qkv, l): (&'a [f32], &Layout),
    rule: &'a [f32],
) -> Result<Rows<'a>> {
    let &[batch, len, three_h] = l.dims() else {
        candle_core::bail!("attention: expected [B, L, 3H], got {:?}", l.dims())
    };
    let hidden = three_h / 3;
    let dh = hidden / op.heads;
    if rule.len() != batch * len * 2 || !fits(len, dh) {
        candle_core::bail!("attention: rule of {} values for {batch}×{len}", rule.len());
    }
    Ok(Rows {
        qkv,
        rule,
        batch,
        len,
        hidden,
        heads: op.heads,
        dh,
        scale: 1.0 / (dh as f32).sqrt(),
        op,
    })
}

vmath::dispatched! {
    /// Query row `i` of head `h` in sequence `b`: the kernel's `attention_fwd`, into `out` (dh).
    pub fn forward_row(r: &Rows, at: (usize, usize, usize), out: &mut [f32]) {
        let (b, h, i) = at;
        let mut w = vec![0f32; r.len];
        let (m, sum) = r.softmax_row(b, h, i, &mut w);
        for (wj, f) in w.iter_mut().zip(r.factors(b, h, i)) {
            let p = if m == f32::NEG_INFINITY { 0.0 } else { *wj / sum };
            *wj = p * f;
        }
        // Each output column accumulates over keys in order (the kernel's per-lane loop).
        out.fill(0.0);
        for (j, &wj) in w.iter().enumerate() {
            for (o, &v) in out.iter_mut().zip(r.head(b, j, 2, h)) {
                *o = wj.mul_add(v, *o);
            }
        }
    }
}

vmath::dispatched! {
    /// Query row `i`: the kernel's `attention_bwd_q`, dQ into `dq` (dh); returns the row's
    /// (max, sum, D).
    pub fn backward_q_row(
        r: &Rows,
        at: (usize, usize, usize),
        g: &[f32],
        dq: &mut [f32]
    ) -> [f32; 3] {
        let (b, h, i) = at;
        let mut p = vec![0f32; r.len];
        let (m, sum) = r.softmax_row(b, h, i, &mut p);
        let mut ds = vec![0f32; r.len];
        dots(g, |j| r.head(b, j, 2, h), &mut ds);
        let mut parts = [0f32; LANES];
        for (j, f) in r.factors(b, h, i).into_iter().enumerate() {
            let pj = if m == f32::NEG_INFINITY { 0.0 } else { p[j] / sum };
            let dp = ds[j] * f;
            p[j] = pj;
            ds[j] = dp;
            parts[j % LANES] = pj.mul_add(dp, parts[j % LANES]);
        }
        let big_d = butterfly(parts, |a, b| a + b);
        ds.iter_mut().zip(&p).for_each(|(d, &pj)| *d = pj * (*d - big_d));
        dq.fill(0.0);
        for (j, &dsj) in ds.iter().enumerate() {
            for (o, &k) in dq.iter_mut().zip(r.head(b, j, 1, h)) {
                *o = dsj.mul_add(k, *o);
            }
        }
        dq.iter_mut().for_each(|o| *o *= r.scale);
        [m, sum, big_d]
    }
}

vmath::dispatched! {
    /// Key row `j`: the kernel's `attention_bwd_kv`, dK and dV into `dk`, `dv` (dh each), from
    /// the query rows' `stats` (max, sum, D) and the context gradient `grad(i)` of each query.
    pub fn backward_kv_row(
        r: &Rows,
        at: (usize, usize, usize),
        stats: &[[f32; 3]],
        dctx: &[f32],
        dk: &mut [f32],
        dv: &mut [f32]
    ) {
        let (b, h, j) = at;
        let grad = |i: usize| {
            let at = (b * r.len + i) * r.hidden + h * r.dh;
            &dctx[at..at + r.dh]
        };
        let (k, v) = (r.head(b, j, 1, h), r.head(b, j, 2, h));
        let (mut w, mut ds) = (vec![0f32; r.len], vec![0f32; r.len]);
        // q_i · k and dO_i · v: the query pass's products with each product's factors swapped,
        // which fma rounds identically.
        let (mut qks, mut gvs) = (vec![0f32; r.len], vec![0f32; r.len]);
        dots(k, |i| r.head(b, i, 0, h), &mut qks);
        dots(v, grad, &mut gvs);
        for i in 0..r.len {
            let (qk, gv) = (qks[i], gvs[i]);
            let [m, sum, big_d] = stats[i];
            let pij = prob(r.score(b, i, j, qk), m, sum);
            let f = r.factor_at(b, h, i, j);
            w[i] = pij * f;
            ds[i] = pij * (gv * f - big_d);
        }
        dk.fill(0.0);
        dv.fill(0.0);
        for i in 0..r.len {
            for (o, &q) in dk.iter_mut().zip(r.head(b, i, 0, h)) {
                *o = ds[i].mul_add(q, *o);
            }
            for (o, &g) in dv.iter_mut().zip(grad(i)) {
                *o = w[i].mul_add(g, *o);
            }
        }
        dk.iter_mut().for_each(|o| *o *= r.scale);
    }
}

/// Every (sequence, head, row) of a call, in the `[B, heads, L]` order.
fn tasks(r: &Rows) -> Vec<(usize, usize, usize)> {
    (0..r.batch)
        .flat_map(|b| (0..r.heads).flat_map(move |h| (0..r.len).map(move |i| (b, h, i))))
        .collect()
}

/// The twin's forward: context `[B, L, H]` as f32.
fn forward(r: &Rows) -> Vec<f32> {
    let tasks = tasks(r);
    let rows: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&t| {
            let mut out = vec![0f32; r.dh];
            forward_row(r, t, &mut out);
            out
        })
        .collect();
    let mut ctx = vec![0f32; r.batch * r.len * r.hidden];
    for (&(b, h, i), out) in tasks.iter().zip(rows) {
        let at = (b * r.len + i) * r.hidden + h * r.dh;
        ctx[at..at + r.dh].copy_from_slice(&out);
    }
    ctx
}

/// The twin's backward: d qkv `[B, L, 3H]` as f32 from d context (f32 values of `[B, L, H]`).
fn backward(r: &Rows, dctx: &[f32]) -> Vec<f32> {
    let tasks = tasks(r);
    // First pass (the kernel's bwd_q): dQ and each query row's (max, sum, D).
    let first: Vec<(Vec<f32>, [f32; 3])> = tasks
        .par_iter()
        .map(|&(b, h, i)| {
            let at = (b * r.len + i) * r.hidden + h * r.dh;
            let mut dq = vec![0f32; r.dh];
            let stats = backward_q_row(r, (b, h, i), &dctx[at..at + r.dh], &mut dq);
            (dq, stats)
        })
        .collect();
    let stats: Vec<[f32; 3]> = first.iter().map(|f| f.1).collect();
    // Second pass (bwd_kv): dK and dV per key row, from the stats.
    let second: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(b, h, j)| {
            let (mut dk, mut dv) = (vec![0f32; r.dh], vec![0f32; r.dh]);
            let row_stats = &stats[(b * r.heads + h) * r.len..][..r.len];
            backward_kv_row(r, (b, h, j), row_stats, dctx, &mut dk, &mut dv);
            (dk, dv)
        })
        .collect();
    let mut dqkv = vec![0f32; r.qkv.len()];
    for (t, &(b, h, i)) in tasks.iter().enumerate() {
        let base = (b * r.len + i) * r.row() + h * r.dh;
        dqkv[base..base + r.dh].copy_from_slice(&first[t].0);
        let (dk, dv) = &second[t];
        dqkv[base + r.hidden..base + r.hidden + r.dh].copy_from_slice(dk);
        dqkv[base + 2 * r.hidden..base + 2 * r.hidden + r.dh].copy_from_slice(dv);
    }
    dqkv
}

impl Rows<'_> {
    /// The dropout factor of element (i, j) of head `h` in sequence `b`.
    fn factor_at(&self, b: usize, h: usize, i: usize, j: usize) -> f32 {
        match &self.op.dropout {
            Some(m) => {
                let mut f = [0f32];
                m.fill_factors(
                    (((b * self.heads + h) * self.len + i) * self.len + j) as u64,
                    &mut f,
                );
                f[0]
            }
            None => 1.0,
        }
    }
}

impl CustomOp2 for RowsAttention {
    fn name(&self) -> &'static str {
        "attention-rows"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        rule: &CpuStorage,
        lr: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (qkv, dtype) = f32_values(s, l, "attention")?;
        let (rule, _) = f32_values(rule, lr, "attention rule")?;
        let r = rows_of(*self, (&qkv, l), &rule)?;
        let shape = Shape::from((r.batch, r.len, r.hidden));
        Ok((storage_of(forward(&r), dtype), shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
        rule: &candle_core::CudaStorage,
        lr: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::attention_rows((s, l), (rule, lr), self)
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        rule: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dqkv = self.backward(qkv, rule, grad)?;
        Ok((Some(dqkv), None))
    }
}

/// (qkv, rule, d context) → d qkv.
struct RowsAttentionBackward(RowsAttention);

impl CustomOp3 for RowsAttentionBackward {
    fn name(&self) -> &'static str {
        "attention-rows-bwd"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        rule: &CpuStorage,
        lr: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (qkv, dtype) = f32_values(s, l, "attention bwd")?;
        let (rule, _) = f32_values(rule, lr, "attention bwd rule")?;
        let (dctx, _) = f32_values(g, lg, "attention bwd gradient")?;
        let r = rows_of(self.0, (&qkv, l), &rule)?;
        if dctx.len() != r.batch * r.len * r.hidden {
            candle_core::bail!("attention bwd: gradient of {} values", dctx.len());
        }
        Ok((storage_of(backward(&r, &dctx), dtype), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
        rule: &candle_core::CudaStorage,
        lr: &Layout,
        g: &candle_core::CudaStorage,
        lg: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::attention_rows_backward((s, l), (rule, lr), (g, lg), &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        assert_finite_differences, assert_kernels_are_the_op, assert_same_op, tensor, var,
    };
    use super::super::{attention_composed, Dropout, Site};
    use super::*;
    use candle_core::Device;

    /// Key bias with padded keys (the end of row 0, one key inside row 1).
    fn key_bias(b: usize, l: usize) -> Tensor {
        let mut bias = vec![0f32; b * l];
        bias[l - 3..l].fill(-10000.0);
        bias[l + 4] = -10000.0;
        Tensor::from_vec(bias, (b, l), &Device::Cpu).unwrap()
    }

    /// Documents of 17, 9, … tokens per row (segment ids restart at 0 each row).
    fn segments(b: usize, l: usize) -> Tensor {
        let ids: Vec<u32> = (0..b * l)
            .map(|t| {
                let i = t % l;
                if i < 17 {
                    0
                } else {
                    1 + (i - 17) as u32 / 9
                }
            })
            .collect();
        Tensor::from_vec(ids, (b, l), &Device::Cpu).unwrap()
    }

    /// The rules both architectures use: every key (BERT), documents (pack-docs), a window
    /// (ModernBERT's local layers), documents and a window.
    fn rules(b: usize, l: usize) -> Vec<(&'static str, Visibility)> {
        vec![
            ("all", Visibility::all()),
            ("documents", Visibility::new(None, Some(segments(b, l)))),
            ("window", Visibility::new(Some(5), None)),
            ("both", Visibility::new(Some(5), Some(segments(b, l)))),
        ]
    }

    /// The twin equals the composed attention forward and backward (gradients of all three
    /// blocks) under every rule, with and without dropout, at rows that end mid-warp (70 = 2·32
    /// + 6 keys) and heads of 8 and of 40 columns (more than a warp's lanes).
    #[test]
    fn the_twin_matches_composed_attention_under_every_rule() {
        for (b, l, h, heads) in [(2usize, 70usize, 16usize, 2usize), (2, 37, 80, 2)] {
            let qkv = var(&[b, l, 3 * h], 1.5, 61);
            let bias = key_bias(b, l);
            for (name, rule) in rules(b, l) {
                for p in [0.0, 0.25] {
                    let dropout = Some(Dropout::new(3, &[1], p).mask(2, Site::AttentionProbs))
                        .filter(|_| p > 0.0);
                    let x = qkv.as_tensor();
                    assert_same_op(
                        || attention_rows(x, heads, &bias, &rule, dropout).unwrap(),
                        || attention_composed(x, heads, &bias, &rule, dropout, DType::F32).unwrap(),
                        &[&qkv],
                        2e-5,
                    );
                    eprintln!("{name} p={p} [{b}, {l}, {h}] ok");
                }
            }
        }
    }

    /// The backward against central finite differences, with documents, a window and dropout.
    #[test]
    fn the_twin_backward_matches_finite_differences() {
        let (b, l, h, heads) = (1usize, 23usize, 8usize, 2usize);
        let bias = key_bias(b + 1, l).narrow(0, 1, 1).unwrap();
        let rule = Visibility::new(Some(6), Some(segments(b, l)));
        let dropout = Some(Dropout::new(9, &[0], 0.2).mask(0, Site::AttentionProbs));
        assert_finite_differences(&[b, l, 3 * h], 1.0, 71, |x| {
            attention_rows(x, heads, &bias, &rule, dropout).unwrap()
        });
    }

    /// The exposed backward is the op's gradient, bit for bit (what the device check compares).
    #[test]
    fn the_exposed_backward_is_the_ops_gradient() {
        let (b, l, h, heads) = (2usize, 33usize, 16usize, 2usize);
        let bias = key_bias(b, l);
        let rule = Visibility::new(Some(4), Some(segments(b, l)));
        let dropout = Some(Dropout::new(1, &[2], 0.1).mask(1, Site::AttentionProbs));
        assert_kernels_are_the_op(
            |x| attention_rows(x, heads, &bias, &rule, dropout).unwrap(),
            |x| attention_rows(x, heads, &bias, &rule, dropout).unwrap(),
            |x, dy| attention_rows_backward(x, heads, &bias, &rule, dropout, dy).unwrap(),
            (&[b, l, 3 * h], &[b, l, h]),
        );
    }

    /// bf16 storage: the f32 computation on the rounded inputs, rounded once at the store.
    #[test]
    fn bf16_is_the_f32_twin_rounded_once() {
        let (b, l, h, heads) = (2usize, 40usize, 16usize, 2usize);
        let x = tensor(&[b, l, 3 * h], 1.0, 81)
            .to_dtype(DType::BF16)
            .unwrap();
        let dy = tensor(&[b, l, h], 1.0, 82).to_dtype(DType::BF16).unwrap();
        let (x32, dy32) = (
            x.to_dtype(DType::F32).unwrap(),
            dy.to_dtype(DType::F32).unwrap(),
        );
        let bias = key_bias(b, l);
        let rule = Visibility::new(None, Some(segments(b, l)));
        let dropout = Some(Dropout::new(2, &[0], 0.1).mask(0, Site::AttentionProbs));
        let bits = |t: Tensor| {
            t.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let fwd = |x: &Tensor| attention_rows(x, heads, &bias, &rule, dropout).unwrap();
        assert_eq!(
            bits(fwd(&x)),
            bits(fwd(&x32).to_dtype(DType::BF16).unwrap())
        );
        let bwd = |x: &Tensor, dy: &Tensor| {
            attention_rows_backward(x, heads, &bias, &rule, dropout, dy).unwrap()
        };
        assert_eq!(
            bits(bwd(&x, &dy)),
            bits(bwd(&x32, &dy32).to_dtype(DType::BF16).unwrap())
        );
    }

    /// Rows longer than the kernel's are refused with the reason.
    #[test]
    fn rows_too_long_are_refused() {
        let x = Tensor::zeros((1, MAX_LEN + 1, 3 * 8), DType::F32, &Device::Cpu).unwrap();
        let bias = Tensor::zeros((1, MAX_LEN + 1), DType::F32, &Device::Cpu).unwrap();
        let err = attention_rows(&x, 1, &bias, &Visibility::all(), None).unwrap_err();
        assert!(
            err.to_string().contains("exceed the short-row kernel"),
            "{err}"
        );
    }
}
