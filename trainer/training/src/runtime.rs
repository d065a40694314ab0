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
}

impl RuntimeArgs {
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
