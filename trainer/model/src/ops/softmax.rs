//! Softmax over the last dimension: the CPU kernel (forward, and `dx = y ⊙ (dy − Σ dy ⊙ y)` back)
//! and the composed twin.

use super::rows::{f32_rows, map_rows, map_rows2};
use super::{supports, vmath};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if supports(x.device(), x.dtype()) {
        return x.contiguous()?.apply_op1(Softmax);
    }
    softmax_composed(x)
}

/// [`softmax_last_dim`] from elementary ops, max subtracted as a constant (any device).
pub fn softmax_composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

/// Softmax over the last dimension.
struct Softmax;

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

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_same_op, var};
    use super::*;

    #[test]
    fn kernel_matches_composed_forward_and_backward() {
        let x = var(&[6, 10], 2.0, 9);
        assert_same_op(
            || softmax_last_dim(x.as_tensor()).unwrap(),
            || softmax_composed(x.as_tensor()).unwrap(),
            &[&x],
            1e-5,
        );
    }
}
