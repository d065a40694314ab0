//! One type for either architecture: what training, evaluation and export call.

use crate::bert::HfBertConfig;
use crate::bert_config::{Arch, BertConfig};
use crate::mlm::{MaskedLm, MlmInputs, TokenLayout};
use crate::modernbert::{HfModernBertConfig, ModernBert};
use crate::ops::Dropout;
use crate::params::ParamStore;
use crate::Bert;
use candle_core::{Result, Tensor};
use serde::Deserialize;

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

    /// Final hidden states `[B, L, H]` of single segments in the default layout; `dropout` =
    /// `None` for evaluation.
    pub fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        dropout: Option<&Dropout>,
    ) -> Result<Tensor> {
        let layout = TokenLayout::default();
        match self {
            Encoder::Bert(m) => {
                m.encode_laid_out(input_ids, None, attention_mask, &layout, dropout)
            }
            Encoder::ModernBert(m) => m.encode(input_ids, attention_mask, &layout, dropout),
        }
    }
}

impl MaskedLm for Encoder {
    fn hidden_states(&self, inputs: &MlmInputs, dropout: Option<&Dropout>) -> Result<Tensor> {
        match self {
            Encoder::Bert(m) => m.hidden_states(inputs, dropout),
            Encoder::ModernBert(m) => m.hidden_states(inputs, dropout),
        }
    }

    fn mlm_decoder(&self, hidden: &Tensor, positions: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        match self {
            Encoder::Bert(m) => m.mlm_decoder(hidden, positions),
            Encoder::ModernBert(m) => m.mlm_decoder(hidden, positions),
        }
    }
}

/// transformers' `config.json` for `cfg` as class `Bert{task}` or `ModernBert{task}` (`task`
/// e.g. `ForMaskedLM`, `ForSequenceClassification`); `specials` are the tokenizer's (pad, cls,
/// sep, mask) ids; `extra` keys (e.g. `num_labels`) are added and win on a clash.
pub fn hf_config(
    cfg: &BertConfig,
    task: &str,
    specials: [u32; 4],
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut hf = match cfg.arch {
        Arch::Bert => {
            serde_json::to_value(HfBertConfig::new(cfg, &format!("Bert{task}"), specials[0]))
        }
        Arch::ModernBert => serde_json::to_value(HfModernBertConfig::new(
            cfg,
            &format!("ModernBert{task}"),
            specials,
        )),
    }
    .expect("a config of numbers and strings serializes");
    if let (Some(map), serde_json::Value::Object(extra)) = (hf.as_object_mut(), extra) {
        map.extend(extra);
    }
    hf
}

/// The configuration a transformers `config.json` (read as `hf`) describes, by its `model_type`
/// (`bert` when absent), or what is wrong with it.
pub fn config_from_hf(hf: &serde_json::Value) -> std::result::Result<BertConfig, String> {
    let read = |e: serde_json::Error| e.to_string();
    match hf["model_type"].as_str() {
        None | Some("bert") => {
            let mut hf = hf.clone();
            hf["model_type"] = "bert".into();
            HfBertConfig::deserialize(&hf).map_err(read)?.to_config()
        }
        Some("modernbert") => HfModernBertConfig::deserialize(hf)
            .map_err(read)?
            .to_config(),
        Some(other) => Err(format!(
            "model_type {other:?} is neither bert nor modernbert"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each architecture's `config.json` reads back as the configuration it was written from;
    /// `extra` keys are added and win.
    #[test]
    fn hf_configs_round_trip_for_both_architectures() {
        for arch in [Arch::Bert, Arch::ModernBert] {
            let mut cfg = BertConfig::from_arch_preset(arch, "mini", 30522).unwrap();
            cfg.modern.local_window = 64;
            cfg.dropout = 0.05;
            cfg.pre_ln = false;
            let extra = serde_json::json!({"num_labels": 3, "model_type": "ignored"});
            let mut hf = hf_config(&cfg, "ForSequenceClassification", [0, 101, 102, 103], extra);
            assert_eq!(hf["num_labels"], 3);
            hf["model_type"] = arch.name().into();
            let prefix = if arch == Arch::Bert {
                "Bert"
            } else {
                "ModernBert"
            };
            assert_eq!(
                hf["architectures"][0],
                format!("{prefix}ForSequenceClassification")
            );
            let back = config_from_hf(&hf).unwrap();
            let want = BertConfig {
                modern: match arch {
                    Arch::Bert => Default::default(),
                    Arch::ModernBert => cfg.modern,
                },
                ..cfg
            };
            assert_eq!(back, want, "{arch:?}");
        }
    }

    /// transformers' own files: an older ModernBERT config (two rope thetas, no layer_types) and a
    /// BERT config without the keys maskrate adds read with transformers' defaults; what maskrate
    /// cannot run is refused naming the key.
    #[test]
    fn transformers_configs_read_with_defaults_and_refusals_name_the_key() {
        let old = serde_json::json!({
            "model_type": "modernbert", "vocab_size": 50368, "hidden_size": 768,
            "num_hidden_layers": 22, "num_attention_heads": 12, "intermediate_size": 1152,
            "max_position_embeddings": 8192, "global_rope_theta": 160000.0,
            "local_rope_theta": 10000.0, "local_attention": 128, "global_attn_every_n_layers": 3,
        });
        let c = config_from_hf(&old).unwrap();
        assert_eq!(
            (c.arch, c.num_hidden_layers, c.dropout),
            (Arch::ModernBert, 22, 0.0)
        );
        assert_eq!(
            (c.modern.global_rope_theta, c.modern.local_rope_theta),
            (160000.0, 10000.0)
        );
        let bert = serde_json::json!({
            "vocab_size": 30522, "hidden_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 512, "max_position_embeddings": 512,
        });
        let c = config_from_hf(&bert).unwrap();
        assert_eq!(
            (c.arch, c.type_vocab_size, c.dropout, c.layer_norm_eps),
            (Arch::Bert, 2, 0.1, 1e-12)
        );
        let refused = |edit: serde_json::Value, base: &serde_json::Value| {
            let mut hf = base.clone();
            hf.as_object_mut()
                .unwrap()
                .extend(edit.as_object().unwrap().clone());
            config_from_hf(&hf).unwrap_err()
        };
        assert!(refused(serde_json::json!({"norm_bias": true}), &old).contains("norm_bias"));
        let e = refused(
            serde_json::json!({"layer_types": ["sliding_attention"]}),
            &old,
        );
        assert!(e.contains("layer_types[0]"), "{e}");
        let mut no_vocab = bert.clone();
        no_vocab.as_object_mut().unwrap().remove("vocab_size");
        assert!(config_from_hf(&no_vocab)
            .unwrap_err()
            .contains("vocab_size"));
        let e = refused(serde_json::json!({"hidden_act": "gelu_new"}), &bert);
        assert!(e.contains("gelu_new"), "{e}");
        assert!(refused(serde_json::json!({"model_type": "gpt2"}), &bert).contains("gpt2"));
    }
}
