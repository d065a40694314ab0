//! One type for either architecture: what training, evaluation and export call.

use crate::bert_config::{Arch, BertConfig};
use crate::modernbert::{ModernBert, TokenLayout};
use crate::ops::Dropout;
use crate::params::ParamStore;
use crate::{Bert, MlmInputs, MlmOutput};
use candle_core::{Result, Tensor};

/// A masked-language model of the architecture its configuration names.
pub enum Encoder {
    /// BERT.
    Bert(Bert),
    /// ModernBERT.
    ModernBert(ModernBert),
}

impl Encoder {
    /// Builds (or binds to existing) parameters in `p` for `cfg.arch`.
    pub fn new(cfg: BertConfig, p: &ParamStore) -> Result<Self> {
        Ok(match cfg.arch {
            Arch::Bert => Encoder::Bert(Bert::new(cfg, p)?),
            Arch::ModernBert => Encoder::ModernBert(ModernBert::new(cfg, p)?),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        match self {
            Encoder::Bert(m) => m.config(),
            Encoder::ModernBert(m) => m.config(),
        }
    }

    /// The BERT model, if this is one (sentence-pair classification needs token types).
    pub fn as_bert(&self) -> Option<&Bert> {
        match self {
            Encoder::Bert(m) => Some(m),
            Encoder::ModernBert(_) => None,
        }
    }

    /// Final hidden states `[B, L, H]` of single segments; `dropout` = `None` for evaluation.
    pub fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        dropout: &mut Option<Dropout>,
    ) -> Result<Tensor> {
        match self {
            Encoder::Bert(m) => m.encode(input_ids, attention_mask, dropout),
            Encoder::ModernBert(m) => {
                m.encode(input_ids, attention_mask, &TokenLayout::default(), dropout)
            }
        }
    }

    /// MLM logits `[M, V]` at flat positions `positions` of hidden states `[B, L, H]`.
    pub fn mlm_logits(&self, hidden: &Tensor, positions: &Tensor) -> Result<Tensor> {
        match self {
            Encoder::Bert(m) => m.mlm_logits(hidden, positions),
            Encoder::ModernBert(m) => m.mlm_logits(hidden, positions),
        }
    }

    /// Forward pass and masked-LM loss on one micro-batch (its layout included).
    pub fn mlm_loss(&self, inputs: &MlmInputs, dropout: &mut Option<Dropout>) -> Result<MlmOutput> {
        match self {
            Encoder::Bert(m) => m.mlm_loss(inputs, dropout),
            Encoder::ModernBert(m) => m.mlm_loss(inputs, &inputs.layout, dropout),
        }
    }
}
