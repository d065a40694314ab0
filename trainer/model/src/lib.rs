//! The masked-language models (BERT, ModernBERT), written on candle-core/candle-nn primitives that train.
//!
//! - [`bert_config`]: sizes, presets and the architecture; each model file owns its HuggingFace
//!   `config.json` ([`bert::HfBertConfig`], [`modernbert::HfModernBertConfig`]).
//! - [`params`]: named, seeded parameters (transformers' names for each architecture), and
//!   loading them by name.
//! - [`layers`]: `Linear` and `Norm`, with or without biases.
//! - [`ops`]: the differentiable building blocks, one file per op: layer norm, softmax, attention,
//!   GELU, GeGLU, rotary, bias add, cross-entropy, dropout, autocast matmul. The fused ones have a
//!   CPU kernel with its own backward and a composed twin for every other device
//!   ([`ops::supports`] chooses); dropout and matmul are plain candle ops on every device.
//! - [`mlm`]: the MLM task every architecture serves: inputs, layout, output, the one loss.
//! - [`bert`]: embeddings → encoder → MLM head at masked positions only.
//! - [`modernbert`]: ModernBERT (rotary, GeGLU, local/global attention, no biases), same head rule.
//! - [`encoder`]: either architecture behind one type, chosen by the configuration's `arch`.
//! - [`transfer`]: the ledger every host↔device crossing goes through.
//!
//! Invariant: the device is a parameter everywhere; nothing assumes CPU except where a test says so.

pub mod bert;
pub mod bert_config;
pub mod encoder;
#[cfg(feature = "test-support")]
pub mod fixtures;
pub mod layers;
pub mod mlm;
pub mod modernbert;
pub mod ops;
pub mod params;
pub mod transfer;

pub use bert::Bert;
pub use bert_config::{Arch, BertConfig};
pub use encoder::Encoder;
pub use layers::{Linear, Norm};
pub use mlm::{MaskedLm, MlmInputs, MlmOutput, TokenLayout};
pub use modernbert::ModernBert;
pub use params::ParamStore;
