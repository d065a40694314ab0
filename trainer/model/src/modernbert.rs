//! ModernBERT for masked language modelling (transformers' `ModernBertForMaskedLM` architecture,
//! parameter names and initialisation), with the MLM head evaluated only at the masked positions.
//!
//! Token embeddings + norm (no positions, no token types); pre-norm blocks without biases
//! (layer 0 has no attention norm: the embedding norm serves), attention with rotary positions
//! (global layers every `global_every` layers, the others local: keys within `local_window / 2`
//! positions), a GeGLU feed-forward; a final norm; the head dense → GELU → norm → decoder tied to
//! the token embeddings, with a bias.

use crate::bert_config::{hf_defaults, Arch, BertConfig, HfCommon, ModernSettings};
use crate::layers::{Linear, Norm};
use crate::mlm::{masked_rows, MaskedLm, MlmInputs, TokenLayout};
use crate::ops::{
    attention, embedding, geglu, matmul_in, maybe_dropout, residual_dropout, rotary, Dropout,
    RotaryTables, Site, Visibility,
};
use crate::params::{Init, ParamStore};
use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

struct Layer {
    /// `None` in layer 0.
    attn_norm: Option<Norm>,
    qkv: Linear,
    attn_out: Linear,
    mlp_norm: Norm,
    mlp_in: Linear,
    mlp_out: Linear,
    global: bool,
}

/// The model.
pub struct ModernBert {
    cfg: BertConfig,
    tok_embeddings: Tensor,
    emb_norm: Norm,
    layers: Vec<Layer>,
    final_norm: Norm,
    head_dense: Linear,
    head_norm: Norm,
    decoder_bias: Tensor,
    compute: DType,
}

impl ModernBert {
    /// Builds (or binds to existing) parameters in `p`, initialised as transformers does
    /// (truncated normals: inputs σ = initializer_range, outputs σ / √(2·layers)).
    pub fn new(cfg: BertConfig, p: &ParamStore) -> Result<Self> {
        let (h, eps, m) = (cfg.hidden_size, cfg.layer_norm_eps, cfg.modern);
        if h % cfg.num_attention_heads != 0 || !(h / cfg.num_attention_heads).is_multiple_of(2) {
            candle_core::bail!(
                "hidden size {h} is not a multiple of {} heads of an even size (rotary positions)",
                cfg.num_attention_heads
            );
        }
        if m.local_window % 2 != 0 || m.global_every == 0 {
            candle_core::bail!(
                "local window {} must be even and global_every {} positive",
                m.local_window,
                m.global_every
            );
        }
        let trunc = |std: f64| Init::TruncatedNormal {
            std,
            cutoff: m.init_cutoff,
        };
        let std_in = cfg.initializer_range;
        let std_out = std_in / (2.0 * cfg.num_hidden_layers as f64).sqrt();
        let inter = cfg.intermediate_size;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = format!("model.layers.{i}");
            layers.push(Layer {
                attn_norm: match i {
                    0 => None,
                    _ => Some(Norm::without_bias(p, &format!("{l}.attn_norm"), h, eps)?),
                },
                qkv: Linear::without_bias(p, &format!("{l}.attn.Wqkv"), h, 3 * h, trunc(std_in))?,
                attn_out: Linear::without_bias(p, &format!("{l}.attn.Wo"), h, h, trunc(std_out))?,
                mlp_norm: Norm::without_bias(p, &format!("{l}.mlp_norm"), h, eps)?,
                mlp_in: Linear::without_bias(
                    p,
                    &format!("{l}.mlp.Wi"),
                    h,
                    2 * inter,
                    trunc(std_in),
                )?,
                mlp_out: Linear::without_bias(p, &format!("{l}.mlp.Wo"), inter, h, trunc(std_out))?,
                global: m.is_global(i),
            });
        }
        Ok(ModernBert {
            cfg,
            tok_embeddings: p.get(
                "model.embeddings.tok_embeddings.weight",
                &[cfg.vocab_size, h],
                trunc(std_in),
            )?,
            emb_norm: Norm::without_bias(p, "model.embeddings.norm", h, eps)?,
            layers,
            final_norm: Norm::without_bias(p, "model.final_norm", h, eps)?,
            head_dense: Linear::without_bias(p, "head.dense", h, h, trunc(std_out))?,
            head_norm: Norm::without_bias(p, "head.norm", h, eps)?,
            decoder_bias: p.get("decoder.bias", &[cfg.vocab_size], Init::Zeros)?,
            compute: p.compute_dtype(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// Final hidden states `[B, L, H]`. `attention_mask` `[B, L]` f32 (1 token, 0 padding);
    /// `layout` the tokens' positions and documents; `dropout` = `None` for evaluation.
    /// Kept whole: the encoder's forward pass in layer order, like the reference implementation.
    pub fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        layout: &TokenLayout,
        dropout: Option<&Dropout>,
    ) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        let (h, heads, m) = (
            self.cfg.hidden_size,
            self.cfg.num_attention_heads,
            self.cfg.modern,
        );
        if layout.furthest(l) >= self.cfg.max_position_embeddings {
            candle_core::bail!(
                "position {} exceeds the model's {} positions",
                layout.furthest(l),
                self.cfg.max_position_embeddings
            );
        }
        let head_dim = h / heads;
        let positions = layout.positions.as_ref();
        let device = input_ids.device();
        let global_tables =
            RotaryTables::at(positions, b, l, head_dim, m.global_rope_theta, device)?;
        let local_tables = RotaryTables::at(positions, b, l, head_dim, m.local_rope_theta, device)?;
        let visible = Visibility::new(None, layout.segments.clone());
        let local = visible.with_radius(Some(m.local_window / 2));
        let words = embedding(&self.tok_embeddings, input_ids)?.reshape((b, l, h))?;
        // In the table's dtype, the compute dtype (bf16 end to end under `--precision bf16`).
        let mut x = maybe_dropout(self.emb_norm.forward(&words)?, dropout, 0, Site::Embeddings)?;
        // Additive key bias: 0 for tokens, -10000 for padding.
        let key_bias = ((attention_mask - 1.0)? * 10000.0)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let attn_in = match &layer.attn_norm {
                Some(n) => n.forward(&x)?,
                None => x.clone(),
            };
            let (tables, rule) = match layer.global {
                true => (&global_tables, &visible),
                false => (&local_tables, &local),
            };
            let qkv = rotary(&layer.qkv.forward(&attn_in)?, heads, tables)?;
            let probs_mask = dropout.map(|d| d.mask(i, Site::AttentionProbs));
            let ctx = attention(&qkv, heads, &key_bias, rule, probs_mask, self.compute)?;
            let attn = layer.attn_out.forward(&ctx)?;
            x = residual_dropout(&x, attn, dropout, i, Site::AttentionOutput)?;
            let gated = geglu(&layer.mlp_in.forward(&layer.mlp_norm.forward(&x)?)?)?;
            let gated = maybe_dropout(gated, dropout, i, Site::FeedForward)?;
            let mlp = layer.mlp_out.forward(&gated)?;
            x = (x + mlp)?;
        }
        self.final_norm.forward(&x)
    }

    /// The prediction head `head.dense` → GELU → `head.norm` on `[N, H]`: the MLM head's
    /// transform, which transformers' `ModernBertForSequenceClassification` also applies to its
    /// pooled output (loading it from the pretrained model).
    pub fn prediction_head(&self, x: &Tensor) -> Result<Tensor> {
        self.head_norm.forward(&self.head_dense.forward_gelu(x)?)
    }
}

impl MaskedLm for ModernBert {
    fn hidden_states(&self, inputs: &MlmInputs, dropout: Option<&Dropout>) -> Result<Tensor> {
        self.encode(
            &inputs.input_ids,
            &inputs.attention_mask,
            &inputs.layout,
            dropout,
        )
    }

    fn mlm_decoder(&self, hidden: &Tensor, positions: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let t = self.prediction_head(&masked_rows(hidden, positions)?)?;
        let product = matmul_in(&t, &self.tok_embeddings.t()?, self.compute)?;
        Ok((product, Some(self.decoder_bias.clone())))
    }
}

/// transformers' `ModernBertConfig` as `config.json` holds it: the keys a `ModernBertFor*` class
/// reads, written by `export` and fine-tuning and read back when a HuggingFace directory is loaded
/// (absent keys take transformers' defaults; keys this model does not use are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfModernBertConfig {
    /// Class, model type and shape.
    #[serde(flatten)]
    pub common: HfCommon,
    #[serde(default = "hf_defaults::gelu")]
    pub hidden_activation: String,
    #[serde(default = "hf_defaults::init_std")]
    pub initializer_range: f64,
    #[serde(default = "cutoff")]
    pub initializer_cutoff_factor: f64,
    #[serde(default = "modern_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub norm_bias: bool,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default)]
    pub bos_token_id: u32,
    #[serde(default)]
    pub eos_token_id: u32,
    #[serde(default)]
    pub cls_token_id: u32,
    #[serde(default)]
    pub sep_token_id: u32,
    #[serde(default = "global_every")]
    pub global_attn_every_n_layers: usize,
    /// `full_attention` / `sliding_attention` per layer (transformers 5; absent before).
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default = "local_window")]
    pub local_attention: usize,
    /// Rotary bases per layer type (transformers 5).
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// Earlier transformers' rotary bases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rope_theta: Option<f64>,
    #[serde(default)]
    pub embedding_dropout: f64,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub mlp_dropout: f64,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "hf_defaults::yes")]
    pub decoder_bias: bool,
    #[serde(default)]
    pub classifier_bias: bool,
    #[serde(default = "hf_defaults::gelu")]
    pub classifier_activation: String,
    #[serde(default = "hf_defaults::yes")]
    pub tie_word_embeddings: bool,
}

/// transformers 5's `rope_parameters`: one rotary setting per layer type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    pub full_attention: Rope,
    pub sliding_attention: Rope,
}

/// One layer type's rotary setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rope {
    #[serde(default = "default_rope")]
    pub rope_type: String,
    pub rope_theta: f64,
}

fn default_rope() -> String {
    "default".into()
}
fn cutoff() -> f64 {
    ModernSettings::default().init_cutoff
}
fn modern_eps() -> f64 {
    1e-5
}
fn global_every() -> usize {
    ModernSettings::default().global_every
}
fn local_window() -> usize {
    ModernSettings::default().local_window
}

fn layer_type(global: bool) -> &'static str {
    match global {
        true => "full_attention",
        false => "sliding_attention",
    }
}

impl HfModernBertConfig {
    /// The `config.json` of `cfg` as transformers class `architecture`; `specials` are the
    /// tokenizer's (pad, cls, sep, mask) ids.
    pub fn new(cfg: &BertConfig, architecture: &str, specials: [u32; 4]) -> Self {
        let m = &cfg.modern;
        let [pad, cls, sep, _mask] = specials;
        let rope = |theta| Rope {
            rope_type: default_rope(),
            rope_theta: theta,
        };
        HfModernBertConfig {
            common: HfCommon::new(cfg, architecture, "modernbert"),
            hidden_activation: hf_defaults::gelu(),
            initializer_range: cfg.initializer_range,
            initializer_cutoff_factor: m.init_cutoff,
            norm_eps: cfg.layer_norm_eps,
            norm_bias: false,
            pad_token_id: pad,
            bos_token_id: cls,
            eos_token_id: sep,
            cls_token_id: cls,
            sep_token_id: sep,
            global_attn_every_n_layers: m.global_every,
            layer_types: Some(
                (0..cfg.num_hidden_layers)
                    .map(|i| layer_type(m.is_global(i)).to_string())
                    .collect(),
            ),
            local_attention: m.local_window,
            rope_parameters: Some(RopeParameters {
                full_attention: rope(m.global_rope_theta),
                sliding_attention: rope(m.local_rope_theta),
            }),
            global_rope_theta: None,
            local_rope_theta: None,
            embedding_dropout: cfg.dropout,
            attention_dropout: cfg.dropout,
            mlp_dropout: cfg.dropout,
            attention_bias: false,
            mlp_bias: false,
            decoder_bias: true,
            classifier_bias: false,
            classifier_activation: hf_defaults::gelu(),
            tie_word_embeddings: true,
        }
    }

    /// The model configuration this file describes, or what maskrate's ModernBERT cannot run.
    pub fn to_config(&self) -> std::result::Result<BertConfig, String> {
        let defaults = ModernSettings::default();
        let theta =
            |new: Option<f64>, old: Option<f64>, default: f64| new.or(old).unwrap_or(default);
        let modern = ModernSettings {
            global_every: self.global_attn_every_n_layers,
            local_window: self.local_attention,
            global_rope_theta: theta(
                self.rope_parameters
                    .as_ref()
                    .map(|r| r.full_attention.rope_theta),
                self.global_rope_theta,
                defaults.global_rope_theta,
            ),
            local_rope_theta: theta(
                self.rope_parameters
                    .as_ref()
                    .map(|r| r.sliding_attention.rope_theta),
                self.local_rope_theta,
                defaults.local_rope_theta,
            ),
            init_cutoff: self.initializer_cutoff_factor,
        };
        for (i, t) in self.layer_types.iter().flatten().enumerate() {
            if t != layer_type(modern.is_global(i)) {
                return Err(format!(
                    "layer_types[{i}] = {t:?} does not follow global_attn_every_n_layers = {} \
                     (every {}th layer global, the others sliding), the only pattern maskrate runs",
                    modern.global_every, modern.global_every
                ));
            }
        }
        for (key, value) in [
            ("attention_bias", self.attention_bias),
            ("mlp_bias", self.mlp_bias),
            ("norm_bias", self.norm_bias),
        ] {
            if value {
                return Err(format!(
                    "{key} = true is not supported (maskrate's ModernBERT has none)"
                ));
            }
        }
        Ok(BertConfig {
            modern,
            type_vocab_size: 0,
            layer_norm_eps: self.norm_eps,
            dropout: self.embedding_dropout,
            pre_ln: false,
            initializer_range: self.initializer_range,
            ..self.common.shape.config(Arch::ModernBert)
        })
    }
}
