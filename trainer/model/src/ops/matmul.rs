//! `matmul_in`: matrix products in a chosen dtype (autocast), for every device.

use candle_core::{DType, Result, Tensor};
use std::cell::Cell;

thread_local! {
    static PRODUCT_CASTS: Cell<u64> = const { Cell::new(0) };
}

/// `a · b` computed in `dtype`: an operand not in `dtype` is cast to it, and the product back to
/// `a`'s dtype (gradients flow back through the casts), which [`product_casts`] counts: the
/// models hold their weights in the compute dtype and keep activations in it, so no product of
/// a step casts. Same dtype = a plain matmul.
pub fn matmul_in(a: &Tensor, b: &Tensor, dtype: DType) -> Result<Tensor> {
    if a.dtype() == dtype && b.dtype() == dtype {
        return a.matmul(b);
    }
    PRODUCT_CASTS.with(|c| c.set(c.get() + 1));
    a.to_dtype(dtype)?
        .matmul(&b.to_dtype(dtype)?)?
        .to_dtype(a.dtype())
}

/// How many products on this thread have had to cast an operand since the thread started: none
/// through a step, in f32 or bf16.
pub fn product_casts() -> u64 {
    PRODUCT_CASTS.with(|c| c.get())
}
