//! `matmul_in`: matrix products in a chosen dtype (autocast), for every device.

use candle_core::{DType, Result, Tensor};

/// `a · b` computed in `dtype` (autocast): both operands are cast to `dtype` and the product back
/// to `a`'s dtype, so gradients flow back in f32. Same dtype = a plain matmul.
pub fn matmul_in(a: &Tensor, b: &Tensor, dtype: DType) -> Result<Tensor> {
    if a.dtype() == dtype && b.dtype() == dtype {
        return a.matmul(b);
    }
    a.to_dtype(dtype)?
        .matmul(&b.to_dtype(dtype)?)?
        .to_dtype(a.dtype())
}
