//! maskrate's trainer: shards → step-aware masking sampler → BERT MLM, and the tools around it.
//!
//! - [`data`]: the flags that fix the data stream, shared by training and inspection.
//! - [`model`]: BERT for masked LM on candle (MLM head at masked positions only).
//! - [`optim`]: decoupled AdamW and gradient clipping.
//! - [`step`]: one optimisation step (forward/backward over micro-batches → gradient sync →
//!   clip + AdamW), driven by pretraining and fine-tuning alike.
//! - [`train`]: the pretraining loop; [`checkpoint`], [`metrics`], [`eval`] serve it.
//! - [`export`]: HuggingFace `BertForMaskedLM` checkpoints.
//! - [`downstream`]: GLUE fine-tuning and BLiMP scoring of checkpoints.
//! - [`sweep`]: many schedules × seeds on one shard set, evaluated alike, and the generated report.
//! - [`inspect`]: `inspect-batch`, the batch of any step made visible.
//! - [`plot`], [`plots`]: PNG charts; [`config`]: TOML config files; [`device`]: `--device`.
//!
//! Invariant: the device is a parameter everywhere; nothing assumes CPU except where a test says so.

pub mod alloc;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod downstream;
pub mod eval;
pub mod export;
pub mod inspect;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plot;
pub mod plots;
pub mod step;
pub mod sweep;
pub mod train;
