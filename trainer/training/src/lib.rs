//! maskrate's training: the step every loop drives, and the pretraining loop around it.
//!
//! - [`step`]: `TrainStep`, one optimisation step in three stages: `forward_backward`
//!   (micro-batches, accumulation) → `reduce` (summed over ranks by a `dist::Collective`) →
//!   `update` (clip, AdamW), its numbers left on the device. Pretraining and GLUE fine-tuning
//!   both drive it; [`profile`] times its phases and counts its transfers (`--profile`).
//! - [`optim`]: decoupled AdamW and gradient clipping (f64 norm).
//! - [`pretrain`]: `TrainArgs` and the pretraining loop; [`data`] the flags that fix the data
//!   stream; [`held_out`] held-out loss at a fixed rate and mask seed; [`metrics_log`]
//!   `metrics.jsonl`; [`checkpoint`] atomic safetensors checkpoints.
//! - [`saved_model`]: weights + config + tokenizer from a run, a checkpoint or a HuggingFace
//!   directory; [`export`] writes a HuggingFace `BertForMaskedLM` directory.
//! - [`dist`]: the ranks of a data-parallel job and its collectives (MPI with feature `mpi`).
//! - [`runtime`]: the `--device`/`--quiet` flags every command that computes shares;
//!   [`config_file`] `--config run.toml`; [`alloc`] the allocator setting binaries use.

pub mod alloc;
pub mod checkpoint;
pub mod config_file;
pub mod data;
pub mod device;
pub mod dist;
pub mod export;
pub mod held_out;
pub mod metrics_log;
pub mod optim;
pub mod pretrain;
pub mod profile;
pub mod runtime;
pub mod saved_model;
pub mod step;
