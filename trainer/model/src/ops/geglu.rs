//! GeGLU, ModernBERT's gated feed-forward activation: an input `[.., 2I]` split in halves
//! `(a, g)` gives `GELU(a) ⊙ g` `[.., I]` (GELU in the exact erf form). The CPU kernel does it in
//! one pass (and its backward, `dg = dy ⊙ GELU(a)`, `da = dy ⊙ g ⊙ GELU'(a)`, in one more); the
//! composed twin is narrow + GELU + multiply.

use super::rows::{f32_rows, map_rows2_to, map_rows_to};
use super::{bf16_twin, gelu, supports, supports_cuda, vmath};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};

/// `GELU(x[.., :I]) ⊙ x[.., I:]` for `x` `[.., 2I]`.
pub fn geglu(x: &Tensor) -> Result<Tensor> {
    let width = x.dim(D::Minus1)?;
    if width % 2 != 0 {
        candle_core::bail!("geglu: last dimension {width} is odd");
    }
    if supports(x.device(), x.dtype()) || supports_cuda("gelu", x.device(), x.dtype()) {
        if let Some(y) = bf16_twin(&[x], |w| geglu(&w[0]))? {
            return Ok(y);
        }
        return x.contiguous()?.apply_op1(Geglu);
    }
    geglu_composed(x)
}

/// [`geglu`] from tensor ops (any device).
pub fn geglu_composed(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let a = x.narrow(D::Minus1, 0, half)?;
    let g = x.narrow(D::Minus1, half, half)?;
    gelu(&a.contiguous()?)?.mul(&g)
}

struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "geglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, width) = f32_rows(s, l, "geglu")?;
        let half = width / 2;
        let out = map_rows_to(x, width, half, |o, x| {
            let (a, g) = x.split_at(half);
            vmath::gelu(o, a);
            o.iter_mut().zip(g).for_each(|(o, &g)| *o *= g);
        });
        let mut dims = l.dims().to_vec();
        *dims.last_mut().expect("geglu input has dimensions") = half;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::geglu(s, l)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(geglu_backward_kernel(arg, grad)?))
    }
}

/// Inputs (x `[.., 2I]`, dy `[.., I]`) → dx `[.., 2I]`.
struct GegluBackward;

impl CustomOp2 for GegluBackward {
    fn name(&self) -> &'static str {
        "geglu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, width) = f32_rows(s1, l1, "geglu bwd")?;
        let (dy, half) = f32_rows(s2, l2, "geglu bwd")?;
        if half * 2 != width || dy.len() * 2 != x.len() {
            candle_core::bail!("geglu bwd: gradient of the wrong shape");
        }
        let dx = map_rows2_to(x, dy, [width, half, width], |dx, x, dy| {
            let (a, g) = x.split_at(half);
            let (da, dg) = dx.split_at_mut(half);
            // dg first holds dy·g, the gradient reaching GELU(a), for da.
            dg.iter_mut()
                .zip(dy.iter().zip(g))
                .for_each(|(o, (&y, &g))| *o = y * g);
            vmath::gelu_backward(da, a, dg);
            vmath::gelu(dg, a);
            dg.iter_mut().zip(dy).for_each(|(d, &y)| *d *= y);
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::geglu_backward(s1, l1, s2, l2)
    }
}

/// This crate's GeGLU kernel on `x`'s device whatever [`supports`] says (the CPU kernel, or the
/// CUDA one with the `cuda` feature): what `trainer device-check` compares across devices.
pub fn geglu_kernel(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Geglu)
}

/// This crate's GeGLU backward kernel: dx `[.., 2I]` from (x `[.., 2I]`, dy `[.., I]`).
pub fn geglu_backward_kernel(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&dy.contiguous()?, &GegluBackward)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        assert_finite_differences, assert_kernels_are_the_op, assert_same_op, var,
    };
    use super::*;

    #[test]
    fn kernel_matches_composed_geglu_forward_and_backward() {
        let x = var(&[3, 5, 2 * 7], 1.5, 21);
        assert_same_op(
            || geglu(x.as_tensor()).unwrap(),
            || geglu_composed(x.as_tensor()).unwrap(),
            &[&x],
            1e-5,
        );
    }

    #[test]
    fn kernel_gradient_matches_finite_differences() {
        assert_finite_differences(&[4, 6], 1.0, 5, |x| geglu(x).unwrap());
    }

    /// The kernels `device-check` compares are the op's own: the same values as [`geglu`] and its
    /// gradient.
    #[test]
    fn the_exposed_kernels_are_the_ops() {
        assert_kernels_are_the_op(
            |x| geglu(x).unwrap(),
            |x| geglu_kernel(x).unwrap(),
            |x, dy| geglu_backward_kernel(x, dy).unwrap(),
            (&[3, 2 * 5], &[3, 5]),
        );
    }

    /// Hand-computed: GELU(1) = Φ(1) = 0.8413447; GELU(-2)·(-1) = 2·Φ(-2) = 0.0455003.
    #[test]
    fn values_by_hand() {
        let x = Tensor::new(&[[1.0f32, -2.0, 3.0, -1.0]], &candle_core::Device::Cpu).unwrap();
        let y = geglu(&x).unwrap().to_vec2::<f32>().unwrap();
        assert!((y[0][0] - 3.0 * 0.841_344_7).abs() < 1e-5, "{y:?}");
        assert!((y[0][1] - 0.045_500_26).abs() < 1e-5, "{y:?}");
    }
}
