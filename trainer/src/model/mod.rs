//! The BERT masked-language model, written on candle-core/candle-nn primitives that train.
//!
//! - [`config`]: sizes and presets.
//! - [`params`]: named, seeded parameters (HF `BertForMaskedLM` names).
//! - [`ops`]: LayerNorm, softmax and dropout (composed from differentiable ops on any device).
//! - [`fused`]: CPU kernels with their own backward for softmax and LayerNorm.
//! - [`bert`]: embeddings → encoder → MLM head at masked positions only.

pub mod bert;
pub mod config;
pub mod fused;
pub mod ops;
pub mod params;

pub use bert::{Bert, Linear, MlmInputs, MlmOutput};
pub use config::BertConfig;
pub use params::ParamStore;
