//! The flags every command that computes shares: where it runs and whether it draws progress bars.

use clap::Args;
use serde::{Deserialize, Serialize};

/// `--device` and `--quiet`, flattened into each subcommand's flags (and into saved configs as
/// top-level keys).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct RuntimeArgs {
    /// Device: auto (CUDA when built with it and present, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// The ops' implementation: fused (this project's kernels where the device has them: the
    /// CPU's, or the CUDA ones), composed (candle's tensor ops everywhere: the path a device
    /// without kernels runs, to compare or to check a GPU step's transfers on a CPU) or twins (a
    /// GPU step's path on a CPU, the CUDA kernels' CPU twins in their place).
    #[arg(long, default_value = "fused", value_parser = parse_kernels)]
    #[serde(default = "default_kernels")]
    pub kernels: model::ops::Kernels,
}

fn parse_kernels(s: &str) -> Result<model::ops::Kernels, String> {
    match s {
        "fused" => Ok(model::ops::Kernels::Fused),
        "composed" => Ok(model::ops::Kernels::Composed),
        "twins" => Ok(model::ops::Kernels::Twins),
        other => Err(format!(
            "unknown kernels {other:?}: fused, composed or twins"
        )),
    }
}

fn default_kernels() -> model::ops::Kernels {
    model::ops::Kernels::Fused
}

impl RuntimeArgs {
    /// Applies `--kernels` to the process (before any model is built).
    pub fn apply_kernels(&self) {
        model::ops::set_kernels(self.kernels);
    }

    /// The device `--device` names.
    pub fn device(&self) -> anyhow::Result<candle_core::Device> {
        crate::device::parse(&self.device, 0)
    }

    /// The device of the process with node-local rank `local_rank`: `auto` and `cuda` (without
    /// an ordinal) pick GPU `local_rank`, one process per GPU; `cuda:N` and `cpu` are taken as
    /// given.
    pub fn device_for_rank(&self, local_rank: usize) -> anyhow::Result<candle_core::Device> {
        crate::device::parse(&self.device, local_rank)
    }
}
