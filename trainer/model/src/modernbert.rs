//! ModernBERT for masked language modelling (transformers' `ModernBertForMaskedLM` architecture,
//! parameter names and initialisation), with the MLM head evaluated only at the masked positions.
//!
//! Token embeddings + norm (no positions, no token types); pre-norm blocks without biases
//! (layer 0 has no attention norm: the embedding norm serves), attention with rotary positions
//! (global layers every `global_every` layers, the others local: keys within `local_window / 2`
//! positions), a GeGLU feed-forward; a final norm; the head dense → GELU → norm → decoder tied to
//! the token embeddings, with a bias.

use crate::bert::MlmOutput;
use crate::bert_config::BertConfig;
use crate::layers::{Linear, Norm};
use crate::ops::{
    add_bias, attention, cross_entropy_and_correct, geglu, gelu, matmul_in, rotary, Dropout,
    RotaryTables, Visibility,
};
use crate::params::{Init, ParamStore};
use crate::MlmInputs;
use candle_core::{DType, Result, Tensor};

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

/// Where each token sits: its position (rotary angle) and, for packed rows, its document.
#[derive(Clone, Default)]
pub struct TokenLayout {
    /// Per-token positions `[B·L]`; `None`: 0..L in every row.
    pub positions: Option<Vec<u32>>,
    /// Per-token document ids `[B·L]`: attention stays inside a document; `None`: one per row.
    pub segments: Option<std::sync::Arc<Vec<u32>>>,
}

impl TokenLayout {
    /// The layout of `tokens` tokens whose segments start at the flat indices `starts`
    /// (ascending, the first 0): positions count from each start, and each segment is its own
    /// document. No starts: the default layout (0..L per row, one document per row).
    pub fn of_segments(starts: &[u32], tokens: usize) -> Self {
        if starts.is_empty() {
            return TokenLayout::default();
        }
        let positions = shared::sampler::segment_positions(starts, tokens);
        // Each segment's positions start at 0, and only there.
        let segments = positions
            .iter()
            .scan(u32::MAX, |segment, &p| {
                *segment = segment.wrapping_add((p == 0) as u32);
                Some(*segment)
            })
            .collect();
        TokenLayout {
            positions: Some(positions),
            segments: Some(std::sync::Arc::new(segments)),
        }
    }
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

    fn maybe_dropout(x: Tensor, dropout: &mut Option<Dropout>) -> Result<Tensor> {
        match dropout {
            Some(d) => d.apply(&x),
            None => Ok(x),
        }
    }

    /// Final hidden states `[B, L, H]`. `attention_mask` `[B, L]` f32 (1 token, 0 padding);
    /// `layout` the tokens' positions and documents; `dropout` = `None` for evaluation.
    /// Kept whole: the encoder's forward pass in layer order, like the reference implementation.
    pub fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        layout: &TokenLayout,
        dropout: &mut Option<Dropout>,
    ) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        let (h, heads, m) = (
            self.cfg.hidden_size,
            self.cfg.num_attention_heads,
            self.cfg.modern,
        );
        let positions = match &layout.positions {
            Some(p) if p.len() == b * l => p.clone(),
            Some(p) => candle_core::bail!("{} positions for {b}×{l} tokens", p.len()),
            None => (0..b * l).map(|t| (t % l) as u32).collect(),
        };
        let furthest = positions.iter().copied().max().unwrap_or(0) as usize;
        if furthest >= self.cfg.max_position_embeddings {
            candle_core::bail!(
                "position {furthest} exceeds the model's {} positions",
                self.cfg.max_position_embeddings
            );
        }
        let head_dim = h / heads;
        let global_tables = RotaryTables::new(&positions, head_dim, m.global_rope_theta)?;
        let local_tables = RotaryTables::new(&positions, head_dim, m.local_rope_theta)?;
        let visible = Visibility {
            radius: None,
            segments: layout.segments.clone(),
        };
        let local = visible.with_radius(Some(m.local_window / 2));
        let words = self
            .tok_embeddings
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, l, h))?;
        let mut x = Self::maybe_dropout(self.emb_norm.forward(&words)?, dropout)?;
        // Additive key bias: 0 for tokens, -10000 for padding.
        let key_bias = ((attention_mask - 1.0)? * 10000.0)?;
        for layer in &self.layers {
            let attn_in = match &layer.attn_norm {
                Some(n) => n.forward(&x)?,
                None => x.clone(),
            };
            let (tables, rule) = match layer.global {
                true => (&global_tables, &visible),
                false => (&local_tables, &local),
            };
            let qkv = rotary(&layer.qkv.forward(&attn_in)?, heads, tables)?;
            let factors = dropout.as_mut().and_then(|d| d.factors(b * heads * l * l));
            let ctx = attention(&qkv, heads, &key_bias, rule, factors, self.compute)?;
            let attn = Self::maybe_dropout(layer.attn_out.forward(&ctx)?, dropout)?;
            x = (x + attn)?;
            let gated = geglu(&layer.mlp_in.forward(&layer.mlp_norm.forward(&x)?)?)?;
            let mlp = layer
                .mlp_out
                .forward(&Self::maybe_dropout(gated, dropout)?)?;
            x = (x + mlp)?;
        }
        self.final_norm.forward(&x)
    }

    /// The prediction head `head.dense` → GELU → `head.norm` on `[N, H]`: the MLM head's
    /// transform, which transformers' `ModernBertForSequenceClassification` also applies to its
    /// pooled output (loading it from the pretrained model).
    pub fn prediction_head(&self, x: &Tensor) -> Result<Tensor> {
        self.head_norm.forward(&gelu(&self.head_dense.forward(x)?)?)
    }

    /// MLM logits `[M, V]` at flat positions `positions` of hidden states `[B, L, H]`.
    pub fn mlm_logits(&self, hidden: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let (b, l, h) = hidden.dims3()?;
        let picked = hidden.reshape((b * l, h))?.index_select(positions, 0)?;
        let t = self.prediction_head(&picked)?;
        let logits = matmul_in(&t, &self.tok_embeddings.t()?, self.compute)?;
        add_bias(&logits, &self.decoder_bias)
    }

    /// Forward pass and masked-LM loss on one micro-batch.
    pub fn mlm_loss(
        &self,
        inputs: &MlmInputs,
        layout: &TokenLayout,
        dropout: &mut Option<Dropout>,
    ) -> Result<MlmOutput> {
        let hidden = self.encode(&inputs.input_ids, &inputs.attention_mask, layout, dropout)?;
        let logits = self.mlm_logits(&hidden, &inputs.masked_positions)?;
        let (loss, correct) = cross_entropy_and_correct(&logits, &inputs.masked_labels)?;
        Ok(MlmOutput {
            loss,
            correct,
            predicted: inputs.masked_labels.dim(0)?,
        })
    }
}
