//! The data flags: [`shared::sampler::DataConfig`] (everything a batch depends on, shared with
//! `inspect-batch` and the Python package) plus how batches are built here (threads, prefetch).

use clap::Args;
use serde::{Deserialize, Serialize};
pub use shared::sampler::Data;
use shared::sampler::DataConfig;

/// Data and masking flags.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct DataArgs {
    /// What the batches are.
    #[command(flatten)]
    #[serde(flatten)]
    pub config: DataConfig,
    /// Threads building batches (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub loader_threads: usize,
    /// Micro-batches built ahead of the model.
    #[arg(long, default_value_t = 4)]
    pub prefetch: usize,
}
