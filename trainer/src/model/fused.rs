//! CPU kernels with their own backward pass for the two hottest composed ops: softmax over the
//! last dimension and LayerNorm normalisation. Each replaces ~5 forward and ~10 backward tensor
//! ops (each a full pass over memory and a fresh allocation) with one pass forward and one back.
//!
//! Used only for contiguous f32 tensors on the CPU; other devices take the composed path in
//! [`super::ops`].

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

fn f32_rows<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<(&'a [f32], usize)> {
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
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &x) in o.iter_mut().zip(x) {
                *o = (x - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|o| *o *= inv);
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
            let dot: f32 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
            for ((o, &y), &dy) in o.iter_mut().zip(y).zip(dy) {
                *o = y * (dy - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// LayerNorm without the affine part: (x − mean) / sqrt(var + eps) over the last dimension.
pub struct Normalize {
    /// Variance epsilon.
    pub eps: f32,
}

fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "layer-norm-normalize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, dim) = f32_rows(s, l, "layer norm")?;
        let eps = self.eps;
        let out = map_rows(x, dim, |o, x| {
            let (mean, inv_std) = row_stats(x, eps);
            for (o, &x) in o.iter_mut().zip(x) {
                *o = (x - mean) * inv_std;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(
            &grad.contiguous()?,
            &NormalizeBackward { eps: self.eps },
        )?))
    }
}

/// dx = inv_std · (dy − mean(dy) − x̂ · mean(dy ⊙ x̂)); inputs (x, dy).
struct NormalizeBackward {
    eps: f32,
}

impl CustomOp2 for NormalizeBackward {
    fn name(&self) -> &'static str {
        "layer-norm-normalize-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dim) = f32_rows(s1, l1, "layer norm bwd")?;
        let (dy, _) = f32_rows(s2, l2, "layer norm bwd")?;
        let eps = self.eps;
        let out = map_rows2(x, dy, dim, |o, x, dy| {
            let (mean, inv_std) = row_stats(x, eps);
            let n = dim as f32;
            let (mut sum_dy, mut sum_dy_xhat) = (0f32, 0f32);
            for (&x, &dy) in x.iter().zip(dy) {
                sum_dy += dy;
                sum_dy_xhat += dy * (x - mean) * inv_std;
            }
            let (mean_dy, mean_dy_xhat) = (sum_dy / n, sum_dy_xhat / n);
            for ((o, &x), &dy) in o.iter_mut().zip(x).zip(dy) {
                let xhat = (x - mean) * inv_std;
                *o = inv_std * (dy - mean_dy - xhat * mean_dy_xhat);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
