//! The BERT masked-language model, written on candle-core/candle-nn primitives that train.
//!
//! - [`config`]: sizes and presets.
//! - [`params`]: named, seeded parameters (HF `BertForMaskedLM` names).
//! - [`ops`]: LayerNorm, softmax, attention, GELU, cross-entropy and dropout; fused CPU kernels
//!   where they apply, composed differentiable ops on any other device.
//! - [`fused`]: CPU kernels with their own backward (softmax, LayerNorm, cross-entropy, bias, GELU).
//! - [`attention`]: multi-head self-attention as one CPU kernel with its own backward.
//! - [`vmath`]: vectorised exp/erf row kernels (softmax, log-sum-exp, GELU) the kernels share.
//! - [`bert`]: embeddings → encoder → MLM head at masked positions only.

pub mod attention;
pub mod bert;
pub mod config;
pub mod fused;
pub mod ops;
pub mod params;
pub mod vmath;

pub use bert::{Bert, Linear, MlmInputs, MlmOutput};
pub use config::BertConfig;
pub use params::ParamStore;
