//! `matmul_in`: matrix products in a chosen dtype (autocast), for every device.

use candle_core::{DType, Result, Tensor};
use std::cell::Cell;

thread_local! {
    static ACTIVATION_CASTS: Cell<u64> = const { Cell::new(0) };
}

/// `a · b` computed in `dtype`: `b` (a weight, or a second activation) is cast to `dtype` when it
/// is not in it, and so is `a` (an activation) — which [`activation_casts`] counts, since under
/// `--precision bf16` activations are bf16 end to end and no product should have to cast one. The
/// product comes back in `a`'s dtype; gradients flow back through the casts. Same dtype = a plain
/// matmul.
pub fn matmul_in(a: &Tensor, b: &Tensor, dtype: DType) -> Result<Tensor> {
    if a.dtype() == dtype && b.dtype() == dtype {
        return a.matmul(b);
    }
    if a.dtype() != dtype {
        ACTIVATION_CASTS.with(|c| c.set(c.get() + 1));
    }
    a.to_dtype(dtype)?
        .matmul(&b.to_dtype(dtype)?)?
        .to_dtype(a.dtype())
}

/// How many products on this thread have cast their left operand (an activation) to another
/// dtype since the thread started: 0 through a whole step under `--precision bf16`.
pub fn activation_casts() -> u64 {
    ACTIVATION_CASTS.with(|c| c.get())
}
