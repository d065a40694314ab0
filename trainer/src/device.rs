//! `--device auto|cpu|cuda:N`: the device is a parameter everywhere; CUDA needs the `cuda` feature.

use anyhow::{bail, Result};
use candle_core::Device;

/// Parses a device spec.
pub fn parse(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if candle_core::utils::cuda_is_available() {
            Device::new_cuda(0)?
        } else {
            Device::Cpu
        }),
        s if s.starts_with("cuda") => {
            let ordinal: usize = s
                .strip_prefix("cuda")
                .and_then(|r| r.strip_prefix(':').or(Some(r)))
                .filter(|r| !r.is_empty())
                .map_or(Ok(0), |r| r.parse())
                .map_err(|_| anyhow::anyhow!("--device {s}: expected cuda:N"))?;
            if !candle_core::utils::cuda_is_available() {
                bail!("--device {s}: this build has no CUDA support (build with --features cuda)");
            }
            Ok(Device::new_cuda(ordinal)?)
        }
        other => bail!("--device {other:?}: expected auto, cpu or cuda:N"),
    }
}
