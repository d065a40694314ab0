//! The masked-language models (BERT, ModernBERT), written on candle-core/candle-nn primitives that train.
//!
//! - [`bert_config`]: sizes and presets, and the HuggingFace `config.json` they map to.
//! - [`params`]: named, seeded parameters (HF `BertForMaskedLM` names), and loading them by name.
//! - [`ops`]: the differentiable building blocks, one file per op: LayerNorm, softmax, attention,
//!   GELU, bias add, cross-entropy, dropout, autocast matmul. Each has a fused CPU kernel with its
//!   own backward and a composed twin for every other device; [`ops::supports`] chooses.
//! - [`bert`]: embeddings → encoder → MLM head at masked positions only.
//! - [`modernbert`]: ModernBERT (rotary, GeGLU, local/global attention, no biases), same head rule.
//! - [`encoder`]: either architecture behind one type, chosen by the configuration's `arch`.
//!
//! Invariant: the device is a parameter everywhere; nothing assumes CPU except where a test says so.

pub mod bert;
pub mod bert_config;
pub mod encoder;
#[cfg(feature = "test-support")]
pub mod fixtures;
pub mod layers;
pub mod modernbert;
pub mod ops;
pub mod params;

pub use bert::{Bert, MlmInputs, MlmOutput};
pub use bert_config::{Arch, BertConfig};
pub use encoder::Encoder;
pub use layers::{Linear, Norm};
pub use modernbert::{ModernBert, TokenLayout};
pub use params::ParamStore;
