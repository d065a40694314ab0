//! Launchers of this crate's CUDA kernels (`kernels/*.cu`, compiled to PTX by build.rs), called
//! from the ops' `cuda_fwd`. Each kernel has a CPU twin in the op's file doing the same
//! arithmetic; the GPU bundle (`trainer device-check`) compares the two.

use super::dropout::DropoutMask;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape};

/// The dropout module's PTX.
const DROPOUT_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/dropout.ptx"));
/// Its module name in the device's cache.
const DROPOUT_MODULE: &str = "maskrate_dropout";

/// The GELU module's PTX.
const GELU_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/gelu.ptx"));
/// Its module name in the device's cache.
const GELU_MODULE: &str = "maskrate_gelu";

/// Threads per block of the element-wise kernels.
const THREADS: u32 = 256;

/// Blocks for `units` work items of one thread each, capped (the kernels stride over the rest).
fn grid(units: u64) -> LaunchConfig {
    let blocks = units.div_ceil(THREADS as u64).clamp(1, 65_535 * 8) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `kernel` of the dropout module over `x` (and, for residual dropout, `residual` beside it).
fn dropout_typed<T: DeviceRepr>(
    dev: &CudaDevice,
    kernel: &str,
    residual: Option<(&CudaSlice<T>, &Layout)>,
    (x, l): (&CudaSlice<T>, &Layout),
    mask: &DropoutMask,
) -> Result<CudaSlice<T>> {
    let x = elements(x, l, kernel)?;
    let residual = residual
        .map(|(r, lr)| elements(r, lr, kernel))
        .transpose()?;
    if let Some(r) = &residual {
        if r.len() != x.len() {
            candle_core::bail!("residual dropout: {} and {} values", r.len(), x.len());
        }
    }
    let n = x.len() as u64;
    let func = dev.get_or_load_custom_func(kernel, DROPOUT_MODULE, DROPOUT_PTX)?;
    // SAFETY: every element is written by the kernel below.
    let y = unsafe { dev.alloc::<T>(x.len())? };
    let (threshold, keep) = mask.threshold_and_keep();
    let (k0, k1) = (mask.key as u32, (mask.key >> 32) as u32);
    let mut builder = func.builder();
    if let Some(r) = &residual {
        builder.arg(r);
    }
    builder.arg(&x);
    builder.arg(&y);
    builder.arg(&n);
    builder.arg(&k0);
    builder.arg(&k1);
    builder.arg(&threshold);
    builder.arg(&keep);
    // SAFETY: the arguments match `DROPOUT_KERNEL` (no residual) or `DROPOUT_ADD_KERNEL` in
    // kernels/dropout.cu.
    unsafe { builder.launch(grid(n.div_ceil(4))) }.w()?;
    Ok(y)
}

/// The dropout op on the device: [`super::dropout`]'s CPU kernel, word for word.
pub(super) fn dropout(
    s: &CudaStorage,
    l: &Layout,
    mask: &DropoutMask,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s.device;
    let slice = match &s.slice {
        CudaStorageSlice::F32(x) => {
            CudaStorageSlice::F32(dropout_typed(dev, "dropout_f32", None, (x, l), mask)?)
        }
        CudaStorageSlice::BF16(x) => {
            CudaStorageSlice::BF16(dropout_typed(dev, "dropout_bf16", None, (x, l), mask)?)
        }
        CudaStorageSlice::F16(x) => {
            CudaStorageSlice::F16(dropout_typed(dev, "dropout_f16", None, (x, l), mask)?)
        }
        _ => candle_core::bail!("dropout: no CUDA kernel for this dtype"),
    };
    Ok((
        CudaStorage {
            slice,
            device: dev.clone(),
        },
        l.shape().clone(),
    ))
}

/// Residual + dropout on the device: [`super::residual_dropout`]'s CPU kernel, word for word.
pub(super) fn residual_dropout(
    (r, lr): (&CudaStorage, &Layout),
    (x, lx): (&CudaStorage, &Layout),
    mask: &DropoutMask,
) -> Result<(CudaStorage, Shape)> {
    let dev = &r.device;
    let slice = match (&r.slice, &x.slice) {
        (CudaStorageSlice::F32(r), CudaStorageSlice::F32(x)) => CudaStorageSlice::F32(
            dropout_typed(dev, "dropout_add_f32", Some((r, lr)), (x, lx), mask)?,
        ),
        (CudaStorageSlice::BF16(r), CudaStorageSlice::BF16(x)) => CudaStorageSlice::BF16(
            dropout_typed(dev, "dropout_add_bf16", Some((r, lr)), (x, lx), mask)?,
        ),
        (CudaStorageSlice::F16(r), CudaStorageSlice::F16(x)) => CudaStorageSlice::F16(
            dropout_typed(dev, "dropout_add_f16", Some((r, lr)), (x, lx), mask)?,
        ),
        _ => candle_core::bail!("residual dropout: no CUDA kernel for these dtypes"),
    };
    Ok(storage(slice, dev, lr))
}

/// Philox4x32-10 blocks on the device: `cases` holds (counter[4], key[2]) per case; returns four
/// words per case. The known-answer check of the device's generator.
pub fn philox_blocks(dev: &CudaDevice, cases: &[[u32; 6]]) -> Result<Vec<[u32; 4]>> {
    let flat: Vec<u32> = cases.iter().flatten().copied().collect();
    let stream = dev.cuda_stream();
    let input = stream.clone_htod(&flat).w()?;
    let out = dev.alloc_zeros::<u32>(4 * cases.len())?;
    let n = cases.len() as u32;
    let func = dev.get_or_load_custom_func("philox_blocks", DROPOUT_MODULE, DROPOUT_PTX)?;
    let mut builder = func.builder();
    builder.arg(&input);
    builder.arg(&out);
    builder.arg(&n);
    // SAFETY: the arguments match `philox_blocks` in kernels/dropout.cu.
    unsafe { builder.launch(grid(n as u64)) }.w()?;
    let words = stream.clone_dtoh(&out).w()?;
    Ok(words.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect())
}

/// The contiguous elements of `x` under layout `l`.
fn elements<'a, T>(
    x: &'a CudaSlice<T>,
    l: &Layout,
    what: &str,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: contiguous input only")
    };
    Ok(x.slice(a..b))
}

/// `kernel(x, y, n)` of `module` over `x`'s elements: a fresh `y` of the same length.
fn map1<T: DeviceRepr>(
    dev: &CudaDevice,
    (module, ptx, kernel): (&str, &'static str, &str),
    x: &CudaSlice<T>,
    l: &Layout,
) -> Result<CudaSlice<T>> {
    let x = elements(x, l, kernel)?;
    let n = x.len() as u64;
    let func = dev.get_or_load_custom_func(kernel, module, ptx)?;
    // SAFETY: the kernel writes every element.
    let y = unsafe { dev.alloc::<T>(x.len())? };
    let mut builder = func.builder();
    builder.arg(&x);
    builder.arg(&y);
    builder.arg(&n);
    // SAFETY: `(const T *x, T *y, uint64_t n)`, the element-wise kernels' signature.
    unsafe { builder.launch(grid(n)) }.w()?;
    Ok(y)
}

/// `kernel(a, b, y, n)` of `module` over the elements of `a` and `b` (the same length).
fn map2<T: DeviceRepr>(
    dev: &CudaDevice,
    (module, ptx, kernel): (&str, &'static str, &str),
    (a, la): (&CudaSlice<T>, &Layout),
    (b, lb): (&CudaSlice<T>, &Layout),
) -> Result<CudaSlice<T>> {
    let (a, b) = (elements(a, la, kernel)?, elements(b, lb, kernel)?);
    if a.len() != b.len() {
        candle_core::bail!("{kernel}: {} and {} elements", a.len(), b.len());
    }
    let n = a.len() as u64;
    let func = dev.get_or_load_custom_func(kernel, module, ptx)?;
    // SAFETY: the kernel writes every element.
    let y = unsafe { dev.alloc::<T>(a.len())? };
    let mut builder = func.builder();
    builder.arg(&a);
    builder.arg(&b);
    builder.arg(&y);
    builder.arg(&n);
    // SAFETY: `(const T *a, const T *b, T *y, uint64_t n)`.
    unsafe { builder.launch(grid(n)) }.w()?;
    Ok(y)
}

fn storage(slice: CudaStorageSlice, dev: &CudaDevice, l: &Layout) -> (CudaStorage, Shape) {
    (
        CudaStorage {
            slice,
            device: dev.clone(),
        },
        l.shape().clone(),
    )
}

/// GELU (erf form) on the device: [`super::gelu`]'s CPU kernel, operation for operation.
pub(super) fn gelu(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = &s.device;
    let slice = match &s.slice {
        CudaStorageSlice::F32(x) => {
            CudaStorageSlice::F32(map1(dev, (GELU_MODULE, GELU_PTX, "gelu_fwd_f32"), x, l)?)
        }
        CudaStorageSlice::BF16(x) => {
            CudaStorageSlice::BF16(map1(dev, (GELU_MODULE, GELU_PTX, "gelu_fwd_bf16"), x, l)?)
        }
        _ => candle_core::bail!("gelu: no CUDA kernel for this dtype"),
    };
    Ok(storage(slice, dev, l))
}

/// GELU's backward on the device: dx from (x, dy).
pub(super) fn gelu_backward(
    x: &CudaStorage,
    lx: &Layout,
    dy: &CudaStorage,
    ldy: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = &x.device;
    let slice = match (&x.slice, &dy.slice) {
        (CudaStorageSlice::F32(x), CudaStorageSlice::F32(dy)) => CudaStorageSlice::F32(map2(
            dev,
            (GELU_MODULE, GELU_PTX, "gelu_bwd_f32"),
            (x, lx),
            (dy, ldy),
        )?),
        (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(dy)) => CudaStorageSlice::BF16(map2(
            dev,
            (GELU_MODULE, GELU_PTX, "gelu_bwd_bf16"),
            (x, lx),
            (dy, ldy),
        )?),
        _ => candle_core::bail!("gelu backward: no CUDA kernel for these dtypes"),
    };
    Ok(storage(slice, dev, lx))
}

/// `kernel(inputs.., out, rows, half)` of the GELU module: `out` of `out_len` values.
fn rows_kernel<T: DeviceRepr>(
    dev: &CudaDevice,
    kernel: &str,
    inputs: &[&candle_core::cuda_backend::cudarc::driver::CudaView<'_, T>],
    out_len: usize,
    (rows, half): (u64, u64),
) -> Result<CudaSlice<T>> {
    let func = dev.get_or_load_custom_func(kernel, GELU_MODULE, GELU_PTX)?;
    // SAFETY: the kernel writes every element.
    let out = unsafe { dev.alloc::<T>(out_len)? };
    let mut builder = func.builder();
    for x in inputs {
        builder.arg(*x);
    }
    builder.arg(&out);
    builder.arg(&rows);
    builder.arg(&half);
    // SAFETY: `(const T *x[, const T *dy], T *out, uint64_t rows, uint64_t half)`, the GeGLU
    // kernels' signatures in kernels/gelu.cu.
    unsafe { builder.launch(grid(rows * half)) }.w()?;
    Ok(out)
}

/// The rows and half-width of a GeGLU input `[.., 2I]`.
fn geglu_shape(l: &Layout) -> Result<(u64, u64)> {
    let width = *l.dims().last().unwrap_or(&0);
    if !width.is_multiple_of(2) {
        candle_core::bail!("geglu: last dimension {width} is odd");
    }
    let rows = l.shape().elem_count() / width.max(1);
    Ok((rows as u64, (width / 2) as u64))
}

/// GeGLU on the device: [`super::geglu`]'s CPU kernel, operation for operation.
pub(super) fn geglu(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = &s.device;
    let (rows, half) = geglu_shape(l)?;
    let n = (rows * half) as usize;
    let slice = match &s.slice {
        CudaStorageSlice::F32(x) => CudaStorageSlice::F32(rows_kernel(
            dev,
            "geglu_fwd_f32",
            &[&elements(x, l, "geglu")?],
            n,
            (rows, half),
        )?),
        CudaStorageSlice::BF16(x) => CudaStorageSlice::BF16(rows_kernel(
            dev,
            "geglu_fwd_bf16",
            &[&elements(x, l, "geglu")?],
            n,
            (rows, half),
        )?),
        _ => candle_core::bail!("geglu: no CUDA kernel for this dtype"),
    };
    let mut dims = l.dims().to_vec();
    *dims.last_mut().expect("geglu input has dimensions") = half as usize;
    Ok((
        CudaStorage {
            slice,
            device: dev.clone(),
        },
        Shape::from(dims),
    ))
}

/// GeGLU's backward on the device: dx `[.., 2I]` from (x `[.., 2I]`, dy `[.., I]`).
pub(super) fn geglu_backward(
    x: &CudaStorage,
    lx: &Layout,
    dy: &CudaStorage,
    ldy: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = &x.device;
    let (rows, half) = geglu_shape(lx)?;
    if ldy.shape().elem_count() as u64 != rows * half {
        candle_core::bail!("geglu bwd: gradient of the wrong shape");
    }
    let n = (2 * rows * half) as usize;
    let slice = match (&x.slice, &dy.slice) {
        (CudaStorageSlice::F32(x), CudaStorageSlice::F32(dy)) => {
            CudaStorageSlice::F32(rows_kernel(
                dev,
                "geglu_bwd_f32",
                &[
                    &elements(x, lx, "geglu bwd")?,
                    &elements(dy, ldy, "geglu bwd")?,
                ],
                n,
                (rows, half),
            )?)
        }
        (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(dy)) => {
            CudaStorageSlice::BF16(rows_kernel(
                dev,
                "geglu_bwd_bf16",
                &[
                    &elements(x, lx, "geglu bwd")?,
                    &elements(dy, ldy, "geglu bwd")?,
                ],
                n,
                (rows, half),
            )?)
        }
        _ => candle_core::bail!("geglu backward: no CUDA kernel for these dtypes"),
    };
    Ok(storage(slice, dev, lx))
}

/// The rotary module's PTX.
const ROTARY_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/rotary.ptx"));
/// Its module name in the device's cache.
const ROTARY_MODULE: &str = "maskrate_rotary";

fn rotary_typed<T: DeviceRepr>(
    dev: &CudaDevice,
    kernel: &str,
    (x, l): (&CudaSlice<T>, &Layout),
    (cos, sin): (&CudaSlice<f32>, &CudaSlice<f32>),
    (lc, ls): (&Layout, &Layout),
    (heads, sign): (usize, f32),
) -> Result<CudaSlice<T>> {
    let x = elements(x, l, "rotary")?;
    let (cos, sin) = (elements(cos, lc, "rotary")?, elements(sin, ls, "rotary")?);
    let width = *l.dims().last().unwrap_or(&0);
    let tokens = (x.len() / width.max(1)) as u64;
    let (h, width) = (width / 3, width as u64);
    let (qk, dh) = (2 * h as u64, (h / heads.max(1)) as u64);
    if cos.len() as u64 != tokens * dh / 2 || sin.len() != cos.len() {
        candle_core::bail!(
            "rotary: tables for {} values, {tokens} tokens of head size {dh}",
            cos.len()
        );
    }
    let func = dev.get_or_load_custom_func(kernel, ROTARY_MODULE, ROTARY_PTX)?;
    // SAFETY: the kernel writes every element.
    let y = unsafe { dev.alloc::<T>(x.len())? };
    let mut builder = func.builder();
    builder.arg(&x);
    builder.arg(&cos);
    builder.arg(&sin);
    builder.arg(&y);
    builder.arg(&tokens);
    builder.arg(&width);
    builder.arg(&qk);
    builder.arg(&dh);
    builder.arg(&sign);
    // SAFETY: the arguments match `ROTARY` in kernels/rotary.cu.
    unsafe { builder.launch(grid(tokens * width)) }.w()?;
    Ok(y)
}

/// The rotary op on the device: [`super::rotary`]'s CPU kernel (`inverse`: the backward), the
/// tables f32 whatever the activations' type.
pub(super) fn rotary(
    (s, l): (&CudaStorage, &Layout),
    (cos, lc): (&CudaStorage, &Layout),
    (sin, ls): (&CudaStorage, &Layout),
    heads: usize,
    inverse: bool,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s.device;
    let (CudaStorageSlice::F32(cos), CudaStorageSlice::F32(sin)) = (&cos.slice, &sin.slice) else {
        candle_core::bail!("rotary: f32 tables only")
    };
    let sign = if inverse { -1.0f32 } else { 1.0 };
    let tables = (cos, sin);
    let slice = match &s.slice {
        CudaStorageSlice::F32(x) => CudaStorageSlice::F32(rotary_typed(
            dev,
            "rotary_f32",
            (x, l),
            tables,
            (lc, ls),
            (heads, sign),
        )?),
        CudaStorageSlice::BF16(x) => CudaStorageSlice::BF16(rotary_typed(
            dev,
            "rotary_bf16",
            (x, l),
            tables,
            (lc, ls),
            (heads, sign),
        )?),
        _ => candle_core::bail!("rotary: no CUDA kernel for this dtype"),
    };
    Ok(storage(slice, dev, l))
}

/// The short-row attention module's PTX.
const ATTENTION_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
/// Its module name in the device's cache.
const ATTENTION_MODULE: &str = "maskrate_attention";
/// Warps per block of the attention kernels (`WARPS` in kernels/attention.cu): one row each.
const ATTENTION_WARPS: u32 = 4;

/// One warp per row of `len`, a block per `ATTENTION_WARPS` rows of one (sequence, head), with
/// `floats` f32 values of shared memory per warp.
fn attention_config(batch: usize, len: usize, heads: usize, floats: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            (len as u32).div_ceil(ATTENTION_WARPS),
            heads as u32,
            batch as u32,
        ),
        block_dim: (32 * ATTENTION_WARPS, 1, 1),
        shared_mem_bytes: ATTENTION_WARPS * floats as u32 * 4,
    }
}

/// A call's sizes, from qkv's `[B, L, 3H]` layout: (batch, len, hidden, head size).
fn attention_dims(l: &Layout, heads: usize) -> Result<(usize, usize, usize, usize)> {
    let &[batch, len, three_h] = l.dims() else {
        candle_core::bail!("attention: expected [B, L, 3H], got {:?}", l.dims())
    };
    let hidden = three_h / 3;
    Ok((batch, len, hidden, hidden / heads.max(1)))
}

/// The kernels' arguments after the tensors: len, hidden, heads, radius, use_segments, the Philox
/// key (two words), the drop threshold; and the keep factor.
fn attention_words(
    op: &super::attention_rows::RowsAttention,
    (len, hidden): (usize, usize),
) -> ([u32; 8], f32) {
    let (k0, k1, threshold, keep) = op.dropout_words();
    let words = [
        len as u32,
        hidden as u32,
        op.heads as u32,
        op.radius,
        op.use_segments as u32,
        k0,
        k1,
        threshold,
    ];
    (words, keep)
}

fn attention_fwd_typed<T: DeviceRepr>(
    dev: &CudaDevice,
    kernel: &str,
    (qkv, l): (&CudaSlice<T>, &Layout),
    (rule, lr): (&CudaSlice<f32>, &Layout),
    op: &super::attention_rows::RowsAttention,
) -> Result<CudaSlice<T>> {
    let (batch, len, hidden, dh) = attention_dims(l, op.heads)?;
    let (qkv, rule) = (elements(qkv, l, kernel)?, elements(rule, lr, kernel)?);
    let func = dev.get_or_load_custom_func(kernel, ATTENTION_MODULE, ATTENTION_PTX)?;
    // SAFETY: the kernel writes every element (each query row's head columns).
    let ctx = unsafe { dev.alloc::<T>(batch * len * hidden)? };
    let (words, keep) = attention_words(op, (len, hidden));
    let mut builder = func.builder();
    builder.arg(&qkv);
    builder.arg(&rule);
    builder.arg(&ctx);
    for w in &words {
        builder.arg(w);
    }
    builder.arg(&keep);
    // SAFETY: the arguments match `ATTENTION_FWD` in kernels/attention.cu.
    unsafe { builder.launch(attention_config(batch, len, op.heads, len + dh)) }.w()?;
    Ok(ctx)
}

fn attention_bwd_typed<T: DeviceRepr + ValidAsZeroBits>(
    dev: &CudaDevice,
    (kernel_q, kernel_kv): (&str, &str),
    (qkv, l): (&CudaSlice<T>, &Layout),
    (rule, lr): (&CudaSlice<f32>, &Layout),
    (dctx, lg): (&CudaSlice<T>, &Layout),
    op: &super::attention_rows::RowsAttention,
) -> Result<CudaSlice<T>> {
    let (batch, len, hidden, dh) = attention_dims(l, op.heads)?;
    let (qkv, rule) = (elements(qkv, l, kernel_q)?, elements(rule, lr, kernel_q)?);
    let dctx = elements(dctx, lg, kernel_q)?;
    if dctx.len() != batch * len * hidden {
        candle_core::bail!("attention bwd: gradient of {} values", dctx.len());
    }
    let dqkv = dev.alloc_zeros::<T>(qkv.len())?;
    let stats = dev.alloc_zeros::<f32>(3 * batch * op.heads * len)?;
    let (words, keep) = attention_words(op, (len, hidden));
    let config = attention_config(batch, len, op.heads, 2 * len + 2 * dh);
    for kernel in [kernel_q, kernel_kv] {
        let func = dev.get_or_load_custom_func(kernel, ATTENTION_MODULE, ATTENTION_PTX)?;
        let mut builder = func.builder();
        builder.arg(&qkv);
        builder.arg(&rule);
        builder.arg(&dctx);
        builder.arg(&dqkv);
        builder.arg(&stats);
        for w in &words {
            builder.arg(w);
        }
        builder.arg(&keep);
        // SAFETY: the arguments match `ATTENTION_BWD_Q` and `ATTENTION_BWD_KV` in
        // kernels/attention.cu; the second reads the stats the first wrote (one stream).
        unsafe { builder.launch(config) }.w()?;
    }
    Ok(dqkv)
}

/// Short-row attention on the device: [`super::attention_rows`]'s CPU twin, operation for
/// operation; the rule `[B, L, 2]` is f32.
pub(super) fn attention_rows(
    (s, l): (&CudaStorage, &Layout),
    (rule, lr): (&CudaStorage, &Layout),
    op: &super::attention_rows::RowsAttention,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s.device;
    let CudaStorageSlice::F32(rule) = &rule.slice else {
        candle_core::bail!("attention: f32 rule only")
    };
    let (batch, len, hidden, _) = attention_dims(l, op.heads)?;
    let slice = match &s.slice {
        CudaStorageSlice::F32(x) => CudaStorageSlice::F32(attention_fwd_typed(
            dev,
            "attention_fwd_f32",
            (x, l),
            (rule, lr),
            op,
        )?),
        CudaStorageSlice::BF16(x) => CudaStorageSlice::BF16(attention_fwd_typed(
            dev,
            "attention_fwd_bf16",
            (x, l),
            (rule, lr),
            op,
        )?),
        _ => candle_core::bail!("attention: no CUDA kernel for this dtype"),
    };
    let storage = CudaStorage {
        slice,
        device: dev.clone(),
    };
    Ok((storage, Shape::from((batch, len, hidden))))
}

/// Short-row attention's backward on the device: d qkv from (qkv, rule, d context).
pub(super) fn attention_rows_backward(
    (s, l): (&CudaStorage, &Layout),
    (rule, lr): (&CudaStorage, &Layout),
    (g, lg): (&CudaStorage, &Layout),
    op: &super::attention_rows::RowsAttention,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s.device;
    let CudaStorageSlice::F32(rule) = &rule.slice else {
        candle_core::bail!("attention bwd: f32 rule only")
    };
    let slice = match (&s.slice, &g.slice) {
        (CudaStorageSlice::F32(x), CudaStorageSlice::F32(g)) => {
            CudaStorageSlice::F32(attention_bwd_typed(
                dev,
                ("attention_bwd_q_f32", "attention_bwd_kv_f32"),
                (x, l),
                (rule, lr),
                (g, lg),
                op,
            )?)
        }
        (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(g)) => {
            CudaStorageSlice::BF16(attention_bwd_typed(
                dev,
                ("attention_bwd_q_bf16", "attention_bwd_kv_bf16"),
                (x, l),
                (rule, lr),
                (g, lg),
                op,
            )?)
        }
        _ => candle_core::bail!("attention bwd: no CUDA kernel for these dtypes"),
    };
    Ok(storage(slice, dev, l))
}

/// The layer norm module's PTX.
const LAYER_NORM_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/layer_norm.ptx"));
/// Its module name in the device's cache.
const LAYER_NORM_MODULE: &str = "maskrate_layer_norm";
/// Warps per block of the row kernels (`WARPS` in kernels/layer_norm.cu): one row each.
const LAYER_NORM_WARPS: u32 = 4;

/// One warp per row.
fn warp_rows(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(LAYER_NORM_WARPS), 1, 1),
        block_dim: (32 * LAYER_NORM_WARPS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The rows and width of x `[.., N]`, checked against the parameters' length.
fn norm_shape(l: &Layout, params: usize) -> Result<(usize, usize)> {
    let n = *l.dims().last().unwrap_or(&0);
    if n != params || n == 0 {
        candle_core::bail!("layer norm: {params} parameters for rows of {n}");
    }
    Ok((l.shape().elem_count() / n, n))
}

fn layer_norm_typed<T: DeviceRepr>(
    dev: &CudaDevice,
    kernel: &str,
    (x, l): (&CudaSlice<T>, &Layout),
    (w, lw): (&CudaSlice<T>, &Layout),
    (b, lb): (&CudaSlice<T>, &Layout),
    eps: f32,
) -> Result<CudaSlice<T>> {
    let (x, w, b) = (
        elements(x, l, kernel)?,
        elements(w, lw, kernel)?,
        elements(b, lb, kernel)?,
    );
    let (rows, n) = norm_shape(l, w.len())?;
    if b.len() != n {
        candle_core::bail!("layer norm: bias of {} for rows of {n}", b.len());
    }
    let func = dev.get_or_load_custom_func(kernel, LAYER_NORM_MODULE, LAYER_NORM_PTX)?;
    // SAFETY: the kernel writes every element.
    let y = unsafe { dev.alloc::<T>(x.len())? };
    let (rows64, n32) = (rows as u64, n as u32);
    let mut builder = func.builder();
    builder.arg(&x);
    builder.arg(&w);
    builder.arg(&b);
    builder.arg(&y);
    builder.arg(&rows64);
    builder.arg(&n32);
    builder.arg(&eps);
    // SAFETY: the arguments match `LAYER_NORM_FWD` in kernels/layer_norm.cu.
    unsafe { builder.launch(warp_rows(rows)) }.w()?;
    Ok(y)
}

fn layer_norm_bwd_typed<T: DeviceRepr>(
    dev: &CudaDevice,
    suffix: &str,
    (x, l): (&CudaSlice<T>, &Layout),
    (w, lw): (&CudaSlice<T>, &Layout),
    (dy, ldy): (&CudaSlice<T>, &Layout),
    (eps, per_task): (f32, usize),
) -> Result<CudaSlice<T>> {
    let (x, w, dy) = (
        elements(x, l, "layer norm bwd")?,
        elements(w, lw, "layer norm bwd")?,
        elements(dy, ldy, "layer norm bwd")?,
    );
    let (rows, n) = norm_shape(l, w.len())?;
    if dy.len() != x.len() {
        candle_core::bail!(
            "layer norm bwd: gradient of {} for {} values",
            dy.len(),
            x.len()
        );
    }
    let tasks = rows.div_ceil(per_task).max(1);
    let (rows64, n32, per_task32, tasks32) = (rows as u64, n as u32, per_task as u32, tasks as u32);
    let load = |name: &str| {
        dev.get_or_load_custom_func(
            &format!("{name}_{suffix}"),
            LAYER_NORM_MODULE,
            LAYER_NORM_PTX,
        )
    };
    // SAFETY: the row kernel writes the dx rows, the sum kernel the last two rows.
    let out = unsafe { dev.alloc::<T>((rows + 2) * n)? };
    let stats = dev.alloc_zeros::<f32>(2 * rows.max(1))?;
    let partial = dev.alloc_zeros::<f32>(2 * n * tasks)?;
    let func = load("layer_norm_bwd_rows")?;
    let mut builder = func.builder();
    builder.arg(&x);
    builder.arg(&w);
    builder.arg(&dy);
    builder.arg(&out);
    builder.arg(&stats);
    builder.arg(&rows64);
    builder.arg(&n32);
    builder.arg(&eps);
    // SAFETY: the arguments match `LAYER_NORM_BWD_ROWS`.
    unsafe { builder.launch(warp_rows(rows)) }.w()?;
    let func = load("layer_norm_bwd_params")?;
    let mut builder = func.builder();
    builder.arg(&x);
    builder.arg(&dy);
    builder.arg(&stats);
    builder.arg(&partial);
    builder.arg(&rows64);
    builder.arg(&n32);
    builder.arg(&per_task32);
    let columns = LaunchConfig {
        grid_dim: ((n as u32).div_ceil(THREADS), tasks as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match `LAYER_NORM_BWD_PARAMS`; it reads the stats written above.
    unsafe { builder.launch(columns) }.w()?;
    let func = load("layer_norm_bwd_sum")?;
    let mut builder = func.builder();
    builder.arg(&partial);
    builder.arg(&out);
    builder.arg(&rows64);
    builder.arg(&n32);
    builder.arg(&tasks32);
    // SAFETY: the arguments match `LAYER_NORM_BWD_SUM`.
    unsafe { builder.launch(grid(2 * n as u64)) }.w()?;
    Ok(out)
}

/// LayerNorm on the device: [`super::layer_norm`]'s CPU kernel, operation for operation (x,
/// weight and bias of one dtype).
pub(super) fn layer_norm(
    (x, l): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    let dev = &x.device;
    let slice = match (&x.slice, &w.slice, &b.slice) {
        (CudaStorageSlice::F32(x), CudaStorageSlice::F32(w), CudaStorageSlice::F32(b)) => {
            CudaStorageSlice::F32(layer_norm_typed(
                dev,
                "layer_norm_fwd_f32",
                (x, l),
                (w, lw),
                (b, lb),
                eps,
            )?)
        }
        (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(w), CudaStorageSlice::BF16(b)) => {
            CudaStorageSlice::BF16(layer_norm_typed(
                dev,
                "layer_norm_fwd_bf16",
                (x, l),
                (w, lw),
                (b, lb),
                eps,
            )?)
        }
        _ => candle_core::bail!("layer norm: no CUDA kernel for these dtypes"),
    };
    Ok(storage(slice, dev, l))
}

/// LayerNorm's backward on the device: `[rows + 2, N]` (dx rows, d weight, d bias) from (x,
/// weight, dy), the parameters' sums per task of `per_task` rows as the CPU kernel's.
pub(super) fn layer_norm_backward(
    (x, l): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    (dy, ldy): (&CudaStorage, &Layout),
    eps: f32,
    per_task: usize,
) -> Result<(CudaStorage, Shape)> {
    let dev = &x.device;
    let (rows, n) = norm_shape(l, lw.shape().elem_count())?;
    let slice = match (&x.slice, &w.slice, &dy.slice) {
        (CudaStorageSlice::F32(x), CudaStorageSlice::F32(w), CudaStorageSlice::F32(dy)) => {
            CudaStorageSlice::F32(layer_norm_bwd_typed(
                dev,
                "f32",
                (x, l),
                (w, lw),
                (dy, ldy),
                (eps, per_task),
            )?)
        }
        (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(w), CudaStorageSlice::BF16(dy)) => {
            CudaStorageSlice::BF16(layer_norm_bwd_typed(
                dev,
                "bf16",
                (x, l),
                (w, lw),
                (dy, ldy),
                (eps, per_task),
            )?)
        }
        _ => candle_core::bail!("layer norm bwd: no CUDA kernel for these dtypes"),
    };
    let storage = CudaStorage {
        slice,
        device: dev.clone(),
    };
    Ok((storage, Shape::from((rows + 2, n))))
}

/// The cross-entropy module's PTX.
const CROSS_ENTROPY_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/cross_entropy.ptx"));
/// Its module name in the device's cache.
const CROSS_ENTROPY_MODULE: &str = "maskrate_cross_entropy";
/// Rows per block of the forward kernel (`ROWS` in kernels/cross_entropy.cu), 16 threads each.
const CROSS_ENTROPY_ROWS: u32 = 16;

/// The u32 labels of a call, one per row.
fn labels_of<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    rows: usize,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, u32>> {
    let CudaStorageSlice::U32(labels) = &s.slice else {
        candle_core::bail!("cross-entropy: u32 labels only")
    };
    let labels = elements(labels, l, "cross-entropy labels")?;
    if labels.len() != rows {
        candle_core::bail!("cross-entropy: {} labels for {rows} rows", labels.len());
    }
    Ok(labels)
}

/// The rows and classes of logits `[M, V]`.
fn logits_shape(l: &Layout) -> Result<(usize, usize)> {
    let v = *l.dims().last().unwrap_or(&0);
    if v == 0 {
        candle_core::bail!("cross-entropy: no classes");
    }
    Ok((l.shape().elem_count() / v, v))
}

fn cross_entropy_typed<T: DeviceRepr>(
    dev: &CudaDevice,
    kernel: &str,
    (x, l): (&CudaSlice<T>, &Layout),
    (b, lb): (&CudaSlice<T>, &Layout),
    labels: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, u32>,
) -> Result<CudaSlice<f32>> {
    let (rows, v) = logits_shape(l)?;
    let (x, b) = (elements(x, l, kernel)?, elements(b, lb, kernel)?);
    if b.len() != v {
        candle_core::bail!("cross-entropy: bias of {} for {v} classes", b.len());
    }
    let func = dev.get_or_load_custom_func(kernel, CROSS_ENTROPY_MODULE, CROSS_ENTROPY_PTX)?;
    // SAFETY: the kernel writes every row's three values.
    let out = unsafe { dev.alloc::<f32>(3 * rows)? };
    let (rows64, v32) = (rows as u64, v as u32);
    let mut builder = func.builder();
    builder.arg(&x);
    builder.arg(&b);
    builder.arg(labels);
    builder.arg(&out);
    builder.arg(&rows64);
    builder.arg(&v32);
    let config = LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(CROSS_ENTROPY_ROWS).max(1), 1, 1),
        block_dim: (16 * CROSS_ENTROPY_ROWS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match `CROSS_ENTROPY_FWD` in kernels/cross_entropy.cu.
    unsafe { builder.launch(config) }.w()?;
    Ok(out)
}

/// Cross-entropy rows of logits + bias on the device: `[M, 3]` f32 (loss, hit, logsumexp), as
/// [`super::cross_entropy`]'s CPU kernel computes them.
pub(super) fn cross_entropy(
    (x, l): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    (t, lt): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = &x.device;
    let (rows, _) = logits_shape(l)?;
    let labels = labels_of(t, lt, rows)?;
    let out = match (&x.slice, &b.slice) {
        (CudaStorageSlice::F32(x), CudaStorageSlice::F32(b)) => {
            cross_entropy_typed(dev, "cross_entropy_fwd_f32", (x, l), (b, lb), &labels)?
        }
        (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(b)) => {
            cross_entropy_typed(dev, "cross_entropy_fwd_bf16", (x, l), (b, lb), &labels)?
        }
        _ => candle_core::bail!("cross-entropy: no CUDA kernel for these dtypes"),
    };
    let storage = CudaStorage {
        slice: CudaStorageSlice::F32(out),
        device: dev.clone(),
    };
    Ok((storage, Shape::from((rows, 3))))
}

fn cross_entropy_bwd_typed<T: DeviceRepr>(
    dev: &CudaDevice,
    kernel: &str,
    (x, l): (&CudaSlice<T>, &Layout),
    (b, lb): (&CudaSlice<T>, &Layout),
    terms: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, f32>,
) -> Result<CudaSlice<T>> {
    let (rows, v) = logits_shape(l)?;
    let (x, b) = (elements(x, l, kernel)?, elements(b, lb, kernel)?);
    if terms.len() != 3 * rows || b.len() != v {
        candle_core::bail!(
            "cross-entropy bwd: {} terms for {rows} rows, bias of {} for {v} classes",
            terms.len(),
            b.len()
        );
    }
    let func = dev.get_or_load_custom_func(kernel, CROSS_ENTROPY_MODULE, CROSS_ENTROPY_PTX)?;
    // SAFETY: the kernel writes every element.
    let dx = unsafe { dev.alloc::<T>(x.len())? };
    let (rows64, v32) = (rows as u64, v as u32);
    let mut builder = func.builder();
    builder.arg(&x);
    builder.arg(&b);
    builder.arg(terms);
    builder.arg(&dx);
    builder.arg(&rows64);
    builder.arg(&v32);
    // SAFETY: the arguments match `CROSS_ENTROPY_BWD` in kernels/cross_entropy.cu.
    unsafe { builder.launch(grid(x.len() as u64)) }.w()?;
    Ok(dx)
}

/// Cross-entropy's backward on the device: d logits from (logits, bias, `[M, 3]` of each row's
/// loss gradient, logsumexp and label).
pub(super) fn cross_entropy_backward(
    (x, l): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    (g, lg): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = &x.device;
    let CudaStorageSlice::F32(g) = &g.slice else {
        candle_core::bail!("cross-entropy bwd: f32 row terms only")
    };
    let terms = elements(g, lg, "cross-entropy bwd")?;
    let slice = match (&x.slice, &b.slice) {
        (CudaStorageSlice::F32(x), CudaStorageSlice::F32(b)) => CudaStorageSlice::F32(
            cross_entropy_bwd_typed(dev, "cross_entropy_bwd_f32", (x, l), (b, lb), &terms)?,
        ),
        (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(b)) => CudaStorageSlice::BF16(
            cross_entropy_bwd_typed(dev, "cross_entropy_bwd_bf16", (x, l), (b, lb), &terms)?,
        ),
        _ => candle_core::bail!("cross-entropy bwd: no CUDA kernel for these dtypes"),
    };
    Ok(storage(slice, dev, l))
}

/// The embedding module's PTX.
const EMBEDDING_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/embedding.ptx"));
/// Its module name in the device's cache.
const EMBEDDING_MODULE: &str = "maskrate_embedding";

/// The u32 ids of an embedding call.
fn ids_of<'a>(
    s: &'a CudaStorage,
    l: &Layout,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, u32>> {
    let CudaStorageSlice::U32(ids) = &s.slice else {
        candle_core::bail!("embedding: u32 ids only")
    };
    elements(ids, l, "embedding ids")
}

fn embedding_typed<T: DeviceRepr>(
    dev: &CudaDevice,
    kernel: &str,
    (table, l): (&CudaSlice<T>, &Layout),
    ids: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, u32>,
) -> Result<CudaSlice<T>> {
    let &[rows, width] = l.dims() else {
        candle_core::bail!("embedding: a [rows, width] table, got {:?}", l.dims())
    };
    let table = elements(table, l, kernel)?;
    let func = dev.get_or_load_custom_func(kernel, EMBEDDING_MODULE, EMBEDDING_PTX)?;
    // SAFETY: the kernel writes every element.
    let y = unsafe { dev.alloc::<T>(ids.len() * width)? };
    let (tokens, rows32, width32) = (ids.len() as u64, rows as u32, width as u32);
    let mut builder = func.builder();
    builder.arg(&table);
    builder.arg(ids);
    builder.arg(&y);
    builder.arg(&tokens);
    builder.arg(&rows32);
    builder.arg(&width32);
    // SAFETY: the arguments match `EMBEDDING_FWD` in kernels/embedding.cu.
    unsafe { builder.launch(grid(tokens * width as u64)) }.w()?;
    Ok(y)
}

/// The embedding lookup on the device: `[N, width]` rows of the table at the ids.
pub(super) fn embedding(
    (t, l): (&CudaStorage, &Layout),
    (ids, li): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = &t.device;
    let ids = ids_of(ids, li)?;
    let width = *l.dims().last().unwrap_or(&0);
    let slice = match &t.slice {
        CudaStorageSlice::F32(t) => {
            CudaStorageSlice::F32(embedding_typed(dev, "embedding_fwd_f32", (t, l), &ids)?)
        }
        CudaStorageSlice::BF16(t) => {
            CudaStorageSlice::BF16(embedding_typed(dev, "embedding_fwd_bf16", (t, l), &ids)?)
        }
        _ => candle_core::bail!("embedding: no CUDA kernel for this dtype"),
    };
    let storage = CudaStorage {
        slice,
        device: dev.clone(),
    };
    Ok((storage, Shape::from((ids.len(), width))))
}

/// The embedding gradient on the device: `dy` rows added at their ids into a zero `[rows, width]`
/// f32 table by atomic adds.
pub(super) fn embedding_backward(
    (ids, li): (&CudaStorage, &Layout),
    (dy, ldy): (&CudaStorage, &Layout),
    rows: usize,
) -> Result<(CudaStorage, Shape)> {
    let dev = &dy.device;
    let ids = ids_of(ids, li)?;
    let CudaStorageSlice::F32(dy) = &dy.slice else {
        candle_core::bail!("embedding bwd: f32 gradients only")
    };
    let dy = elements(dy, ldy, "embedding bwd")?;
    let width = dy.len() / ids.len().max(1);
    if width * ids.len() != dy.len() {
        candle_core::bail!("embedding bwd: {} values for {} ids", dy.len(), ids.len());
    }
    let dtable = dev.alloc_zeros::<f32>(rows * width)?;
    let func = dev.get_or_load_custom_func("embedding_bwd_f32", EMBEDDING_MODULE, EMBEDDING_PTX)?;
    let (tokens, rows32, width32) = (ids.len() as u64, rows as u32, width as u32);
    let mut builder = func.builder();
    builder.arg(&ids);
    builder.arg(&dy);
    builder.arg(&dtable);
    builder.arg(&tokens);
    builder.arg(&rows32);
    builder.arg(&width32);
    // SAFETY: the arguments match `embedding_bwd_f32` in kernels/embedding.cu.
    unsafe { builder.launch(grid(tokens * width as u64)) }.w()?;
    let storage = CudaStorage {
        slice: CudaStorageSlice::F32(dtable),
        device: dev.clone(),
    };
    Ok((storage, Shape::from((rows, width))))
}

/// `kernel(x, b, [dy,] out, n, width)` of the GELU module: bias + GELU's forward (no `dy`) or
/// backward, over x `[.., width]` with b `[width]` (and dy like x); `out` like x.
fn bias_gelu_typed<T: DeviceRepr>(
    dev: &CudaDevice,
    kernel: &str,
    (x, l): (&CudaSlice<T>, &Layout),
    (b, lb): (&CudaSlice<T>, &Layout),
    dy: Option<(&CudaSlice<T>, &Layout)>,
) -> Result<CudaSlice<T>> {
    let (x, b) = (elements(x, l, kernel)?, elements(b, lb, kernel)?);
    let width = *l.dims().last().unwrap_or(&0);
    if b.len() != width || width == 0 {
        candle_core::bail!("{kernel}: bias of {} for rows of {width}", b.len());
    }
    let dy = dy.map(|(dy, ldy)| elements(dy, ldy, kernel)).transpose()?;
    if let Some(dy) = &dy {
        if dy.len() != x.len() {
            candle_core::bail!("{kernel}: gradient of {} for {} values", dy.len(), x.len());
        }
    }
    let (n, width) = (x.len() as u64, width as u64);
    let func = dev.get_or_load_custom_func(kernel, GELU_MODULE, GELU_PTX)?;
    // SAFETY: the kernel writes every element.
    let out = unsafe { dev.alloc::<T>(x.len())? };
    let mut builder = func.builder();
    builder.arg(&x);
    builder.arg(&b);
    if let Some(dy) = &dy {
        builder.arg(dy);
    }
    builder.arg(&out);
    builder.arg(&n);
    builder.arg(&width);
    // SAFETY: the arguments match `BIAS_GELU_FWD` / `BIAS_GELU_BWD` in kernels/gelu.cu.
    unsafe { builder.launch(grid(n)) }.w()?;
    Ok(out)
}

/// Bias + GELU on the device: [`super::bias_gelu`]'s CPU kernel (`dy`: its backward's dx).
pub(super) fn bias_gelu(
    (x, l): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    dy: Option<(&CudaStorage, &Layout)>,
) -> Result<(CudaStorage, Shape)> {
    let dev = &x.device;
    let pass = if dy.is_some() { "bwd" } else { "fwd" };
    let slice = match (&x.slice, &b.slice, dy.map(|(s, l)| (&s.slice, l))) {
        (CudaStorageSlice::F32(x), CudaStorageSlice::F32(b), None) => CudaStorageSlice::F32(
            bias_gelu_typed(dev, "bias_gelu_fwd_f32", (x, l), (b, lb), None)?,
        ),
        (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(b), None) => CudaStorageSlice::BF16(
            bias_gelu_typed(dev, "bias_gelu_fwd_bf16", (x, l), (b, lb), None)?,
        ),
        (
            CudaStorageSlice::F32(x),
            CudaStorageSlice::F32(b),
            Some((CudaStorageSlice::F32(d), ld)),
        ) => CudaStorageSlice::F32(bias_gelu_typed(
            dev,
            "bias_gelu_bwd_f32",
            (x, l),
            (b, lb),
            Some((d, ld)),
        )?),
        (
            CudaStorageSlice::BF16(x),
            CudaStorageSlice::BF16(b),
            Some((CudaStorageSlice::BF16(d), ld)),
        ) => CudaStorageSlice::BF16(bias_gelu_typed(
            dev,
            "bias_gelu_bwd_bf16",
            (x, l),
            (b, lb),
            Some((d, ld)),
        )?),
        _ => candle_core::bail!("bias + gelu {pass}: no CUDA kernel for these dtypes"),
    };
    Ok(storage(slice, dev, l))
}
