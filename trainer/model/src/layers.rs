//! The dense layer and the layer norm both architectures build on, with transformers' parameter
//! names (`name.weight`, and `name.bias` where the layer has one).

use crate::ops::{add_bias, bias_gelu, gelu, layer_norm, matmul_in};
use crate::params::{Init, ParamStore};
use candle_core::{DType, Result, Tensor};

/// A dense layer `y = x·Wᵀ (+ b)`: `nn.Linear`, with or without its bias.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    compute: DType,
}

impl Linear {
    /// `name.weight` `[out, inp]` ~ normal(0, std) and `name.bias` zeros, from `p`.
    pub fn new(p: &ParamStore, name: &str, inp: usize, out: usize, std: f64) -> Result<Self> {
        Self::without_bias(p, name, inp, out, Init::Normal(std))?.with_bias(p, name)
    }

    /// `name.weight` `[out, inp]` drawn by `init`, no bias (`nn.Linear(bias=False)`).
    pub fn without_bias(
        p: &ParamStore,
        name: &str,
        inp: usize,
        out: usize,
        init: Init,
    ) -> Result<Self> {
        Ok(Linear {
            weight: p.get(&format!("{name}.weight"), &[out, inp], init)?,
            bias: None,
            compute: p.compute_dtype(),
        })
    }

    /// This layer with its bias `name.bias` (zeros, its output width) from `p`.
    pub fn with_bias(mut self, p: &ParamStore, name: &str) -> Result<Self> {
        let out = self.weight.dim(0)?;
        self.bias = Some(p.get(&format!("{name}.bias"), &[out], Init::Zeros)?);
        Ok(self)
    }

    /// The layers `parts` stacked along their outputs: one product gives all their outputs, side
    /// by side (BERT's query, key and value, which transformers keeps as three layers).
    pub fn stacked(parts: &[&Linear]) -> Result<Self> {
        let weights: Vec<&Tensor> = parts.iter().map(|p| &p.weight).collect();
        let biases: Option<Vec<&Tensor>> = parts.iter().map(|p| p.bias.as_ref()).collect();
        Ok(Linear {
            weight: Tensor::cat(&weights, 0)?,
            bias: biases.map(|b| Tensor::cat(&b, 0)).transpose()?,
            compute: parts[0].compute,
        })
    }

    /// Applies the layer to `[N, inp]` or `[B, L, inp]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.product(x)?;
        match &self.bias {
            Some(b) => add_bias(&y, b),
            None => Ok(y),
        }
    }

    /// `GELU(forward(x))`, the bias added inside the activation's kernel ([`bias_gelu`]: one pass
    /// over the output instead of two).
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.product(x)?;
        match &self.bias {
            Some(b) => bias_gelu(&y, b),
            None => gelu(&y),
        }
    }

    /// `x·Wᵀ` without the bias.
    fn product(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.t()?;
        Ok(match x.dims() {
            [b, l, h] => matmul_in(&x.reshape((b * l, *h))?, &w, self.compute)?.reshape((
                *b,
                *l,
                self.weight.dim(0)?,
            ))?,
            _ => matmul_in(x, &w, self.compute)?,
        })
    }
}

/// A layer norm over the last dimension: `nn.LayerNorm`, with or without its bias.
pub struct Norm {
    weight: Tensor,
    /// The bias parameter, or zeros (not a parameter) for a norm without one: the fused kernel
    /// takes both.
    bias: Tensor,
    eps: f64,
}

impl Norm {
    /// `name.weight` ones and `name.bias` zeros, from `p`.
    pub fn new(p: &ParamStore, name: &str, size: usize, eps: f64) -> Result<Self> {
        Ok(Norm {
            weight: p.get(&format!("{name}.weight"), &[size], Init::Ones)?,
            bias: p.get(&format!("{name}.bias"), &[size], Init::Zeros)?,
            eps,
        })
    }

    /// `name.weight` ones, no bias (`nn.LayerNorm(bias=False)`).
    pub fn without_bias(p: &ParamStore, name: &str, size: usize, eps: f64) -> Result<Self> {
        let weight = p.get(&format!("{name}.weight"), &[size], Init::Ones)?;
        let bias = weight.zeros_like()?;
        Ok(Norm { weight, bias, eps })
    }

    /// Normalises `x` over its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}
