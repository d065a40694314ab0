//! `--device auto|cpu|cuda:N`: the device is a parameter everywhere; CUDA needs the `cuda` feature.
//! `--precision auto|fp32|bf16`: the dtype of activations and matrix products on that device.

use anyhow::{bail, Result};
use candle_core::{DType, Device};

/// The device as `--device` spells it (`cpu`, `cuda:N`).
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Parses a precision spec for `device`: `fp32`; `bf16` (bf16 copies of the parameters and bf16
/// activations end to end, the kernels accumulating in f32; the f32 parameters are the masters
/// the optimizer updates, gradients accumulating in f32); `auto` = bf16
/// on CUDA, fp32 on the CPU (candle has no bf16 CPU matmul kernel: it widens to f32, so bf16
/// there is slower and only useful for testing).
pub fn compute_dtype(spec: &str, device: &Device) -> Result<DType> {
    match spec {
        "fp32" | "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "auto" => Ok(if device.is_cuda() {
            DType::BF16
        } else {
            DType::F32
        }),
        other => bail!("--precision {other:?}: expected auto, fp32 or bf16"),
    }
}

/// Parses a device spec; `default_ordinal` is the GPU that `auto` and a bare `cuda` mean (the
/// process's node-local rank in a data-parallel job, else 0). `auto` falls back to the CPU, with a
/// one-line notice, when this build has CUDA but no usable GPU is found (no driver, a stub
/// library, fewer GPUs than ranks); `cuda:N` then fails saying what is missing.
pub fn parse(spec: &str, default_ordinal: usize) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if !candle_core::utils::cuda_is_available() {
                return Ok(Device::Cpu);
            }
            match Device::new_cuda(default_ordinal) {
                Ok(d) => Ok(d),
                Err(e) => {
                    eprintln!(
                        "note: --device auto: no usable CUDA GPU {default_ordinal} ({}); using the CPU",
                        first_line(&e.to_string())
                    );
                    Ok(Device::Cpu)
                }
            }
        }
        s if s.starts_with("cuda") => {
            let ordinal: usize = s
                .strip_prefix("cuda")
                .and_then(|r| r.strip_prefix(':').or(Some(r)))
                .filter(|r| !r.is_empty())
                .map_or(Ok(default_ordinal), |r| r.parse())
                .map_err(|_| anyhow::anyhow!("--device {s}: expected cuda:N"))?;
            if !candle_core::utils::cuda_is_available() {
                bail!("--device {s}: this build has no CUDA support (build with --features cuda)");
            }
            Device::new_cuda(ordinal).map_err(|e| {
                anyhow::anyhow!(
                    "--device {s}: cannot open CUDA GPU {ordinal}: {} (is the NVIDIA driver \
                     installed, and is there a GPU {ordinal} on this node? `nvidia-smi` lists them)",
                    first_line(&e.to_string())
                )
            })
        }
        other => bail!("--device {other:?}: expected auto, cpu or cuda:N"),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
