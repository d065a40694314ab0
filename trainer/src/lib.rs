//! maskrate's trainer: shards → step-aware masking sampler → BERT MLM, and the tools around it.
//!
//! - [`data`]: the flags that fix the data stream, shared by training and inspection.
//! - [`inspect`]: `inspect-batch`, the batch of any step made visible.
//! - [`plot`]: PNG charts.

pub mod data;
pub mod inspect;
pub mod plot;
