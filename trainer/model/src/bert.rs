//! BERT for masked language modelling (HuggingFace `BertForMaskedLM` architecture and names),
//! with the MLM head evaluated only at the masked positions.

use crate::bert_config::{hf_defaults, Arch, BertConfig, HfCommon};
use crate::layers::{Linear, Norm};
use crate::mlm::{masked_rows, MaskedLm, MlmInputs, TokenLayout};
use crate::ops::{
    attention, embedding, matmul_in, maybe_dropout, residual_dropout, Dropout, Site, Visibility,
};
use crate::params::{Init, ParamStore};
use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

/// Query, key and value projections applied as one `[3H, H]` product (HF keeps three layers).
struct QkvProjection {
    query: Linear,
    key: Linear,
    value: Linear,
}

impl QkvProjection {
    /// `[B, L, H]` → `[B, L, 3H]` (query, key, value blocks).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Linear::stacked(&[&self.query, &self.key, &self.value])?.forward(x)
    }
}

struct Layer {
    qkv: QkvProjection,
    attn_out: Linear,
    attn_norm: Norm,
    intermediate: Linear,
    output: Linear,
    out_norm: Norm,
}

/// The model.
pub struct Bert {
    cfg: BertConfig,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    emb_norm: Norm,
    layers: Vec<Layer>,
    head_dense: Linear,
    head_norm: Norm,
    head_bias: Tensor,
    compute: DType,
}

impl Bert {
    /// Builds (or binds to existing) parameters in `p`.
    /// Kept whole: the parameters in HuggingFace's order, one per line.
    pub fn new(cfg: BertConfig, p: &ParamStore) -> Result<Self> {
        let (h, std, eps) = (cfg.hidden_size, cfg.initializer_range, cfg.layer_norm_eps);
        if h % cfg.num_attention_heads != 0 {
            candle_core::bail!(
                "hidden size {h} is not a multiple of {} heads",
                cfg.num_attention_heads
            );
        }
        let e = "bert.embeddings";
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = format!("bert.encoder.layer.{i}");
            layers.push(Layer {
                qkv: QkvProjection {
                    query: Linear::new(p, &format!("{l}.attention.self.query"), h, h, std)?,
                    key: Linear::new(p, &format!("{l}.attention.self.key"), h, h, std)?,
                    value: Linear::new(p, &format!("{l}.attention.self.value"), h, h, std)?,
                },
                attn_out: Linear::new(p, &format!("{l}.attention.output.dense"), h, h, std)?,
                attn_norm: Norm::new(p, &format!("{l}.attention.output.LayerNorm"), h, eps)?,
                intermediate: Linear::new(
                    p,
                    &format!("{l}.intermediate.dense"),
                    h,
                    cfg.intermediate_size,
                    std,
                )?,
                output: Linear::new(
                    p,
                    &format!("{l}.output.dense"),
                    cfg.intermediate_size,
                    h,
                    std,
                )?,
                out_norm: Norm::new(p, &format!("{l}.output.LayerNorm"), h, eps)?,
            });
        }
        Ok(Bert {
            cfg,
            word_embeddings: p.get(
                &format!("{e}.word_embeddings.weight"),
                &[cfg.vocab_size, h],
                Init::Normal(std),
            )?,
            position_embeddings: p.get(
                &format!("{e}.position_embeddings.weight"),
                &[cfg.max_position_embeddings, h],
                Init::Normal(std),
            )?,
            token_type_embeddings: p.get(
                &format!("{e}.token_type_embeddings.weight"),
                &[cfg.type_vocab_size, h],
                Init::Normal(std),
            )?,
            emb_norm: Norm::new(p, &format!("{e}.LayerNorm"), h, eps)?,
            layers,
            head_dense: Linear::new(p, "cls.predictions.transform.dense", h, h, std)?,
            head_norm: Norm::new(p, "cls.predictions.transform.LayerNorm", h, eps)?,
            head_bias: p.get("cls.predictions.bias", &[cfg.vocab_size], Init::Zeros)?,
            compute: p.compute_dtype(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// Final hidden states `[B, L, H]`; `token_type_ids` `[B, L]` u32 marks sentence pairs'
    /// second segments (`None` = all type 0).
    pub fn encode_with_types(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: &Tensor,
        dropout: Option<&Dropout>,
    ) -> Result<Tensor> {
        let layout = TokenLayout::default();
        self.encode_laid_out(input_ids, token_type_ids, attention_mask, &layout, dropout)
    }

    /// [`Bert::encode_with_types`] with the tokens' positions and documents given by `layout`
    /// (packed rows: positions restart and attention stays inside each document).
    /// Kept whole: the encoder's forward pass in layer order, like the reference implementation.
    pub fn encode_laid_out(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: &Tensor,
        layout: &TokenLayout,
        dropout: Option<&Dropout>,
    ) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        let h = self.cfg.hidden_size;
        if l > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "sequence length {l} exceeds {} positions",
                self.cfg.max_position_embeddings
            );
        }
        let words = embedding(&self.word_embeddings, input_ids)?.reshape((b, l, h))?;
        let x = match &layout.positions {
            None => words.broadcast_add(&self.position_embeddings.narrow(0, 0, l)?)?,
            Some(p) => {
                if p.dims() != [b, l] || layout.furthest(l) >= self.cfg.max_position_embeddings {
                    candle_core::bail!(
                        "positions {:?} up to {} for {b}×{l} tokens and {} learned positions",
                        p.dims(),
                        layout.furthest(l),
                        self.cfg.max_position_embeddings
                    );
                }
                (words + embedding(&self.position_embeddings, p)?.reshape((b, l, h))?)?
            }
        };
        let x = match token_type_ids {
            Some(types) => {
                (x + embedding(&self.token_type_embeddings, types)?.reshape((b, l, h))?)?
            }
            None => x.broadcast_add(&self.token_type_embeddings.narrow(0, 0, 1)?)?,
        };
        // In the tables' dtype, the compute dtype (bf16 end to end under `--precision bf16`).
        let mut x = maybe_dropout(self.emb_norm.forward(&x)?, dropout, 0, Site::Embeddings)?;
        // Additive key bias: 0 for tokens, -10000 for padding.
        let key_bias = ((attention_mask - 1.0)? * 10000.0)?;
        let visible = Visibility::new(None, layout.segments.clone());
        let heads = self.cfg.num_attention_heads;
        for (i, layer) in self.layers.iter().enumerate() {
            let attn_in = if self.cfg.pre_ln {
                layer.attn_norm.forward(&x)?
            } else {
                x.clone()
            };
            let probs_mask = dropout.map(|d| d.mask(i, Site::AttentionProbs));
            let qkv = layer.qkv.forward(&attn_in)?;
            let ctx = attention(&qkv, heads, &key_bias, &visible, probs_mask, self.compute)?;
            let attn = layer.attn_out.forward(&ctx)?;
            let sum = residual_dropout(&x, attn, dropout, i, Site::AttentionOutput)?;
            x = if self.cfg.pre_ln {
                sum
            } else {
                layer.attn_norm.forward(&sum)?
            };
            let ffn_in = if self.cfg.pre_ln {
                layer.out_norm.forward(&x)?
            } else {
                x.clone()
            };
            let ffn = layer
                .output
                .forward(&layer.intermediate.forward_gelu(&ffn_in)?)?;
            let sum = residual_dropout(&x, ffn, dropout, i, Site::FeedForward)?;
            x = if self.cfg.pre_ln {
                sum
            } else {
                layer.out_norm.forward(&sum)?
            };
        }
        Ok(x)
    }
}

impl MaskedLm for Bert {
    fn hidden_states(&self, inputs: &MlmInputs, dropout: Option<&Dropout>) -> Result<Tensor> {
        self.encode_laid_out(
            &inputs.input_ids,
            None,
            &inputs.attention_mask,
            &inputs.layout,
            dropout,
        )
    }

    fn mlm_decoder(&self, hidden: &Tensor, positions: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let picked = masked_rows(hidden, positions)?;
        let t = self
            .head_norm
            .forward(&self.head_dense.forward_gelu(&picked)?)?;
        let product = matmul_in(&t, &self.word_embeddings.t()?, self.compute)?;
        Ok((product, Some(self.head_bias.clone())))
    }
}

/// transformers' `BertConfig` as `config.json` holds it: the keys a `BertFor*` class reads, written
/// by `export` and fine-tuning and read back when a HuggingFace directory is loaded (keys absent
/// from older files take transformers' defaults; keys this model does not use are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfBertConfig {
    /// Class, model type and shape.
    #[serde(flatten)]
    pub common: HfCommon,
    #[serde(default = "hf_defaults::gelu")]
    pub hidden_act: String,
    #[serde(default = "bert_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "bert_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "hf_defaults::init_std")]
    pub initializer_range: f64,
    #[serde(default = "bert_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
    #[serde(default = "hf_defaults::yes")]
    pub tie_word_embeddings: bool,
}

fn bert_dropout() -> f64 {
    Arch::Bert.default_dropout()
}
fn two() -> usize {
    2
}
fn bert_eps() -> f64 {
    1e-12
}
fn absolute() -> String {
    "absolute".into()
}

impl HfBertConfig {
    /// The `config.json` of `cfg` as transformers class `architecture`; `pad_token_id` from the
    /// tokenizer.
    pub fn new(cfg: &BertConfig, architecture: &str, pad_token_id: u32) -> Self {
        HfBertConfig {
            common: HfCommon::new(cfg, architecture, "bert"),
            hidden_act: hf_defaults::gelu(),
            hidden_dropout_prob: cfg.dropout,
            attention_probs_dropout_prob: cfg.dropout,
            type_vocab_size: cfg.type_vocab_size,
            initializer_range: cfg.initializer_range,
            layer_norm_eps: cfg.layer_norm_eps,
            pad_token_id,
            position_embedding_type: absolute(),
            tie_word_embeddings: true,
        }
    }

    /// The model configuration this file describes, or what maskrate's BERT cannot run.
    pub fn to_config(&self) -> std::result::Result<BertConfig, String> {
        if self.hidden_act != "gelu" || self.position_embedding_type != "absolute" {
            return Err(format!(
                "hidden_act {:?} with position_embedding_type {:?}: maskrate's BERT runs gelu \
                 with absolute positions",
                self.hidden_act, self.position_embedding_type
            ));
        }
        Ok(BertConfig {
            type_vocab_size: self.type_vocab_size,
            layer_norm_eps: self.layer_norm_eps,
            dropout: self.hidden_dropout_prob,
            pre_ln: false,
            initializer_range: self.initializer_range,
            ..self.common.shape.config(Arch::Bert)
        })
    }
}
