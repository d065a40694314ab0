//! Decoupled AdamW (Loshchilov & Hutter; Composer's `DecoupledAdamW`, which the paper used) with
//! no decay on biases and LayerNorm, bias correction, and global-norm gradient clipping.
//!
//! Weight decay is decoupled from the gradient and scaled by the schedule, not by the learning
//! rate itself: `p ← p · (1 − wd · lr_t / lr_peak)`, then the Adam step `p ← p − lr_t · m̂ / (√v̂ + ε)`.

use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
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

/// Adam moments: host vectors updated in place by [`FusedStep`] where the model's kernels run
/// ([`model::ops::supports`]), tensors updated by tensor ops elsewhere.
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Device { m: Tensor, v: Tensor },
}

/// One optimised parameter.
struct Slot {
    name: String,
    var: Var,
    decay: bool,
    moments: Moments,
}

/// The fused AdamW update over a parameter (in place) and its gradient, on the CPU: one pass, no
/// allocation (candle's tensor-op AdamW allocates ~10 full-size tensors per parameter per step).
struct FusedStep<'a> {
    m: RefCell<&'a mut [f32]>,
    v: RefCell<&'a mut [f32]>,
    lr: f32,
    b1: f32,
    b2: f32,
    c1: f32,
    c2: f32,
    eps: f32,
    decay: f32,
}

impl InplaceOp2 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("fused-adamw: f32 parameters and gradients only")
        };
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("fused-adamw: contiguous tensors only")
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        let (m, v): (&mut [f32], &mut [f32]) = (&mut m, &mut v);
        if m.len() != p.len() || g.len() != p.len() {
            candle_core::bail!(
                "fused-adamw: {} parameters, {} gradients, {} moments",
                p.len(),
                g.len(),
                m.len()
            );
        }
        let (lr, b1, b2, c1, c2, eps, decay) = (
            self.lr, self.b1, self.b2, self.c1, self.c2, self.eps, self.decay,
        );
        const CHUNK: usize = 1 << 15;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                for i in 0..p.len() {
                    let gi = g[i];
                    m[i] = b1 * m[i] + (1.0 - b1) * gi;
                    v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                    let update = (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
                    p[i] = p[i] * decay - lr * update;
                }
            });
        Ok(())
    }
}

/// The optimizer and its state.
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    /// Steps taken (bias correction uses t + 1 for the next step).
    pub t: u64,
}

/// Whether a parameter of `shape` gets weight decay: matrices and embeddings (two or more
/// dimensions) do, vectors (biases, norm scales) do not, whatever the architecture names them
/// (nanoGPT's `configure_optimizers` rule).
pub fn decays(shape: &candle_core::Shape) -> bool {
    shape.rank() >= 2
}

impl AdamW {
    /// An optimizer over `params` (sorted by name for a stable order).
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                let moments = if model::ops::supports(var.device(), var.dtype()) {
                    let n = var.elem_count();
                    Moments::Host {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    }
                } else {
                    let z = var.as_tensor().zeros_like()?;
                    Moments::Device { m: z.clone(), v: z }
                };
                Ok(Slot {
                    decay: decays(var.shape()),
                    name,
                    moments,
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
            let decay = if slot.decay { decay } else { 1.0 };
            match &mut slot.moments {
                Moments::Host { m, v } => {
                    let op = FusedStep {
                        m: RefCell::new(m),
                        v: RefCell::new(v),
                        lr: lr as f32,
                        b1: b1 as f32,
                        b2: b2 as f32,
                        c1: c1 as f32,
                        c2: c2 as f32,
                        eps: self.cfg.eps as f32,
                        decay: decay as f32,
                    };
                    slot.var.as_tensor().inplace_op2(&g.contiguous()?, &op)?;
                }
                Moments::Device { m, v } => {
                    *m = ((&*m * b1)? + (g * (1.0 - b1))?)?;
                    *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                    let update = ((&*m / c1)? / ((&*v / c2)?.sqrt()? + self.cfg.eps)?)?;
                    let p = (slot.var.as_tensor() * decay)?;
                    slot.var.set(&(p - (update * lr)?)?)?;
                }
            }
        }
        Ok(())
    }

    /// Moments for checkpoints: `m.NAME`, `v.NAME`.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for s in &self.slots {
            let (m, v) = match &s.moments {
                Moments::Host { m, v } => {
                    let shape = s.var.shape();
                    (
                        Tensor::from_slice(m, shape, &candle_core::Device::Cpu).expect("shape"),
                        Tensor::from_slice(v, shape, &candle_core::Device::Cpu).expect("shape"),
                    )
                }
                Moments::Device { m, v } => (m.clone(), v.clone()),
            };
            out.insert(format!("m.{}", s.name), m);
            out.insert(format!("v.{}", s.name), v);
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
            let m = take(&mut tensors, format!("m.{}", s.name))?;
            let v = take(&mut tensors, format!("v.{}", s.name))?;
            if m.dims() != s.var.dims() || v.dims() != s.var.dims() {
                candle_core::bail!(
                    "optimizer state for {}: shape {:?}, expected {:?}",
                    s.name,
                    m.dims(),
                    s.var.dims()
                );
            }
            s.moments = match &s.moments {
                Moments::Host { .. } => Moments::Host {
                    m: m.flatten_all()?.to_vec1()?,
                    v: v.flatten_all()?.to_vec1()?,
                },
                Moments::Device { .. } => Moments::Device {
                    m: m.to_device(s.var.device())?,
                    v: v.to_device(s.var.device())?,
                },
            };
        }
        self.t = t;
        Ok(())
    }
}

/// Sum of squares of `g` accumulated in f64: an f32 sum over the millions of (mostly zero) entries
/// of an embedding gradient is off by up to ~1e-3 relative.
fn sum_of_squares(g: &Tensor) -> Result<f64> {
    if model::ops::supports(g.device(), g.dtype()) {
        let (storage, layout) = g.storage_and_layout();
        if let (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(v[a..b]
                .par_chunks(1 << 16)
                .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                .collect::<Vec<f64>>()
                .into_iter()
                .sum());
        }
    }
    g.to_dtype(candle_core::DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()
}

/// Global L2 norm of `grads` (accumulated in f64); scales them in place to at most `max_norm` (if
/// positive). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter() {
        sq += sum_of_squares(g)?;
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
        // A matrix (decayed) and a vector (not).
        let w = Var::from_vec(vec![1.0f32, -2.0], (1, 2), &dev).unwrap();
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
        let gw = Tensor::new(&[[0.5f32, -1.0]], &dev).unwrap();
        let gb = Tensor::new(&[2.0f32], &dev).unwrap();
        // Step 1, lr = 0.1: m̂ = g, v̂ = g², update = g/(|g|+eps) ≈ sign(g).
        opt.step(&[gb.clone(), gw.clone()], 0.1).unwrap();
        let w1 = w
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
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
            &[
                gb,
                Tensor::zeros((1, 2), candle_core::DType::F32, &dev).unwrap(),
            ],
            0.05,
        )
        .unwrap();
        let m_hat = 0.9 * 0.1 * 0.5 / (1.0 - 0.81);
        let v_hat = 0.98 * 0.02 * 0.25 / (1.0 - 0.98f64 * 0.98);
        let expect = expect_w0 * (1.0 - 0.01 * 0.5) - 0.05 * m_hat / (v_hat.sqrt() + 1e-6);
        let w2 = w
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0] as f64;
        assert!((w2 - expect).abs() < 1e-5, "{w2} vs {expect}");
    }

    /// The norm of an embedding-sized gradient equals the f64 formula (an f32 running sum drifts
    /// by ~1e-3 here).
    #[test]
    fn gradient_norm_is_accumulated_in_f64() {
        let dev = Device::Cpu;
        let n = 4_000_000;
        let x = 0.001f32;
        let mut g = vec![Tensor::full(x, n, &dev).unwrap()];
        let norm = clip_grad_norm(&mut g, 0.0).unwrap();
        let exact = (n as f64 * (x as f64) * (x as f64)).sqrt();
        assert!((norm - exact).abs() < 1e-9 * exact, "{norm} vs {exact}");
        let strided = Tensor::full(x, (2000, 2000), &dev).unwrap().t().unwrap();
        let norm = clip_grad_norm(&mut [strided], 0.0).unwrap();
        assert!((norm - exact).abs() < 1e-9 * exact, "{norm} vs {exact}");
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
    }

    /// Weight decay by rank picks, in both architectures, exactly the parameters that are neither
    /// biases nor norms by their transformers names (BERT's `LayerNorm`, ModernBERT's `*norm`).
    #[test]
    fn decay_falls_on_matrices_not_biases_or_norms() {
        for arch in [model::Arch::Bert, model::Arch::ModernBert] {
            let p = model::ParamStore::new(&Device::Cpu, 0);
            let cfg = model::BertConfig::from_arch_preset(arch, "tiny", 64).unwrap();
            model::Encoder::new(cfg, &p).unwrap();
            let vars = p.named_vars();
            assert!(vars.len() >= 17, "{arch:?}: {} parameters", vars.len());
            for (name, var) in vars {
                let by_name = !(name.ends_with(".bias") || name.to_lowercase().contains("norm"));
                assert_eq!(decays(var.shape()), by_name, "{arch:?} {name}");
            }
        }
    }
}
