//! GELU, exact erf form: the CPU kernel (backward `Φ(x) + x · φ(x)` in one pass) and candle's
//! `gelu_erf` as the composed twin.

use super::rows::{f32_rows, map_rows, map_rows2};
use super::{bf16_twin, supports, supports_cuda, vmath};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// GELU, exact erf form (BERT's `gelu`).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if supports(x.device(), x.dtype()) || supports_cuda("gelu", x.device(), x.dtype()) {
        if let Some(y) = bf16_twin(&[x], |w| gelu(&w[0]))? {
            return Ok(y);
        }
        return x.contiguous()?.apply_op1(GeluErf);
    }
    x.gelu_erf()
}

/// GELU with the exact erf form, `x · Φ(x)`, as candle's `gelu_erf`; its backward is one pass
/// (`Φ(x) + x · φ(x)`) instead of candle's eleven tensor ops over the feed-forward activations.
struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, dim) = f32_rows(s, l, "gelu")?;
        let out = map_rows(x, dim, vmath::gelu);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::gelu(s, l)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(gelu_backward_kernel(arg, grad)?))
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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::gelu_backward(s1, l1, s2, l2)
    }
}

/// This crate's GELU kernel on `x`'s device whatever [`supports`] says (the CPU kernel, or the
/// CUDA one with the `cuda` feature): what `trainer device-check` compares across devices.
pub fn gelu_kernel(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&GeluErf)
}

/// This crate's GELU backward kernel: dx from (x, dy), on their device.
pub fn gelu_backward_kernel(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&dy.contiguous()?, &GeluErfBackward)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        assert_finite_differences, assert_kernels_are_the_op, assert_same_op, var,
    };
    use super::*;

    #[test]
    fn kernel_matches_candle_gelu_erf_forward_and_backward() {
        let x = var(&[6, 10], 2.0, 9);
        assert_same_op(
            || gelu(x.as_tensor()).unwrap(),
            || x.as_tensor().gelu_erf().unwrap(),
            &[&x],
            1e-5,
        );
    }

    /// The kernel's backward against central finite differences of its forward.
    #[test]
    fn kernel_backward_matches_finite_differences() {
        assert_finite_differences(&[4, 9], 1.5, 3, |x| gelu(x).unwrap());
    }

    /// The kernels `device-check` compares are the op's own: the same values as [`gelu`] and its
    /// gradient.
    #[test]
    fn the_exposed_kernels_are_the_ops() {
        assert_kernels_are_the_op(
            |x| gelu(x).unwrap(),
            |x| gelu_kernel(x).unwrap(),
            |x, dy| gelu_backward_kernel(x, dy).unwrap(),
            (&[5, 7], &[5, 7]),
        );
    }
}
