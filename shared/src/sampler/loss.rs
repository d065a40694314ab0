//! The MLM loss's weights and normalisation, as data: each predicted token's coefficient and each
//! micro-batch's share of the step's denominator, so the trainer and the Python package compute
//! one loss.
//!
//! The step's loss is `Σ cᵢ·CEᵢ / Z` over every predicted token i of the step (all micro-batches
//! and ranks), with `cᵢ = w(rateᵢ)` (divided by its row's maskable tokens under `sequence`) and
//! `Z` the sum of the micro-batches' denominators:
//!
//! | `--loss-norm` | Z | with `--loss-weight inverse-rate` |
//! |---|---|---|
//! | `masked` (default) | predicted tokens | |
//! | `token` | maskable tokens | LLaDA's `Σ CE/p / (b·l)`: the ELBO per token |
//! | `sequence` | rows (each row's sum over its maskable tokens) | the ELBO per token, rows weighed equally |
//! | `batch` | rows | the ELBO per sequence |
//!
//! "Maskable" tokens are the real, non-special ones ([`super::Batch::row_maskable`]).

use super::Batch;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Each predicted token's weight, a function of the rate it was masked at.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LossWeight {
    /// 1 for every token.
    #[default]
    None,
    /// `1 / max(rate, eps)`: the masked-diffusion ELBO's weight.
    InverseRate {
        /// The smallest rate divided by.
        eps: f64,
    },
}

/// `inverse-rate`'s default clip: MDLM's and LLaDA's ε.
pub const DEFAULT_EPS: f64 = 1e-3;

impl LossWeight {
    /// The weight of a token masked at `rate`.
    pub fn of(&self, rate: f64) -> f64 {
        match *self {
            LossWeight::None => 1.0,
            LossWeight::InverseRate { eps } => 1.0 / rate.max(eps),
        }
    }

    /// Whether every weight is 1.
    pub fn is_none(&self) -> bool {
        matches!(self, LossWeight::None)
    }
}

impl FromStr for LossWeight {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |msg: String| {
            Error::Config(format!(
                "--loss-weight {s:?}: {msg} (none | inverse-rate[:EPS], e.g. inverse-rate:0.001)"
            ))
        };
        match s.trim().split_once(':') {
            None if s.trim() == "none" => Ok(LossWeight::None),
            None if s.trim() == "inverse-rate" => Ok(LossWeight::InverseRate { eps: DEFAULT_EPS }),
            Some(("inverse-rate", eps)) => {
                let eps: f64 = eps
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("EPS {eps:?} is not a number")))?;
                if !(eps > 0.0 && eps <= 1.0) {
                    return Err(bad(format!("EPS {eps} is outside (0, 1]")));
                }
                Ok(LossWeight::InverseRate { eps })
            }
            _ => Err(bad("unknown weight".into())),
        }
    }
}

impl fmt::Display for LossWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossWeight::None => write!(f, "none"),
            LossWeight::InverseRate { eps } => write!(f, "inverse-rate:{eps}"),
        }
    }
}

impl Serialize for LossWeight {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LossWeight {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What the step's weighted sum is divided by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LossNorm {
    /// The step's predicted tokens: the MLM mean (BERT's, transformers').
    #[default]
    Masked,
    /// The step's maskable tokens (LLaDA's b·l).
    Token,
    /// The step's rows, each row's sum divided by its maskable tokens.
    Sequence,
    /// The step's rows.
    Batch,
}

impl LossNorm {
    /// The name as the flag spells it.
    pub fn name(self) -> &'static str {
        match self {
            LossNorm::Masked => "masked",
            LossNorm::Token => "token",
            LossNorm::Sequence => "sequence",
            LossNorm::Batch => "batch",
        }
    }
}

impl FromStr for LossNorm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        [
            LossNorm::Masked,
            LossNorm::Token,
            LossNorm::Sequence,
            LossNorm::Batch,
        ]
        .into_iter()
        .find(|n| n.name() == s.trim())
        .ok_or_else(|| {
            Error::Config(format!(
                "--loss-norm {s:?}: one of masked, token, sequence, batch"
            ))
        })
    }
}

/// One micro-batch's part of the step's loss: each predicted token's coefficient (aligned with
/// [`Batch::masked_positions`]; `None` when every one is 1) and its share of the denominator.
#[derive(Debug, Clone, PartialEq)]
pub struct LossTerms {
    /// `cᵢ` per predicted token, `None` for all ones.
    pub coefficients: Option<Vec<f32>>,
    /// This micro-batch's share of Z.
    pub denominator: f64,
}

impl LossTerms {
    /// The terms of `b` under `weight` and `norm`.
    pub fn of(b: &Batch, weight: LossWeight, norm: LossNorm) -> LossTerms {
        let rows = b.rows() as f64;
        let denominator = match norm {
            LossNorm::Masked => b.masked_positions.len() as f64,
            LossNorm::Token => b.row_maskable.iter().map(|&m| m as f64).sum(),
            LossNorm::Sequence | LossNorm::Batch => rows,
        };
        if weight.is_none() && norm != LossNorm::Sequence {
            return LossTerms {
                coefficients: None,
                denominator,
            };
        }
        // Each token's coefficient is its row's (or document's) weight over its row's share (the
        // positions ascend: rows, then tokens within a row):
        // computed once per row and per document, then spread over the masked positions (in
        // ascending order) by cursors, not per token.
        let per_row = |row: usize| match norm {
            LossNorm::Sequence => b.row_maskable[row].max(1) as f64,
            _ => 1.0,
        };
        let row_weight: Vec<f64> = b.row_rates.iter().map(|&r| weight.of(r)).collect();
        let segment_weight: Vec<f64> = b.segment_rates.iter().map(|&r| weight.of(r)).collect();
        let mut coefficients = Vec::with_capacity(b.masked_positions.len());
        let (mut row, mut row_end) = (0usize, b.seq_len);
        let mut segment = 0usize;
        let weight_at = |row: usize, segment: usize| match segment_weight.is_empty() {
            true => row_weight[row],
            false => segment_weight[segment],
        };
        // The coefficient of the current (row, document), recomputed when either changes.
        let mut current = (weight_at(0, 0) / per_row(0)) as f32;
        for &p in &b.masked_positions {
            let mut moved = false;
            while p as usize >= row_end {
                row += 1;
                row_end += b.seq_len;
                moved = true;
            }
            while !segment_weight.is_empty()
                && b.segment_starts.get(segment + 1).is_some_and(|&s| s <= p)
            {
                segment += 1;
                moved = true;
            }
            if moved {
                current = (weight_at(row, segment) / per_row(row)) as f32;
            }
            coefficients.push(current);
        }
        LossTerms {
            coefficients: Some(coefficients),
            denominator,
        }
    }
}

/// Where a batch's tokens' rates come from: [`super::Batch`]'s or [`super::WrittenBatch`]'s
/// per-row and per-segment rates.
pub struct TokenRates<'a> {
    /// Tokens per row.
    pub seq_len: usize,
    /// Each row's rate.
    pub row_rates: &'a [f64],
    /// `pack-docs`: where each segment starts (flat indices).
    pub segment_starts: &'a [u32],
    /// With rates per document: each segment's rate.
    pub segment_rates: &'a [f64],
}

impl TokenRates<'_> {
    /// Each of `n` tokens' loss weight under `weight`: the weight of the rate it was masked at
    /// where `predicted(i)`, 0 elsewhere (the `loss_weight` item of the Python package and of
    /// `inspect-batch --json`).
    pub fn weights(
        &self,
        n: usize,
        weight: LossWeight,
        predicted: impl Fn(usize) -> bool,
    ) -> Vec<f32> {
        (0..n)
            .map(|i| match predicted(i) {
                true => weight.of(super::batch::rate_of_token(
                    i as u32,
                    self.seq_len,
                    self.row_rates,
                    self.segment_starts,
                    self.segment_rates,
                )) as f32,
                false => 0.0,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_print_and_clip() {
        let w: LossWeight = "inverse-rate".parse().unwrap();
        assert_eq!(w, LossWeight::InverseRate { eps: 1e-3 });
        assert_eq!((w.of(0.25), w.of(0.0)), (4.0, 1000.0));
        let w: LossWeight = "inverse-rate:0.05".parse().unwrap();
        assert_eq!(
            (w.of(0.01), w.to_string()),
            (20.0, "inverse-rate:0.05".into())
        );
        assert_eq!("none".parse::<LossWeight>().unwrap().of(0.3), 1.0);
        for bad in ["inverse", "inverse-rate:0", "inverse-rate:x"] {
            let e = bad.parse::<LossWeight>().unwrap_err().to_string();
            assert!(e.contains("--loss-weight") && e.contains(bad), "{e}");
        }
        assert_eq!("sequence".parse::<LossNorm>().unwrap(), LossNorm::Sequence);
        assert!("rows"
            .parse::<LossNorm>()
            .unwrap_err()
            .to_string()
            .contains("masked, token"));
    }

    /// Two rows of 4 at rates 0.5 and 0.25 (the second row with 2 maskable tokens), predicted
    /// at flat 1, 2 (row 0) and 5 (row 1): hand-computed coefficients and denominators.
    #[test]
    fn terms_match_hand_computation() {
        let b = Batch {
            step: 0,
            slots: 0..2,
            rate: 0.375,
            row_rates: vec![0.5, 0.25],
            segment_rates: vec![],
            row_maskable: vec![4, 2],
            seq_len: 4,
            sequence_ids: vec![0, 1],
            sources: vec![0, 0],
            input_ids: vec![0; 8],
            attention_mask: vec![1; 8],
            labels: vec![-100; 8],
            masked_positions: vec![1, 2, 5],
            masked_labels: vec![7, 8, 9],
            segment_starts: vec![],
            counts: Default::default(),
        };
        let inv = LossWeight::InverseRate { eps: 1e-3 };
        let t = |w, n| LossTerms::of(&b, w, n);
        assert_eq!(
            t(LossWeight::None, LossNorm::Masked),
            LossTerms {
                coefficients: None,
                denominator: 3.0
            }
        );
        assert_eq!(t(LossWeight::None, LossNorm::Token).denominator, 6.0);
        assert_eq!(
            t(inv, LossNorm::Token).coefficients,
            Some(vec![2.0, 2.0, 4.0])
        );
        assert_eq!(
            t(inv, LossNorm::Batch),
            LossTerms {
                coefficients: Some(vec![2.0, 2.0, 4.0]),
                denominator: 2.0
            }
        );
        assert_eq!(
            t(inv, LossNorm::Sequence).coefficients,
            Some(vec![0.5, 0.5, 2.0])
        );
        assert_eq!(
            t(LossWeight::None, LossNorm::Sequence).coefficients,
            Some(vec![0.25, 0.25, 0.5])
        );
    }
}
