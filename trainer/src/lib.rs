//! The `trainer` binary's own parts: everything below the command line that is not training or
//! evaluation (those are the `training` and `evaluation` crates, on the `model` crate).
//!
//! - [`sweep`]: many schedules × seeds on one shard set, evaluated alike, and the generated report.
//! - [`inspect`]: `inspect-batch`, the batch of any step made visible.
//! - [`device_check`]: `device-check`, the device's kernels against their CPU twins.
//! - [`eval`]: `eval`, a run's held-out loss at 15% and ELBO after the fact.
//! - [`sample`]: `sample`, text from a masked-diffusion model by ancestral unmasking.
//! - [`charts`]: PNG line charts (plotters with a bundled font); [`run_plots`]: the charts of one
//!   run and the comparison of several (`trainer plot`).

pub mod charts;
pub mod device_check;
pub mod eval;
pub mod inspect;
pub mod plan;
pub mod run_plots;
pub mod sample;
pub mod sweep;
