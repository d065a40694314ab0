//! CPU kernels with their own backward pass for the hottest composed ops: softmax over the last
//! dimension, LayerNorm, cross-entropy, bias add and GELU. Each replaces several forward and
//! backward tensor ops (each a full pass over memory and a fresh allocation) with one pass forward
//! and one back.
//!
//! Used only for contiguous f32 tensors on the CPU; other devices take the composed path in
//! [`super::ops`].

use super::vmath;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The contiguous f32 data of a CPU tensor and its last dimension.
pub(super) fn f32_rows<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<(&'a [f32], usize)> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{what}: f32 only")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: contiguous input only")
    };
    let dim = *l.dims().last().unwrap_or(&1);
    Ok((&data[a..b], dim))
}

const ROWS_PER_TASK: usize = 64;

/// Σ of per-block partial sums, added in block order: rayon's `reduce` combines in a tree shaped
/// by work stealing, which would make the float result vary from run to run.
fn sum_in_order(partial: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    partial.iter().fold(vec![0f32; len], |mut acc, p| {
        acc.iter_mut().zip(p).for_each(|(a, &v)| *a += v);
        acc
    })
}

/// Applies `f(out_row, x_row)` to every row of length `dim`, rows split across the rayon pool.
fn map_rows(x: &[f32], dim: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(dim * ROWS_PER_TASK)
        .zip(x.par_chunks(dim * ROWS_PER_TASK))
        .for_each(|(o, x)| {
            for (o, x) in o.chunks_mut(dim).zip(x.chunks(dim)) {
                f(o, x);
            }
        });
    out
}

/// As [`map_rows`] over two inputs of the same shape: `f(out_row, a_row, b_row)`.
fn map_rows2(
    a: &[f32],
    b: &[f32],
    dim: usize,
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(dim * ROWS_PER_TASK)
        .zip(a.par_chunks(dim * ROWS_PER_TASK))
        .zip(b.par_chunks(dim * ROWS_PER_TASK))
        .for_each(|((o, a), b)| {
            for ((o, a), b) in o.chunks_mut(dim).zip(a.chunks(dim)).zip(b.chunks(dim)) {
                f(o, a, b);
            }
        });
    out
}

/// Softmax over the last dimension.
pub struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, dim) = f32_rows(s, l, "softmax")?;
        let out = map_rows(x, dim, |o, x| {
            o.copy_from_slice(x);
            vmath::softmax_rows(o, dim);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward)?,
        ))
    }
}

/// dx = y ⊙ (dy − Σ dy ⊙ y), row-wise; inputs (y, dy).
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-last-dim-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, dim) = f32_rows(s1, l1, "softmax bwd")?;
        let (dy, _) = f32_rows(s2, l2, "softmax bwd")?;
        let out = map_rows2(y, dy, dim, |o, y, dy| {
            o.copy_from_slice(dy);
            vmath::softmax_backward_rows(o, y, dim, 1.0);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// LayerNorm over the last dimension with its affine part: inputs (x `[.., N]`, weight `[N]`,
/// bias `[N]`) → `(x − mean) / sqrt(var + eps) · weight + bias`. Its backward gives all three
/// gradients in one pass over the rows (the weight and bias sums as per-task partial sums),
/// instead of the broadcast multiply/add pair whose backward reduces over rows with a stride.
pub struct LayerNorm {
    /// Variance epsilon.
    pub eps: f32,
}

fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn affine_params<'a>(s: &'a CpuStorage, l: &Layout, dim: usize, what: &str) -> Result<&'a [f32]> {
    let (p, _) = f32_rows(s, l, what)?;
    if p.len() != dim {
        candle_core::bail!("{what}: {} parameters for rows of {dim}", p.len());
    }
    Ok(p)
}

impl candle_core::CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
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
        let (x, dim) = f32_rows(s1, l1, "layer norm")?;
        let w = affine_params(s2, l2, dim, "layer norm weight")?;
        let b = affine_params(s3, l3, dim, "layer norm bias")?;
        let eps = self.eps;
        let out = map_rows(x, dim, |o, x| {
            let (mean, inv_std) = row_stats(x, eps);
            for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
                *o = (x - mean) * inv_std * w + b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let rows = x.elem_count() / weight.elem_count().max(1);
        let packed = x.contiguous()?.apply_op3_no_bwd(
            &weight.contiguous()?,
            &grad.contiguous()?,
            &LayerNormBackward { eps: self.eps },
        )?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows, 1)?.reshape(weight.shape())?;
        let db = packed.narrow(0, rows + 1, 1)?.reshape(weight.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Inputs (x, weight, dy) → `[rows + 2, N]`: dx rows, then d weight = Σ dy ⊙ x̂ and d bias = Σ dy,
/// with dx = inv_std · (g − mean(g) − x̂ · mean(g ⊙ x̂)) for g = dy ⊙ weight.
struct LayerNormBackward {
    eps: f32,
}

impl candle_core::CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer-norm-bwd"
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
        let (x, dim) = f32_rows(s1, l1, "layer norm bwd")?;
        let w = affine_params(s2, l2, dim, "layer norm bwd")?;
        let (dy, _) = f32_rows(s3, l3, "layer norm bwd")?;
        let rows = x.len() / dim.max(1);
        let eps = self.eps;
        let n = dim as f32;
        let mut out = vec![0f32; (rows + 2) * dim];
        let (dx, sums) = out.split_at_mut(rows * dim);
        let partial: Vec<Vec<f32>> = dx
            .par_chunks_mut(dim * ROWS_PER_TASK)
            .zip(x.par_chunks(dim * ROWS_PER_TASK))
            .zip(dy.par_chunks(dim * ROWS_PER_TASK))
            .map(|((dx, x), dy)| {
                let mut acc = vec![0f32; 2 * dim];
                let (dw, db) = acc.split_at_mut(dim);
                for ((dx, x), dy) in dx.chunks_mut(dim).zip(x.chunks(dim)).zip(dy.chunks(dim)) {
                    let (mean, inv_std) = row_stats(x, eps);
                    let (mut sum_g, mut sum_g_xhat) = (0f32, 0f32);
                    let params = w.iter().zip(dw.iter_mut().zip(db.iter_mut()));
                    for ((&x, &dy), (&w, (dw, db))) in x.iter().zip(dy).zip(params) {
                        let xhat = (x - mean) * inv_std;
                        let g = dy * w;
                        sum_g += g;
                        sum_g_xhat += g * xhat;
                        *dw += dy * xhat;
                        *db += dy;
                    }
                    let (mean_g, mean_g_xhat) = (sum_g / n, sum_g_xhat / n);
                    for (((dx, &x), &dy), &w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
                        let xhat = (x - mean) * inv_std;
                        *dx = inv_std * (dy * w - mean_g - xhat * mean_g_xhat);
                    }
                }
                acc
            })
            .collect();
        sums.copy_from_slice(&sum_in_order(partial, 2 * dim));
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, dim))))
    }
}

/// Cross-entropy per row of logits `[M, V]` against u32 labels `[M]`, in one pass: output `[M, 3]`
/// holding each row's loss (`logsumexp − x[label]`), 1.0 where the row's first arg-max is the
/// label (0.0 otherwise), so accuracy needs no second pass, and the row's logsumexp, which the
/// backward reuses. Only the loss column has a gradient.
pub struct CrossEntropyRows;

/// (loss, logsumexp, first arg-max) of one row.
fn ce_row(x: &[f32], label: usize) -> (f32, f32, usize) {
    let (max, lse) = vmath::max_and_logsumexp(x);
    let arg = x.iter().position(|&v| v == max).unwrap_or(0);
    (lse - x[label], lse, arg)
}

fn u32_labels<'a>(s: &'a CpuStorage, l: &Layout, rows: usize) -> Result<&'a [u32]> {
    let CpuStorage::U32(data) = s else {
        candle_core::bail!("cross-entropy: u32 labels only")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("cross-entropy: contiguous labels only")
    };
    if b - a != rows {
        candle_core::bail!("cross-entropy: {} labels for {rows} rows", b - a);
    }
    Ok(&data[a..b])
}

impl CustomOp2 for CrossEntropyRows {
    fn name(&self) -> &'static str {
        "cross-entropy-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dim) = f32_rows(s1, l1, "cross-entropy")?;
        let rows = x.len() / dim.max(1);
        let labels = u32_labels(s2, l2, rows)?;
        if let Some(&bad) = labels.iter().find(|&&t| t as usize >= dim) {
            candle_core::bail!("cross-entropy: label {bad} outside {dim} classes");
        }
        let mut out = vec![0f32; rows * 3];
        out.par_chunks_mut(3)
            .zip(x.par_chunks(dim))
            .zip(labels.par_iter())
            .for_each(|((o, x), &t)| {
                let (loss, lse, arg) = ce_row(x, t as usize);
                o[0] = loss;
                o[1] = (arg == t as usize) as u8 as f32;
                o[2] = lse;
            });
        Ok((CpuStorage::F32(out), Shape::from((rows, 3))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let back = CrossEntropyRowsBackward {
            logsumexp: res.narrow(1, 2, 1)?.flatten_all()?.to_vec1()?,
        };
        let g = logits.contiguous()?.apply_op3_no_bwd(
            &labels.contiguous()?,
            &grad.contiguous()?,
            &back,
        )?;
        Ok((Some(g), None))
    }
}

/// d logits = (softmax(x) − onehot(label)) · dloss, row-wise; inputs (x, labels, d out `[M, 3]`).
struct CrossEntropyRowsBackward {
    /// Each row's logsumexp from the forward pass.
    logsumexp: Vec<f32>,
}

impl candle_core::CustomOp3 for CrossEntropyRowsBackward {
    fn name(&self) -> &'static str {
        "cross-entropy-rows-bwd"
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
        let (x, dim) = f32_rows(s1, l1, "cross-entropy bwd")?;
        let rows = x.len() / dim.max(1);
        let labels = u32_labels(s2, l2, rows)?;
        let (dout, _) = f32_rows(s3, l3, "cross-entropy bwd")?;
        if self.logsumexp.len() != rows {
            candle_core::bail!(
                "cross-entropy bwd: {} sums for {rows} rows",
                self.logsumexp.len()
            );
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(dim)
            .zip(x.par_chunks(dim))
            .zip(labels.par_iter().zip(dout.par_chunks(3)))
            .zip(self.logsumexp.par_iter())
            .for_each(|(((o, x), (&t, d)), &lse)| {
                let g = d[0];
                vmath::exp_shifted_scaled(o, x, lse, g);
                o[t as usize] -= g;
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `x + b` with `b` broadcast over the rows of `x` (`[.., N]` + `[N]`). Its backward sums the
/// gradient's rows sequentially into per-task partial sums: candle's generic reduction over the
/// leading dimension walks memory with a stride of N, which for the vocabulary-sized MLM bias
/// (N = 30,522) was the largest reduction of the step.
pub struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dim) = f32_rows(s1, l1, "add bias")?;
        let (b, n) = f32_rows(s2, l2, "add bias")?;
        if n != dim || b.len() != dim {
            candle_core::bail!("add bias: bias of {} for rows of {dim}", b.len());
        }
        let out = map_rows(x, dim, |o, x| {
            for ((o, &x), &b) in o.iter_mut().zip(x).zip(b) {
                *o = x + b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let db = grad.apply_op1_no_bwd(&SumRows)?.reshape(b.shape())?;
        Ok((Some(grad), Some(db)))
    }
}

/// Sum over all leading dimensions: `[.., N]` → `[N]`, reading memory in order.
struct SumRows;

impl CustomOp1 for SumRows {
    fn name(&self) -> &'static str {
        "sum-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, dim) = f32_rows(s, l, "sum rows")?;
        let add = |mut acc: Vec<f32>, row: &[f32]| {
            acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
            acc
        };
        let partial: Vec<Vec<f32>> = x
            .par_chunks(dim * ROWS_PER_TASK)
            .map(|block| block.chunks(dim).fold(vec![0f32; dim], add))
            .collect();
        let out = sum_in_order(partial, dim);
        Ok((CpuStorage::F32(out), Shape::from(dim)))
    }
}

/// GELU with the exact erf form, `x · Φ(x)`, as candle's `gelu_erf`; its backward is one pass
/// (`Φ(x) + x · φ(x)`) instead of candle's eleven tensor ops over the feed-forward activations.
pub struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, dim) = f32_rows(s, l, "gelu")?;
        let out = map_rows(x, dim, vmath::gelu);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &GeluErfBackward)?,
        ))
    }
}

/// dx = dy · (Φ(x) + x · φ(x)); inputs (x, dy).
struct GeluErfBackward;

impl CustomOp2 for GeluErfBackward {
    fn name(&self) -> &'static str {
        "gelu-erf-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dim) = f32_rows(s1, l1, "gelu bwd")?;
        let (dy, _) = f32_rows(s2, l2, "gelu bwd")?;
        let out = map_rows2(x, dy, dim, vmath::gelu_backward);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
