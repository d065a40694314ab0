//! Decoupled AdamW (Loshchilov & Hutter; Composer's `DecoupledAdamW`, which the paper used) with
//! no decay on biases and LayerNorm, bias correction, and global-norm gradient clipping.
//!
//! Weight decay is decoupled from the gradient and scaled by the schedule, not by the learning
//! rate itself: `p ← p · (1 − wd · lr_t / lr_peak)`, then the Adam step `p ← p − lr_t · m̂ / (√v̂ + ε)`.

use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Optimizer hyper-parameters (the learning rate comes from the schedule each step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Peak learning rate (the decay is scaled by lr_t / peak).
    pub peak_lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay at the peak learning rate.
    pub weight_decay: f64,
}

/// One optimised parameter.
struct Slot {
    name: String,
    var: Var,
    decay: bool,
    m: Tensor,
    v: Tensor,
}

/// The optimizer and its state.
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    /// Steps taken (bias correction uses t + 1 for the next step).
    pub t: u64,
}

/// Whether `name` gets weight decay: not biases, not LayerNorm parameters.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm") || name == "cls.predictions.bias")
}

impl AdamW {
    /// An optimizer over `params` (sorted by name for a stable order).
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                let z = var.as_tensor().zeros_like()?;
                Ok(Slot {
                    decay: decays(&name),
                    name,
                    m: z.clone(),
                    v: z,
                    var,
                })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW { cfg, slots, t: 0 })
    }

    /// Parameter names in optimisation order.
    pub fn names(&self) -> Vec<&str> {
        self.slots.iter().map(|s| s.name.as_str()).collect()
    }

    /// The variables in optimisation order.
    pub fn vars(&self) -> Vec<&Var> {
        self.slots.iter().map(|s| &s.var).collect()
    }

    /// Applies one update with gradients `grads` (aligned with [`AdamW::vars`]) at learning rate `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        let decay = 1.0 - self.cfg.weight_decay * lr / self.cfg.peak_lr;
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            slot.m = ((&slot.m * b1)? + (g * (1.0 - b1))?)?;
            slot.v = ((&slot.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let m_hat = (&slot.m / c1)?;
            let v_hat = (&slot.v / c2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.cfg.eps)?)?;
            let p = slot.var.as_tensor();
            let p = if slot.decay { (p * decay)? } else { p.clone() };
            slot.var.set(&(p - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Moments for checkpoints: `m.NAME`, `v.NAME`.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("m.{}", s.name), s.m.clone());
            out.insert(format!("v.{}", s.name), s.v.clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state_tensors`] and the step count.
    pub fn load_state(&mut self, mut tensors: HashMap<String, Tensor>, t: u64) -> Result<()> {
        for s in &mut self.slots {
            let take = |tensors: &mut HashMap<String, Tensor>, k: String| {
                tensors
                    .remove(&k)
                    .ok_or_else(|| candle_core::Error::Msg(format!("optimizer state lacks {k}")))
            };
            s.m = take(&mut tensors, format!("m.{}", s.name))?.to_device(s.var.device())?;
            s.v = take(&mut tensors, format!("v.{}", s.name))?.to_device(s.var.device())?;
        }
        self.t = t;
        Ok(())
    }
}

/// Global L2 norm of `grads`; scales them in place to at most `max_norm` (if positive). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter() {
        sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps against values computed by hand from the update rule above.
    #[test]
    fn adamw_matches_hand_computed_updates() {
        let dev = Device::Cpu;
        let w = Var::from_vec(vec![1.0f32, -2.0], 2, &dev).unwrap();
        let b = Var::from_vec(vec![0.5f32], 1, &dev).unwrap();
        let cfg = AdamWConfig {
            peak_lr: 0.1,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.01,
        };
        let mut opt = AdamW::new(
            vec![
                ("layer.bias".into(), b.clone()),
                ("layer.weight".into(), w.clone()),
            ],
            cfg,
        )
        .unwrap();
        let gw = Tensor::new(&[0.5f32, -1.0], &dev).unwrap();
        let gb = Tensor::new(&[2.0f32], &dev).unwrap();
        // Step 1, lr = 0.1: m̂ = g, v̂ = g², update = g/(|g|+eps) ≈ sign(g).
        opt.step(&[gb.clone(), gw.clone()], 0.1).unwrap();
        let w1 = w.as_tensor().to_vec1::<f32>().unwrap();
        let expect_w0 = 1.0 * (1.0 - 0.01) - 0.1 * 0.5 / (0.5 + 1e-6);
        let expect_w1 = -2.0 * (1.0 - 0.01) + 0.1 * 1.0 / (1.0 + 1e-6);
        assert!((w1[0] as f64 - expect_w0).abs() < 1e-6, "{w1:?}");
        assert!((w1[1] as f64 - expect_w1).abs() < 1e-6, "{w1:?}");
        let b1 = b.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
        assert!(
            (b1 - (0.5 - 0.1 * 2.0 / (2.0 + 1e-6))).abs() < 1e-6,
            "bias is not decayed: {b1}"
        );
        // Step 2, lr = 0.05, gradient 0 for w: m = 0.9·0.5·0.1 = 0.045 → m̂ = 0.045/0.19;
        // v = 0.98·0.02·0.25 = 0.0049 → v̂ = 0.0049/0.0396.
        opt.step(
            &[gb, Tensor::zeros(2, candle_core::DType::F32, &dev).unwrap()],
            0.05,
        )
        .unwrap();
        let m_hat = 0.9 * 0.1 * 0.5 / (1.0 - 0.81);
        let v_hat = 0.98 * 0.02 * 0.25 / (1.0 - 0.98f64 * 0.98);
        let expect = expect_w0 * (1.0 - 0.01 * 0.5) - 0.05 * m_hat / (v_hat.sqrt() + 1e-6);
        let w2 = w.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
        assert!((w2 - expect).abs() < 1e-5, "{w2} vs {expect}");
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let dev = Device::Cpu;
        let mut g = vec![
            Tensor::new(&[3.0f32], &dev).unwrap(),
            Tensor::new(&[4.0f32], &dev).unwrap(),
        ];
        let norm = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let a = g[0].to_vec1::<f32>().unwrap()[0];
        assert!((a - 0.6).abs() < 1e-5, "{a}");
        assert!(decays("bert.encoder.layer.0.attention.self.query.weight"));
        assert!(!decays("bert.encoder.layer.0.output.LayerNorm.weight"));
        assert!(!decays("cls.predictions.bias"));
    }
}
