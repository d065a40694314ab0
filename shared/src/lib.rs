//! maskrate's shared library: everything both binaries agree on, and nothing about tensors.
//!
//! 1. [`shard`]: the on-disk token-shard format (Megatron-LM MMIDIDX pairs + `manifest.json`),
//!    its atomic writer and zero-copy reader.
//! 2. [`tokenizer`]: the tokenizer fingerprint recorded with every shard set.
//! 3. [`schedule`]: masking-rate and learning-rate schedules as pure functions of the step.
//! 4. [`sampler`]: sequences, order and masking: batch = f(seed, step).
//! 5. [`atomic`]: write-temporary-then-rename helpers used for every output file.
//! 6. [`seed`]: seed derivation, `seed_of(&[seed, TAG, ...])`, for every random stream.
//! 7. [`store`]: object storage (`s3://`, `gs://`, `az://`, `https://`) and the bounded shard cache.
//! 8. [`size`]: the one grammar for sizes in bytes (`1GB` = 10^9, `1GiB` = `1G` = 2^30).
//! 9. [`philox`]: Philox4x32-10, the counter-based generator for device-side dropout masks.
//! 10. [`presets`]: each model architecture's named shapes and published defaults.
//! 11. [`rate_dist`]: distributions of masking rates per row, parameters on schedules.
//! 12. `fixtures` (feature `test-support`): shard sets for tests and benchmarks.
//!
//! Invariant: no candle, no tensors. The trainer turns [`sampler::Batch`] into tensors.

pub mod atomic;
pub mod error;
pub mod faults;
#[cfg(feature = "test-support")]
pub mod fixtures;
#[cfg(feature = "test-support")]
pub mod fuzz;
pub mod lock;
pub mod philox;
pub mod presets;
pub mod rate_dist;
pub mod sampler;
pub mod schedule;
pub mod seed;
pub mod shard;
pub mod size;
pub mod store;
pub mod tokenizer;

pub use error::{Error, Result};
