//! The masked-language-modelling task every architecture serves: a micro-batch's inputs (ids,
//! padding, predicted positions and labels, the tokens' layout), its output, and the one MLM loss.
//! The models own their encoders and heads ([`MaskedLm`]); what is learned from them is here.

use crate::ops::{add_bias, weighted_cross_entropy_and_correct, Dropout};
use crate::transfer::upload;
use candle_core::{Device, Result, Tensor};

/// Where each token sits: its position (rotary angle or learned position) and, for packed rows,
/// its document; uploaded once per batch.
#[derive(Clone, Default)]
pub struct TokenLayout {
    /// Per-token positions `[B, L]` u32 on the device; `None`: 0..L in every row.
    pub positions: Option<Tensor>,
    /// The largest of `positions` (known on the host, so models check it without a read).
    pub max_position: usize,
    /// Per-token document ids `[B, L]` u32 on the device: attention stays inside a document;
    /// `None`: one per row.
    pub segments: Option<Tensor>,
}

impl TokenLayout {
    /// The layout of `rows` rows of `len` tokens whose segments start at the flat indices
    /// `starts` (ascending, the first 0): positions count from each start, and each segment is
    /// its own document; two uploads. No starts: the default layout (0..L per row, one document
    /// per row), nothing uploaded.
    pub fn of_segments(starts: &[u32], rows: usize, len: usize, device: &Device) -> Result<Self> {
        if starts.is_empty() {
            return Ok(TokenLayout::default());
        }
        let positions = shared::sampler::segment_positions(starts, rows * len);
        let max_position = positions.iter().copied().max().unwrap_or(0) as usize;
        // Each segment's positions start at 0, and only there.
        let segments: Vec<u32> = positions
            .iter()
            .scan(u32::MAX, |segment, &p| {
                *segment = segment.wrapping_add((p == 0) as u32);
                Some(*segment)
            })
            .collect();
        Ok(TokenLayout {
            positions: Some(upload(positions, (rows, len), device)?),
            max_position,
            segments: Some(upload(segments, (rows, len), device)?),
        })
    }
}

impl TokenLayout {
    /// The furthest position among rows of `len` tokens.
    pub fn furthest(&self, len: usize) -> usize {
        match self.positions {
            Some(_) => self.max_position,
            None => len.saturating_sub(1),
        }
    }
}

/// A micro-batch as tensors.
pub struct MlmInputs {
    /// `[B, L]` u32 ids.
    pub input_ids: Tensor,
    /// `[B, L]` f32, 1 for tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// `[M]` u32 flat positions (`b·L + l`) of predicted tokens.
    pub masked_positions: Tensor,
    /// `[M]` u32 original ids there.
    pub masked_labels: Tensor,
    /// Tokens' positions and documents (packed rows); default: 0..L, one document per row.
    pub layout: TokenLayout,
    /// `[M]` f32 loss coefficient of each predicted token ([`shared::sampler::LossTerms`]);
    /// `None`: all 1.
    pub loss_coefficients: Option<Tensor>,
}

impl MlmInputs {
    /// Uploads a sampler batch: ids, padding, predicted positions and labels (and, for packed
    /// rows, positions and documents), one [`upload`] each.
    pub fn from_batch(b: &shared::sampler::Batch, device: &Device) -> Result<Self> {
        let (rows, len) = (b.rows(), b.seq_len);
        let mask: Vec<f32> = b.attention_mask.iter().map(|&m| m as f32).collect();
        Ok(MlmInputs {
            input_ids: upload(b.input_ids.clone(), (rows, len), device)?,
            attention_mask: upload(mask, (rows, len), device)?,
            masked_positions: upload(b.masked_positions.clone(), b.masked_positions.len(), device)?,
            masked_labels: upload(b.masked_labels.clone(), b.masked_labels.len(), device)?,
            layout: TokenLayout::of_segments(&b.segment_starts, rows, len, device)?,
            loss_coefficients: None,
        })
    }

    /// These inputs with each predicted token's loss coefficient (one [`upload`], none when the
    /// coefficients are all 1).
    pub fn with_coefficients(
        mut self,
        coefficients: Option<Vec<f32>>,
        device: &Device,
    ) -> Result<Self> {
        self.loss_coefficients = match coefficients {
            Some(c) => Some(upload(c.clone(), c.len(), device)?),
            None => None,
        };
        Ok(self)
    }
}

/// Loss and counts of one forward pass.
pub struct MlmOutput {
    /// `Σᵢ cᵢ·CEᵢ` over the predicted positions, with the inputs' loss coefficients (all 1: the
    /// plain sum); a differentiable scalar. The trainer divides the step's sum by its
    /// denominator ([`shared::sampler::loss`]).
    pub loss_sum: Tensor,
    /// Predicted positions whose arg-max equals the label (f32 scalar on the device: read it
    /// when the count is needed, not every step).
    pub correct: Tensor,
    /// Predicted positions.
    pub predicted: usize,
}

impl MlmOutput {
    /// The loss over the predicted positions: `loss_sum` / their count (with all coefficients
    /// 1, the mean cross-entropy).
    pub fn mean_loss(&self) -> Result<Tensor> {
        &self.loss_sum / self.predicted.max(1) as f64
    }
}

/// The rows of hidden states `[B, L, H]` at flat positions `positions` (`b·L + l`): `[M, H]`,
/// what the prediction head reads.
pub fn masked_rows(hidden: &Tensor, positions: &Tensor) -> Result<Tensor> {
    let (b, l, h) = hidden.dims3()?;
    hidden.reshape((b * l, h))?.index_select(positions, 0)
}

/// What an architecture supplies to the MLM task (its encoder and prediction head), and the one
/// MLM loss built on them.
pub trait MaskedLm {
    /// Final hidden states `[B, L, H]` of `inputs` (their layout included); `dropout` = `None`
    /// for evaluation.
    fn hidden_states(&self, inputs: &MlmInputs, dropout: Option<&Dropout>) -> Result<Tensor>;

    /// The MLM decoder's product `[M, V]` at flat positions `positions` of hidden states
    /// `[B, L, H]`, and its bias `[V]` (if any), which the loss adds inside its kernel.
    fn mlm_decoder(&self, hidden: &Tensor, positions: &Tensor) -> Result<(Tensor, Option<Tensor>)>;

    /// MLM logits `[M, V]` at flat positions `positions` of hidden states `[B, L, H]`: the
    /// decoder's product plus its bias.
    fn mlm_logits(&self, hidden: &Tensor, positions: &Tensor) -> Result<Tensor> {
        match self.mlm_decoder(hidden, positions)? {
            (product, Some(bias)) => add_bias(&product, &bias),
            (product, None) => Ok(product),
        }
    }

    /// Forward pass and MLM loss on one micro-batch, the same for every architecture: the
    /// cross-entropy of the predictions at the masked positions against their labels, weighted
    /// by the inputs' loss coefficients and summed, with the count of correct arg-maxes.
    fn mlm_loss(&self, inputs: &MlmInputs, dropout: Option<&Dropout>) -> Result<MlmOutput> {
        let hidden = self.hidden_states(inputs, dropout)?;
        let (product, bias) = self.mlm_decoder(&hidden, &inputs.masked_positions)?;
        let (loss_sum, correct) = weighted_cross_entropy_and_correct(
            &product,
            bias.as_ref(),
            &inputs.masked_labels,
            inputs.loss_coefficients.as_ref(),
        )?;
        Ok(MlmOutput {
            loss_sum,
            correct,
            predicted: inputs.masked_labels.dim(0)?,
        })
    }
}
