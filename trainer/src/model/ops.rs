//! Differentiable building blocks composed from candle ops that have a backward pass.
//!
//! candle-nn 0.11's `ops::layer_norm`, `ops::softmax_last_dim` (and `LayerNorm::forward` on
//! contiguous input) have no backward: gradients stop there silently. Nothing here uses them.

use candle_core::{DType, Result, Tensor, D};
use rand_core::Rng;
use rand_xoshiro::Xoshiro256PlusPlus;

fn use_fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// `a · b` computed in `dtype` (autocast): both operands are cast to `dtype` and the product back
/// to `a`'s dtype, so gradients flow back in f32. Same dtype = a plain matmul.
pub fn matmul_in(a: &Tensor, b: &Tensor, dtype: DType) -> Result<Tensor> {
    if a.dtype() == dtype && b.dtype() == dtype {
        return a.matmul(b);
    }
    a.to_dtype(dtype)?
        .matmul(&b.to_dtype(dtype)?)?
        .to_dtype(a.dtype())
}

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if use_fused(x) {
        return x.contiguous()?.apply_op3(
            weight,
            bias,
            super::fused::LayerNorm { eps: eps as f32 },
        );
    }
    layer_norm_composed(x, weight, bias, eps)
}

/// [`layer_norm`] from elementary ops (any device).
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// `x + bias` with `bias` `[N]` broadcast over the rows of `x` `[.., N]`.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if use_fused(x) {
        return x.contiguous()?.apply_op2(bias, super::fused::AddBias);
    }
    x.broadcast_add(bias)
}

/// GELU, exact erf form (BERT's `gelu`).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if use_fused(x) {
        return x.contiguous()?.apply_op1(super::fused::GeluErf);
    }
    x.gelu_erf()
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if use_fused(x) {
        return x.contiguous()?.apply_op1(super::fused::Softmax);
    }
    softmax_composed(x)
}

/// [`softmax_last_dim`] from elementary ops, max subtracted as a constant (any device).
pub fn softmax_composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

/// Multi-head self-attention: `qkv` `[B, L, 3H]` holds the query, key and value projections
/// (H columns each, `heads` heads per block); `key_bias` `[B, L]` is added to every query's scores
/// (0 for tokens, -10000 for padding); `dropout` holds factors for the `[B, heads, L, L]`
/// probabilities (see [`Dropout::factors`]); the two products run in `compute` (see
/// [`matmul_in`]). Returns the context `[B, L, H]`.
pub fn attention(
    qkv: &Tensor,
    heads: usize,
    key_bias: &Tensor,
    dropout: Option<Vec<f32>>,
    compute: DType,
) -> Result<Tensor> {
    if use_fused(qkv) && compute == DType::F32 {
        let bias = key_bias.flatten_all()?.to_vec1::<f32>()?;
        let op = super::attention::FusedAttention::new(heads, bias, dropout);
        return qkv.contiguous()?.apply_op1(op);
    }
    attention_composed(qkv, heads, key_bias, dropout, compute)
}

/// [`attention`] from tensor ops (any device).
pub fn attention_composed(
    qkv: &Tensor,
    heads: usize,
    key_bias: &Tensor,
    dropout: Option<Vec<f32>>,
    compute: DType,
) -> Result<Tensor> {
    let (b, l, three_h) = qkv.dims3()?;
    let h = three_h / 3;
    let dh = h / heads;
    let split = |block: usize| -> Result<Tensor> {
        qkv.narrow(2, block * h, h)?
            .reshape((b, l, heads, dh))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(0)?, split(1)?, split(2)?);
    let scale = 1.0 / (dh as f64).sqrt();
    let scores = (matmul_in(&q, &k.t()?.contiguous()?, compute)? * scale)?
        .broadcast_add(&key_bias.reshape((b, 1, 1, l))?)?;
    let mut probs = softmax_last_dim(&scores)?;
    if let Some(f) = dropout {
        probs = probs.mul(&Tensor::from_vec(f, probs.shape(), probs.device())?)?;
    }
    matmul_in(&probs, &v, compute)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, l, h))
}

/// Mean cross-entropy of logits `[M, V]` against u32 labels `[M]` (differentiable), and how many
/// rows' arg-max equals the label.
pub fn cross_entropy_and_correct(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, usize)> {
    if use_fused(logits) {
        let rows = logits
            .contiguous()?
            .apply_op2(&labels.contiguous()?, super::fused::CrossEntropyRows)?;
        let loss = rows.narrow(1, 0, 1)?.mean_all()?;
        let correct = rows.narrow(1, 1, 1)?.sum_all()?.to_scalar::<f32>()? as usize;
        return Ok((loss, correct));
    }
    let loss = candle_nn::loss::cross_entropy(logits, labels)?;
    let correct = logits
        .argmax(D::Minus1)?
        .eq(labels)?
        .to_dtype(candle_core::DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as usize;
    Ok((loss, correct))
}

/// Seeded inverted dropout: masks come from a counter-based stream so runs are reproducible.
pub struct Dropout {
    rng: Xoshiro256PlusPlus,
    p: f64,
}

impl Dropout {
    /// Dropout with probability `p` drawing from `rng`.
    pub fn new(rng: Xoshiro256PlusPlus, p: f64) -> Self {
        Dropout { rng, p }
    }

    /// Zeroes each element with probability p and scales the rest by 1/(1-p).
    pub fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        match self.factors(x.elem_count()) {
            Some(f) => x.mul(&Tensor::from_vec(f, x.shape(), x.device())?),
            None => Ok(x.clone()),
        }
    }

    /// The next `n` factors (0 with probability p, else 1/(1-p)) that [`Dropout::apply`] would
    /// multiply by; `None` when p = 0 (nothing is drawn).
    pub fn factors(&mut self, n: usize) -> Option<Vec<f32>> {
        if self.p <= 0.0 {
            return None;
        }
        let threshold = (self.p * 4_294_967_296.0) as u64;
        let keep = (1.0 / (1.0 - self.p)) as f32;
        let mut mask = Vec::with_capacity(n);
        while mask.len() < n {
            let bits = self.rng.next_u64();
            for half in [bits & 0xffff_ffff, bits >> 32] {
                if mask.len() < n {
                    mask.push(if half < threshold { 0.0 } else { keep });
                }
            }
        }
        Some(mask)
    }
}
