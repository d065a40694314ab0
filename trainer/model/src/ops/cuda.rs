//! Launchers of this crate's CUDA kernels (`kernels/*.cu`, compiled to PTX by build.rs), called
//! from the ops' `cuda_fwd`. Each kernel has a CPU twin in the op's file doing the same
//! arithmetic; the GPU bundle (`trainer device-check`) compares the two.

use super::dropout::DropoutMask;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape};

/// The dropout module's PTX.
const DROPOUT_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/dropout.ptx"));
/// Its module name in the device's cache.
const DROPOUT_MODULE: &str = "maskrate_dropout";

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

fn dropout_typed<T: DeviceRepr>(
    dev: &CudaDevice,
    kernel: &str,
    x: &CudaSlice<T>,
    l: &Layout,
    mask: &DropoutMask,
) -> Result<CudaSlice<T>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("dropout: contiguous input only")
    };
    let n = (b - a) as u64;
    let x = x.slice(a..b);
    let func = dev.get_or_load_custom_func(kernel, DROPOUT_MODULE, DROPOUT_PTX)?;
    // SAFETY: every element is written by the kernel below.
    let y = unsafe { dev.alloc::<T>(b - a)? };
    let (threshold, keep) = mask.threshold_and_keep();
    let (k0, k1) = (mask.key as u32, (mask.key >> 32) as u32);
    let mut builder = func.builder();
    builder.arg(&x);
    builder.arg(&y);
    builder.arg(&n);
    builder.arg(&k0);
    builder.arg(&k1);
    builder.arg(&threshold);
    builder.arg(&keep);
    // SAFETY: the arguments match the kernel's signature in kernels/dropout.cu.
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
            CudaStorageSlice::F32(dropout_typed(dev, "dropout_f32", x, l, mask)?)
        }
        CudaStorageSlice::BF16(x) => {
            CudaStorageSlice::BF16(dropout_typed(dev, "dropout_bf16", x, l, mask)?)
        }
        CudaStorageSlice::F16(x) => {
            CudaStorageSlice::F16(dropout_typed(dev, "dropout_f16", x, l, mask)?)
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
