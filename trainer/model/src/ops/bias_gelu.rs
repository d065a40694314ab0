//! Bias + GELU (BERT's feed-forward and prediction head): `GELU(x + b)` in one pass, the sum never
//! stored. The CPU kernel is the CUDA kernels' twin (`kernels/gelu.cu`: `bias_gelu_*`, the same
//! f32 arithmetic as [`super::gelu`]'s on the sum); its backward recomputes the sum for dx and
//! takes the bias gradient as dx's column sums. The composed twin is the bias add, then GELU.

use super::bias::sum_rows;
use super::rows::{f32_rows, map_rows};
use super::{add_bias, bf16_twin, gelu, supports, supports_cuda, vmath};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// `GELU(x + bias)` with `bias` `[N]` broadcast over the rows of `x` `[.., N]`.
pub fn bias_gelu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if supports(x.device(), x.dtype()) || supports_cuda("gelu", x.device(), x.dtype()) {
        if let Some(y) = bf16_twin(&[x, bias], |w| bias_gelu(&w[0], &w[1]))? {
            return Ok(y);
        }
        return x.contiguous()?.apply_op2(&bias.contiguous()?, BiasGelu);
    }
    gelu(&add_bias(x, bias)?)
}

/// This crate's bias + GELU kernel on `x`'s device whatever [`supports`] says: what `trainer
/// device-check` compares across devices.
pub fn bias_gelu_kernel(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&bias.contiguous()?, &BiasGelu)
}

/// Its backward kernel: dx = dy · GELU'(x + b) from (x, b, dy), on their device.
pub fn bias_gelu_backward_kernel(x: &Tensor, bias: &Tensor, dy: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3_no_bwd(&bias.contiguous()?, &dy.contiguous()?, &BiasGeluBackward)
}

/// The row width of x and the bias, checked against each other.
fn bias_width(x: &Layout, b: &[f32]) -> Result<usize> {
    let width = *x.dims().last().unwrap_or(&0);
    if width == 0 || b.len() != width {
        candle_core::bail!("bias + gelu: bias of {} for rows of {width}", b.len());
    }
    Ok(width)
}

/// (x `[.., N]`, b `[N]`) → GELU(x + b).
struct BiasGelu;

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, _) = f32_rows(s1, l1, "bias + gelu")?;
        let (b, _) = f32_rows(s2, l2, "bias + gelu")?;
        let width = bias_width(l1, b)?;
        let out = map_rows(x, width, |o, x| {
            for ((o, &x), &b) in o.iter_mut().zip(x).zip(b) {
                *o = x + b;
            }
            let sum = o.to_vec();
            vmath::gelu(o, &sum);
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
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::bias_gelu((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = bias_gelu_backward_kernel(x, b, grad)?;
        let db = sum_rows(&dx)?.reshape(b.shape())?;
        Ok((Some(dx), Some(db)))
    }
}

/// (x, b, dy) → dy · GELU'(x + b).
struct BiasGeluBackward;

impl CustomOp3 for BiasGeluBackward {
    fn name(&self) -> &'static str {
        "bias-gelu-bwd"
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
        let (x, _) = f32_rows(s1, l1, "bias + gelu bwd")?;
        let (b, _) = f32_rows(s2, l2, "bias + gelu bwd")?;
        let (dy, _) = f32_rows(s3, l3, "bias + gelu bwd")?;
        let width = bias_width(l1, b)?;
        if dy.len() != x.len() {
            candle_core::bail!(
                "bias + gelu bwd: gradient of {} for {} values",
                dy.len(),
                x.len()
            );
        }
        let out = super::rows::map_rows2(x, dy, width, |o, x, dy| {
            let sum: Vec<f32> = x.iter().zip(b).map(|(&x, &b)| x + b).collect();
            vmath::gelu_backward(o, &sum, dy);
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
        super::cuda::bias_gelu((s1, l1), (s2, l2), Some((s3, l3)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_finite_differences, assert_same_op, tensor, var};
    use super::*;
    use candle_core::DType;

    /// Against the composed bias add and candle's `gelu_erf`, with more rows than one task's
    /// block (the bias gradient's partial sums are combined).
    #[test]
    fn kernel_matches_the_bias_add_then_gelu() {
        let (x, b) = (var(&[2, 70, 9], 1.5, 41), var(&[9], 1.0, 42));
        assert_same_op(
            || bias_gelu(x.as_tensor(), &b).unwrap(),
            || x.as_tensor().broadcast_add(&b).unwrap().gelu_erf().unwrap(),
            &[&x, &b],
            1e-4,
        );
    }

    /// The backward against central finite differences of the forward, in x and in the bias.
    #[test]
    fn backward_matches_finite_differences() {
        let b = tensor(&[7], 1.0, 43);
        assert_finite_differences(&[5, 7], 1.5, 44, |x| bias_gelu(x, &b).unwrap());
        let x = tensor(&[5, 7], 1.5, 45);
        assert_finite_differences(&[7], 1.0, 46, |b| bias_gelu(&x, b).unwrap());
    }

    /// Bit for bit the unfused bias add + GELU kernels on the CPU (the sum rounds to f32 the same
    /// way), forward and both gradients: fusing changes no CPU result.
    #[test]
    fn fused_equals_the_two_cpu_kernels_bit_for_bit() {
        let (x, b) = (var(&[3, 66, 10], 1.5, 47), var(&[10], 1.0, 48));
        let dy = tensor(&[3, 66, 10], 1.0, 49);
        let run = |fused: bool| {
            let y = match fused {
                true => bias_gelu(x.as_tensor(), &b).unwrap(),
                false => gelu(&add_bias(x.as_tensor(), &b).unwrap()).unwrap(),
            };
            let g = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (
                flat(&y),
                flat(g.get(x.as_tensor()).unwrap()),
                flat(g.get(b.as_tensor()).unwrap()),
            )
        };
        let (fused, unfused) = (run(true), run(false));
        assert!(fused.0 == unfused.0, "forward differs");
        assert!(fused.1 == unfused.1, "d x differs");
        assert!(fused.2 == unfused.2, "d bias differs");
    }

    /// The exposed kernels are the op's: its values and its dx.
    #[test]
    fn the_exposed_kernels_are_the_ops() {
        let (x, b) = (var(&[4, 6], 1.5, 50), tensor(&[6], 1.0, 51));
        let dy = tensor(&[4, 6], 1.0, 52);
        let y = bias_gelu(x.as_tensor(), &b).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(
            flat(&bias_gelu_kernel(x.as_tensor(), &b).unwrap()),
            flat(&y)
        );
        let g = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(
            flat(&bias_gelu_backward_kernel(x.as_tensor(), &b, &dy).unwrap()),
            flat(g.get(x.as_tensor()).unwrap())
        );
        assert_eq!(y.dtype(), DType::F32);
    }
}
