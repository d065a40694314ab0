//! LayerNorm over the last dimension with its affine part: the CPU kernel (all three gradients in
//! one backward pass over the rows), which is also the CUDA kernel's twin (`kernels/layer_norm.cu`:
//! row sums as a warp makes them, lane partial sums and the shuffle butterfly; the parameters'
//! gradients summed per task of rows, then over tasks, in order), and the composed twin.

use super::rows::{f32_rows, map_rows, sum_in_order, warp_sum, ROWS_PER_TASK};
use super::{bf16_twin, supports, supports_cuda};
use candle_core::{CpuStorage, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if supports(x.device(), x.dtype()) || supports_cuda("layer_norm", x.device(), x.dtype()) {
        if let Some(y) = bf16_twin(&[x, weight, bias], |w| layer_norm(&w[0], &w[1], &w[2], eps))? {
            return Ok(y);
        }
        return x
            .contiguous()?
            .apply_op3(weight, bias, LayerNorm { eps: eps as f32 });
    }
    layer_norm_composed(x, weight, bias, eps)
}

/// This crate's layer norm kernel on `x`'s device whatever [`supports`] says (the CPU kernel, or
/// the CUDA one with the `cuda` feature): what `trainer device-check` compares across devices.
pub fn layer_norm_kernel(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3_no_bwd(weight, bias, &LayerNorm { eps: eps as f32 })
}

/// The kernel's backward: `[rows + 2, N]`, the dx rows, then d weight and d bias, from (x,
/// weight, dy).
pub fn layer_norm_backward_kernel(
    x: &Tensor,
    weight: &Tensor,
    dy: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(
        &weight.contiguous()?,
        &dy.contiguous()?,
        &LayerNormBackward { eps: eps as f32 },
    )
}

/// [`layer_norm`] from elementary ops (any device).
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if x.dtype() != candle_core::DType::F32 {
        // The statistics in f32, as the kernels keep them; the result in x's dtype.
        let f32 = candle_core::DType::F32;
        let (w, b) = (weight.to_dtype(f32)?, bias.to_dtype(f32)?);
        return layer_norm_composed(&x.to_dtype(f32)?, &w, &b, eps)?.to_dtype(x.dtype());
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// LayerNorm over the last dimension with its affine part: inputs (x `[.., N]`, weight `[N]`,
/// bias `[N]`) → `(x − mean) / sqrt(var + eps) · weight + bias`. Its backward gives all three
/// gradients in one pass over the rows (the weight and bias sums as per-task partial sums),
/// instead of the broadcast multiply/add pair whose backward reduces over rows with a stride.
struct LayerNorm {
    /// Variance epsilon.
    eps: f32,
}

/// A row's (mean, 1 / sqrt(var + eps)), its sums as a warp makes them.
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = warp_sum(x, |_, v| v) / n;
    let var = warp_sum(x, |_, v| (v - mean) * (v - mean)) / n;
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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::layer_norm((s1, l1), (s2, l2), (s3, l3), self.eps)
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
        let packed = layer_norm_backward_kernel(x, weight, grad, self.eps as f64)?;
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
                    let params = dw.iter_mut().zip(db.iter_mut());
                    for ((&x, &dy), (dw, db)) in x.iter().zip(dy).zip(params) {
                        let xhat = (x - mean) * inv_std;
                        *dw += dy * xhat;
                        *db += dy;
                    }
                    let g = |c: usize, dy: f32| dy * w[c];
                    let sum_g = warp_sum(dy, g);
                    let sum_g_xhat = warp_sum(dy, |c, dy| g(c, dy) * ((x[c] - mean) * inv_std));
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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::layer_norm_backward((s1, l1), (s2, l2), (s3, l3), self.eps, ROWS_PER_TASK)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        assert_finite_differences, assert_kernels_are_the_op, assert_same_op, var,
    };
    use super::*;

    /// At rows wider than a warp (100 = 3·32 + 4 columns) and more rows than a task (150 rows:
    /// three tasks of the parameters' sums), the kernel equals the composed op forward and in
    /// all three gradients, and its exposed kernels are the op.
    #[test]
    fn kernel_matches_composed_across_lanes_and_tasks() {
        let (x, w, b) = (
            var(&[150, 100], 2.0, 19),
            var(&[100], 1.0, 20),
            var(&[100], 1.0, 21),
        );
        assert_same_op(
            || layer_norm(x.as_tensor(), &w, &b, 1e-12).unwrap(),
            || layer_norm_composed(x.as_tensor(), &w, &b, 1e-12).unwrap(),
            &[&x, &w, &b],
            2e-5,
        );
        let (wt, bt) = (w.as_tensor().clone(), b.as_tensor().clone());
        assert_kernels_are_the_op(
            |x| layer_norm(x, &wt, &bt, 1e-12).unwrap(),
            |x| layer_norm_kernel(x, &wt, &bt, 1e-12).unwrap(),
            |x, dy| {
                layer_norm_backward_kernel(x, &wt, dy, 1e-12)
                    .unwrap()
                    .narrow(0, 0, 150)
                    .unwrap()
            },
            (&[150, 100], &[150, 100]),
        );
    }

    /// The backward against central finite differences.
    #[test]
    fn backward_matches_finite_differences() {
        let (w, b) = (var(&[40], 1.0, 22), var(&[40], 1.0, 23));
        let (w, b) = (w.as_tensor().clone(), b.as_tensor().clone());
        assert_finite_differences(&[3, 40], 1.0, 24, |x| layer_norm(x, &w, &b, 1e-5).unwrap());
    }

    #[test]
    fn kernel_matches_composed_forward_and_backward() {
        let (x, w, b) = (
            var(&[6, 10], 2.0, 9),
            var(&[10], 1.0, 10),
            var(&[10], 1.0, 11),
        );
        assert_same_op(
            || layer_norm(x.as_tensor(), &w, &b, 1e-12).unwrap(),
            || layer_norm_composed(x.as_tensor(), &w, &b, 1e-12).unwrap(),
            &[&x, &w, &b],
            1e-5,
        );
    }
}
