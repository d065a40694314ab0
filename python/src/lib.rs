//! `maskrate._maskrate`, the extension module behind the `maskrate` Python package: maskrate's
//! token shards, masking-rate schedules and step-aware masking sampler, without candle.
//!
//! - [`shards`]: `Shards`, a shard directory whose documents are zero-copy numpy views of the maps.
//! - [`schedule`]: `Schedule` and `LrSchedule`, the CLI's schedule grammars and values.
//! - [`batches`]: `MaskedBatches`, the trainer's batch of any step (or one rank's rows of it), built
//!   in Rust with the GIL released.
//! - [`preprocessing`]: `preprocess(...)` and the `preprocess` command line, run off the GIL with
//!   Ctrl-C handled.
//! - [`convert`]: settings, sizes and paths between Python and Rust.
//! - [`inspect`]: the `inspect-batch` command line.
//! - [`errors`]: Rust errors as Python exceptions (`OSError` for I/O, `ValueError` otherwise).

pub mod batches;
pub mod convert;
pub mod errors;
pub mod inspect;
pub mod preprocessing;
pub mod schedule;
pub mod shards;

use pyo3::prelude::*;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Every architecture's model presets, the trainer's table (`trainer presets --json`):
/// `{arch: {dropout, max_position_embeddings, layer_norm_eps, presets: {name: shape}}}`, shapes
/// in transformers' config names.
#[pyfunction]
fn model_presets(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    convert::json_to_py(py, &shared::presets::all_json())
}

/// The extension module.
#[pymodule]
fn _maskrate(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // `mi_option_purge_delay` (15 in mimalloc.h): -1 = never return freed pages to the OS.
    // SAFETY: sets a process-wide mimalloc option; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    m.add_class::<shards::Shards>()?;
    m.add_class::<schedule::Schedule>()?;
    m.add_class::<schedule::PyLrSchedule>()?;
    m.add_class::<batches::MaskedBatches>()?;
    m.add_function(wrap_pyfunction!(preprocessing::preprocess_files, m)?)?;
    m.add_function(wrap_pyfunction!(preprocessing::preprocess_cli, m)?)?;
    m.add_function(wrap_pyfunction!(inspect::inspect_batch_cli, m)?)?;
    m.add_function(wrap_pyfunction!(model_presets, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("SCHEDULE_GRAMMAR", shared::schedule::GRAMMAR)?;
    m.add(
        "PREPROCESS_SETTINGS",
        convert::json_to_py(
            m.py(),
            &::preprocess::cli::RunArgs::default_settings().into(),
        )?,
    )?;
    m.add(
        "DATA_CONFIG_KEYS",
        shared::sampler::DataConfig::keys().to_vec(),
    )?;
    Ok(())
}
