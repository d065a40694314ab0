//! `x + bias` broadcast over rows: the CPU kernel (the bias gradient summed row by row in memory
//! order) and `broadcast_add` as the composed twin.

use super::rows::{f32_rows, map_rows, sum_in_order, ROWS_PER_TASK};
use super::supports;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `x + bias` with `bias` `[N]` broadcast over the rows of `x` `[.., N]`.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if supports(x.device(), x.dtype()) {
        return x.contiguous()?.apply_op2(bias, AddBias);
    }
    x.broadcast_add(bias)
}

/// `x + b` with `b` broadcast over the rows of `x` (`[.., N]` + `[N]`). Its backward sums the
/// gradient's rows sequentially into per-task partial sums: candle's generic reduction over the
/// leading dimension walks memory with a stride of N, which for the vocabulary-sized MLM bias
/// (N = 30,522) was the largest reduction of the step.
struct AddBias;

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
        let db = sum_rows(grad)?.reshape(b.shape())?;
        Ok((Some(grad.contiguous()?), Some(db)))
    }
}

/// The column sums of `grad` `[.., N]` → `[N]` (a bias's gradient), in `grad`'s dtype: the CPU
/// kernel's in-order partial sums for f32 on the CPU under the default kernels, candle's sum in
/// f32 elsewhere.
pub(super) fn sum_rows(grad: &Tensor) -> Result<Tensor> {
    let grad = grad.contiguous()?;
    if supports(grad.device(), grad.dtype()) {
        return grad.apply_op1_no_bwd(&SumRows);
    }
    let n = grad.dim(candle_core::D::Minus1)?;
    grad.to_dtype(candle_core::DType::F32)?
        .reshape(((), n))?
        .sum(0)?
        .to_dtype(grad.dtype())
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

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_same_op, var};
    use super::*;

    #[test]
    fn kernel_matches_broadcast_add_on_2d_and_3d_inputs() {
        let (x, w) = (var(&[6, 10], 2.0, 9), var(&[10], 1.0, 10));
        let add = || x.as_tensor().broadcast_add(&w).unwrap();
        assert_same_op(
            || add_bias(x.as_tensor(), &w).unwrap(),
            add,
            &[&x, &w],
            1e-5,
        );
        // More rows than one task's block, so the bias gradient's partial sums are combined.
        let (x, b) = (var(&[2, 70, 9], 1.0, 31), var(&[9], 1.0, 32));
        assert_same_op(
            || add_bias(x.as_tensor(), &b).unwrap(),
            || x.as_tensor().broadcast_add(&b).unwrap(),
            &[&x, &b],
            1e-4,
        );
    }
}
