//! Sequence classification / regression as transformers does it: on BERT
//! (`BertForSequenceClassification`: pooler = dense + tanh on [CLS], dropout, linear head) and on
//! ModernBERT (`ModernBertForSequenceClassification` with its default "cls" pooling: the
//! pretrained prediction head dense → GELU → norm on [CLS], then a linear head; no token types).
//! Inputs are encoded once by the tokenizer, with sentence pairs as `[CLS] a [SEP] b [SEP]`,
//! token types (BERT), and longest-first truncation.

use anyhow::Result;
use candle_core::{Device, Tensor};
use model::ops::{maybe_dropout, Dropout, Site};
use model::params::Init;
use model::params::Unmatched;
use model::{Bert, BertConfig, Linear, ModernBert, ParamStore, TokenLayout};
use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};
use training::saved_model::Pretrained;

/// One tokenized input.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Token ids with `[CLS]`/`[SEP]`.
    pub ids: Vec<u32>,
    /// Segment of each token (0, or 1 for the second sentence of a pair).
    pub types: Vec<u32>,
}

/// Tokenizes single sentences or pairs with the tokenizer's own template and longest-first
/// truncation to `max_len` tokens.
pub fn encode_all(
    tok: &tokenizers::Tokenizer,
    inputs: &[(&str, Option<&str>)],
    max_len: usize,
) -> Result<Vec<Encoded>> {
    let mut tok = tok.clone();
    tok.with_truncation(Some(TruncationParams {
        direction: TruncationDirection::Right,
        max_length: max_len,
        strategy: TruncationStrategy::LongestFirst,
        stride: 0,
    }))
    .map_err(|e| anyhow::anyhow!("truncation: {e}"))?;
    tok.with_padding(None);
    let batch: Vec<tokenizers::EncodeInput> = inputs
        .iter()
        .map(|&(a, b)| match b {
            Some(b) => (a, b).into(),
            None => a.into(),
        })
        .collect();
    let encs = tok
        .encode_batch(batch, true)
        .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
    Ok(encs
        .into_iter()
        .map(|e| Encoded {
            ids: e.get_ids().to_vec(),
            types: e.get_type_ids().to_vec(),
        })
        .collect())
}

/// A padded batch as tensors.
pub struct PairBatch {
    /// `[B, L]` ids.
    pub input_ids: Tensor,
    /// `[B, L]` token types.
    pub token_type_ids: Tensor,
    /// `[B, L]` 1 for tokens, 0 for padding.
    pub attention_mask: Tensor,
}

impl PairBatch {
    /// Pads `items` to the longest with `pad_id`.
    pub fn new(items: &[&Encoded], pad_id: u32, device: &Device) -> Result<Self> {
        let len = items.iter().map(|e| e.ids.len()).max().unwrap_or(1).max(1);
        let n = items.len();
        let (mut ids, mut types, mut mask) = (
            vec![pad_id; n * len],
            vec![0u32; n * len],
            vec![0f32; n * len],
        );
        for (r, e) in items.iter().enumerate() {
            let row = r * len;
            ids[row..row + e.ids.len()].copy_from_slice(&e.ids);
            types[row..row + e.types.len()].copy_from_slice(&e.types);
            mask[row..row + e.ids.len()].fill(1.0);
        }
        Ok(PairBatch {
            input_ids: Tensor::from_vec(ids, (n, len), device)?,
            token_type_ids: Tensor::from_vec(types, (n, len), device)?,
            attention_mask: Tensor::from_vec(mask, (n, len), device)?,
        })
    }
}

/// The encoder and what turns its [CLS] state into the head's input.
enum Backbone {
    /// BERT and its pooler (dense + tanh).
    Bert { bert: Bert, pooler: Linear },
    /// ModernBERT; its prediction head (`head.*`, pretrained) transforms [CLS].
    ModernBert(ModernBert),
}

/// An encoder + pooling + linear head with `outputs` classes (1 = regression).
pub struct Classifier {
    backbone: Backbone,
    head: Linear,
}

impl Classifier {
    /// Builds the model's parameters in `p` (freshly initialised; see [`bind`]), with
    /// transformers' names and initialisation for the configuration's architecture.
    pub fn new(cfg: BertConfig, outputs: usize, p: &ParamStore) -> Result<Self> {
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        Ok(match cfg.arch {
            model::Arch::Bert => Classifier {
                backbone: Backbone::Bert {
                    bert: Bert::new(cfg, p)?,
                    pooler: Linear::new(p, "bert.pooler.dense", h, h, std)?,
                },
                head: Linear::new(p, "classifier", h, outputs, std)?,
            },
            model::Arch::ModernBert => {
                // transformers: truncated normal, σ = hidden^-1/2, cut at ±cutoff·σ.
                let std = (h as f64).powf(-0.5);
                let init = Init::TruncatedNormal {
                    std,
                    cutoff: cfg.modern.init_cutoff,
                };
                Classifier {
                    backbone: Backbone::ModernBert(ModernBert::new(cfg, p)?),
                    head: Linear::without_bias(p, "classifier", h, outputs, init)?
                        .with_bias(p, "classifier")?,
                }
            }
        })
    }

    /// Logits (or the regression value) `[B, outputs]`.
    pub fn forward(&self, batch: &PairBatch, dropout: Option<&Dropout>) -> Result<Tensor> {
        let pooled = match &self.backbone {
            Backbone::Bert { bert, pooler } => {
                let hidden = bert.encode_with_types(
                    &batch.input_ids,
                    Some(&batch.token_type_ids),
                    &batch.attention_mask,
                    dropout,
                )?;
                let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
                let pooled = pooler.forward(&cls)?.tanh()?;
                maybe_dropout(pooled, dropout, 0, Site::Classifier)?
            }
            Backbone::ModernBert(m) => {
                let hidden = m.encode(
                    &batch.input_ids,
                    &batch.attention_mask,
                    &TokenLayout::default(),
                    dropout,
                )?;
                let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
                // transformers' classifier_dropout defaults to 0: no dropout here.
                m.prediction_head(&cls)?
            }
        };
        Ok(self.head.forward(&pooled)?)
    }
}

/// Whether parameter `name` belongs to the pretraining MLM head alone (BERT's `cls.*`,
/// ModernBERT's `decoder.*`), which a classifier neither uses nor trains nor saves.
pub fn mlm_head_only(name: &str) -> bool {
    name.starts_with("cls.") || name.starts_with("decoder.")
}

/// Copies `source`'s tensors into the parameters of `p` with the same name. The MLM head of a
/// pretraining checkpoint is ignored; a pretraining checkpoint has no pooler (it stays freshly
/// initialised, as in `transformers`); a `classifier.*` of another shape (MNLI's 3 classes into a
/// 2-class task) is left initialised. Returns the names left initialised. Any other missing or
/// mis-shaped encoder tensor is an error. (ModernBERT's MLM decoder bias, a parameter of the
/// encoder type the classifier does not use, may be absent: a fine-tuned model has none.)
pub fn bind(p: &ParamStore, source: &Pretrained) -> Result<Vec<String>> {
    let mut fresh = p.load_by_name(
        &source.tensors,
        &source.source.display().to_string(),
        |name, why| match why {
            Unmatched::Shape => name.starts_with("classifier."),
            Unmatched::Missing => {
                name.starts_with("classifier.")
                    || name.starts_with("bert.pooler.")
                    || mlm_head_only(name)
            }
        },
    )?;
    fresh.retain(|name| !name.starts_with("decoder."));
    Ok(fresh)
}

/// A classifier and its parameter store, fresh parameters drawn from `seed` (bind weights after).
pub fn build(
    cfg: BertConfig,
    outputs: usize,
    device: &Device,
    seed: u64,
) -> Result<(ParamStore, Classifier)> {
    let p = ParamStore::new(device, seed);
    let model = Classifier::new(cfg, outputs, &p)?;
    Ok((p, model))
}
