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

/// Where the Adam moments live and how the update runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateForm {
    /// Host vectors per parameter, updated in place by one fused parallel loop ([`FusedStep`]):
    /// where the model's kernels run ([`model::ops::supports`]).
    Host,
    /// Two flat device buffers (parameters with and without weight decay), updated by a handful
    /// of tensor ops over the whole buffer: every other device.
    Flat,
}

/// One optimised parameter (with its moments in the host form).
struct Slot {
    name: String,
    var: Var,
    /// The copy the model computes with when its dtype is not the parameter's (bf16): its
    /// gradient is the parameter's, and each update sets it from the parameter.
    copy: Option<Var>,
    decay: bool,
    host: Option<(Vec<f32>, Vec<f32>)>,
}

/// The flat form's state of one weight-decay group: the slots it holds, in order, and their
/// moments laid end to end.
struct FlatGroup {
    decay: bool,
    slots: Vec<usize>,
    m: Tensor,
    v: Tensor,
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
    /// The clip factor, applied to each gradient element as it is read.
    scale: f32,
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
        let (lr, b1, b2, c1, c2, eps, decay, scale) = (
            self.lr, self.b1, self.b2, self.c1, self.c2, self.eps, self.decay, self.scale,
        );
        const CHUNK: usize = 1 << 15;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                for i in 0..p.len() {
                    let gi = g[i] * scale;
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
    /// The flat form's groups (empty in the host form).
    flat: Vec<FlatGroup>,
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
    /// An optimizer over `params` (sorted by name for a stable order), its state in the form the
    /// device calls for ([`StateForm::Host`] where the model's kernels run, else flat).
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let host = params
            .first()
            .is_none_or(|(_, v)| model::ops::supports(v.device(), v.dtype()));
        let form = if host {
            StateForm::Host
        } else {
            StateForm::Flat
        };
        Self::with_form(params, cfg, form)
    }

    /// An optimizer whose state takes `form`.
    pub fn with_form(
        params: Vec<(String, Var)>,
        cfg: AdamWConfig,
        form: StateForm,
    ) -> Result<Self> {
        let slots: Vec<Slot> = params
            .into_iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                Slot {
                    decay: decays(var.shape()),
                    copy: None,
                    name,
                    host: (form == StateForm::Host).then(|| (vec![0.0; n], vec![0.0; n])),
                    var,
                }
            })
            .collect();
        let mut flat = Vec::new();
        if form == StateForm::Flat {
            for decay in [true, false] {
                let members: Vec<usize> = (0..slots.len())
                    .filter(|&i| slots[i].decay == decay)
                    .collect();
                let Some(&first) = members.first() else {
                    continue;
                };
                let n: usize = members.iter().map(|&i| slots[i].var.elem_count()).sum();
                let v = &slots[first].var;
                let zeros = Tensor::zeros(n, v.dtype(), v.device())?;
                flat.push(FlatGroup {
                    decay,
                    slots: members,
                    m: zeros.clone(),
                    v: zeros,
                });
            }
        }
        Ok(AdamW {
            cfg,
            slots,
            flat,
            t: 0,
        })
    }

    /// Parameter names in optimisation order.
    pub fn names(&self) -> Vec<&str> {
        self.slots.iter().map(|s| s.name.as_str()).collect()
    }

    /// The variables in optimisation order.
    pub fn vars(&self) -> Vec<&Var> {
        self.slots.iter().map(|s| &s.var).collect()
    }

    /// This optimizer with the model's compute-dtype copies of its variables
    /// ([`model::ParamStore::named_compute_vars`], the same names): gradients are read from them
    /// and every update sets them from the variables. Copies of the variables' own dtype (an f32
    /// model) are the variables themselves and are ignored.
    pub fn with_copies(mut self, copies: Vec<(String, Var)>) -> Result<Self> {
        if copies.len() != self.slots.len() {
            candle_core::bail!(
                "{} copies for {} parameters",
                copies.len(),
                self.slots.len()
            );
        }
        for (slot, (name, copy)) in self.slots.iter_mut().zip(copies) {
            if name != slot.name || copy.dims() != slot.var.dims() {
                candle_core::bail!("copy {name} {:?} for {}", copy.dims(), slot.name);
            }
            if copy.dtype() != slot.var.dtype() {
                slot.copy = Some(copy);
            }
        }
        Ok(self)
    }

    /// The tensors whose gradients are the parameters' (the copies the model computes with, or
    /// the variables), in optimisation order.
    pub fn grad_sources(&self) -> Vec<&Tensor> {
        self.slots
            .iter()
            .map(|s| s.copy.as_ref().unwrap_or(&s.var).as_tensor())
            .collect()
    }

    /// Applies one update with gradients `grads` (aligned with [`AdamW::vars`]) at learning rate `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.step_scaled(grads, None, lr)
    }

    /// [`AdamW::step`] with the gradients multiplied by `scale` (a scalar tensor on their device:
    /// the clip factor) inside the update.
    pub fn step_scaled(&mut self, grads: &[Tensor], scale: Option<&Tensor>, lr: f64) -> Result<()> {
        self.step_with(grads, None, scale, lr)
    }

    /// One clipped update: the global norm of `grads` (an f64 scalar on their device, returned),
    /// the factor that scales them to at most `max_norm` (0: no clipping), and the step with it.
    /// In the flat form the norm is taken over each group's gradients laid end to end, which the
    /// step then reuses: a few launches per group instead of three per parameter.
    pub fn clip_and_step(&mut self, grads: &[Tensor], max_norm: f64, lr: f64) -> Result<Tensor> {
        let flat = self.flat_grads(grads)?;
        let norm = match flat.is_empty() {
            true => global_norm(grads)?,
            false => flat_global_norm(&flat)?,
        };
        let scale = match max_norm > 0.0 {
            true => Some(clip_scale(&norm, max_norm)?),
            false => None,
        };
        let flat = (!flat.is_empty()).then_some(flat);
        self.step_with(grads, flat, scale.as_ref(), lr)?;
        Ok(norm)
    }

    /// Each flat group's gradients laid end to end (none in the host form).
    fn flat_grads(&self, grads: &[Tensor]) -> Result<Vec<Tensor>> {
        self.flat
            .iter()
            .map(|group| end_to_end(&group.slots, |i| &grads[i]))
            .collect()
    }

    /// The update, with the flat groups' gradients already laid end to end when `flat` is given.
    fn step_with(
        &mut self,
        grads: &[Tensor],
        flat: Option<Vec<Tensor>>,
        scale: Option<&Tensor>,
        lr: f64,
    ) -> Result<()> {
        self.t += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        let decay = 1.0 - self.cfg.weight_decay * lr / self.cfg.peak_lr;
        let flat = match flat {
            Some(f) => f,
            None => self.flat_grads(grads)?,
        };
        let slots = &self.slots;
        for (group, mut g) in self.flat.iter_mut().zip(flat) {
            // Gradients and parameters end to end; the update in ~16 ops over the whole buffer.
            if let Some(s) = scale {
                g = g.broadcast_mul(&s.to_dtype(g.dtype())?)?;
            }
            let p = end_to_end(&group.slots, |i| slots[i].var.as_tensor())?;
            group.m = ((&group.m * b1)? + (&g * (1.0 - b1))?)?;
            group.v = ((&group.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&group.m / c1)? / ((&group.v / c2)?.sqrt()? + self.cfg.eps)?)?;
            let d = if group.decay { decay } else { 1.0 };
            let p = ((p * d)? - (update * lr)?)?;
            // The copies' dtype (bf16), cast once for the whole group.
            let copies = match group.slots.iter().find_map(|&i| slots[i].copy.as_ref()) {
                Some(c) => Some(p.to_dtype(c.dtype())?),
                None => None,
            };
            let mut offset = 0;
            for &i in &group.slots {
                let slot = &slots[i];
                let n = slot.var.elem_count();
                slot.var
                    .set(&p.narrow(0, offset, n)?.reshape(slot.var.shape())?)?;
                if let (Some(copy), Some(cast)) = (&slot.copy, &copies) {
                    copy.set(&cast.narrow(0, offset, n)?.reshape(slot.var.shape())?)?;
                }
                offset += n;
            }
        }
        // The host form runs on the CPU: its scale is a CPU scalar (nothing crosses a bus).
        let host_scale = match (scale, self.flat.is_empty()) {
            (Some(s), true) => s.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?,
            _ => 1.0,
        };
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let Some((m, v)) = &mut slot.host else {
                continue;
            };
            let decay = if slot.decay { decay } else { 1.0 };
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
                scale: host_scale,
            };
            slot.var.as_tensor().inplace_op2(&g.contiguous()?, &op)?;
            if let Some(copy) = &slot.copy {
                copy.set(&slot.var.as_tensor().to_dtype(copy.dtype())?)?;
            }
        }
        Ok(())
    }

    /// Slot `i`'s moments as tensors of its shape (views into the flat buffers in that form).
    fn moments_of(&self, i: usize) -> Result<(Tensor, Tensor)> {
        let s = &self.slots[i];
        if let Some((m, v)) = &s.host {
            let dev = candle_core::Device::Cpu;
            return Ok((
                Tensor::from_slice(m, s.var.shape(), &dev)?,
                Tensor::from_slice(v, s.var.shape(), &dev)?,
            ));
        }
        for g in &self.flat {
            let mut offset = 0;
            for &j in &g.slots {
                let n = self.slots[j].var.elem_count();
                if j == i {
                    let shape = s.var.shape();
                    return Ok((
                        g.m.narrow(0, offset, n)?.reshape(shape)?,
                        g.v.narrow(0, offset, n)?.reshape(shape)?,
                    ));
                }
                offset += n;
            }
        }
        candle_core::bail!("no optimizer state for {}", s.name)
    }

    /// Moments for checkpoints: `m.NAME`, `v.NAME`.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, s) in self.slots.iter().enumerate() {
            let (m, v) = self.moments_of(i).expect("every slot has moments");
            out.insert(format!("m.{}", s.name), m);
            out.insert(format!("v.{}", s.name), v);
        }
        out
    }

    /// Restores moments saved by [`AdamW::state_tensors`] and the step count.
    pub fn load_state(&mut self, mut tensors: HashMap<String, Tensor>, t: u64) -> Result<()> {
        let mut loaded = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let mut take = |k: String| {
                tensors
                    .remove(&k)
                    .ok_or_else(|| candle_core::Error::Msg(format!("optimizer state lacks {k}")))
            };
            let m = take(format!("m.{}", s.name))?;
            let v = take(format!("v.{}", s.name))?;
            if m.dims() != s.var.dims() || v.dims() != s.var.dims() {
                candle_core::bail!(
                    "optimizer state for {}: shape {:?}, expected {:?}",
                    s.name,
                    m.dims(),
                    s.var.dims()
                );
            }
            loaded.push((m, v));
        }
        for (s, (m, v)) in self.slots.iter_mut().zip(&loaded) {
            if s.host.is_some() {
                s.host = Some((m.flatten_all()?.to_vec1()?, v.flatten_all()?.to_vec1()?));
            }
        }
        for g in &mut self.flat {
            let device = g.m.device().clone();
            let cat = |pick: fn(&(Tensor, Tensor)) -> &Tensor| -> Result<Tensor> {
                let parts = g
                    .slots
                    .iter()
                    .map(|&i| pick(&loaded[i]).flatten_all()?.to_device(&device))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts, 0)
            };
            (g.m, g.v) = (cat(|l| &l.0)?, cat(|l| &l.1)?);
        }
        self.t = t;
        Ok(())
    }
}

/// Sum of squares of `g` accumulated in f64 on the host, for the CPU kernels' path: an f32 sum
/// over the millions of (mostly zero) entries of an embedding gradient is off by up to ~1e-3
/// relative. `None` where the fused kernels do not run.
fn host_sum_of_squares(g: &Tensor) -> Option<f64> {
    if !model::ops::supports(g.device(), g.dtype()) {
        return None;
    }
    let (storage, layout) = g.storage_and_layout();
    let (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) =
        (&*storage, layout.contiguous_offsets())
    else {
        return None;
    };
    Some(
        v[a..b]
            .par_chunks(1 << 16)
            .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
            .collect::<Vec<f64>>()
            .into_iter()
            .sum(),
    )
}

/// Global L2 norm of `grads`, accumulated in f64, as an f64 scalar on their device (nothing is
/// read back).
pub fn global_norm(grads: &[Tensor]) -> Result<Tensor> {
    let device = grads
        .first()
        .map(|g| g.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    let host: Option<Vec<f64>> = grads.iter().map(host_sum_of_squares).collect();
    if let Some(sums) = host {
        // The CPU kernels' path: the tensors live on the host already.
        let sq: f64 = sums.into_iter().sum();
        return Tensor::new(sq.sqrt(), &device);
    }
    let squares = grads
        .iter()
        .map(|g| g.to_dtype(candle_core::DType::F64)?.sqr()?.sum_all())
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&squares, 0)?.sum_all()?.sqrt()
}

/// The tensors of `slots` flattened and laid end to end.
fn end_to_end<'a>(slots: &[usize], tensor: impl Fn(usize) -> &'a Tensor) -> Result<Tensor> {
    let parts = slots
        .iter()
        .map(|&i| tensor(i).flatten_all())
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

/// Values per f64 chunk of [`flat_global_norm`]: its f64 temporaries stay at 128 MB.
const NORM_CHUNK: usize = 1 << 24;

/// [`global_norm`] over flat gradient buffers: each chunk of up to [`NORM_CHUNK`] values squared
/// and summed in f64 on the device, the chunks' sums added.
fn flat_global_norm(flat: &[Tensor]) -> Result<Tensor> {
    flat_global_norm_in(flat, NORM_CHUNK)
}

fn flat_global_norm_in(flat: &[Tensor], chunk_len: usize) -> Result<Tensor> {
    let mut sums = Vec::new();
    for g in flat {
        let n = g.elem_count();
        for start in (0..n).step_by(chunk_len) {
            let chunk = g.narrow(0, start, chunk_len.min(n - start))?;
            sums.push(chunk.to_dtype(candle_core::DType::F64)?.sqr()?.sum_all()?);
        }
    }
    Tensor::stack(&sums, 0)?.sum_all()?.sqrt()
}

/// The factor that scales gradients of global norm `norm` (an f64 scalar tensor) to at most
/// `max_norm`: `max_norm / (norm + 1e-6)` where the norm exceeds it, else 1; computed on the
/// device.
pub fn clip_scale(norm: &Tensor, max_norm: f64) -> Result<Tensor> {
    let max = Tensor::full(max_norm, (), norm.device())?;
    let ratio = max.div(&(norm + 1e-6)?)?;
    norm.gt(&max)?.where_cond(&ratio, &norm.ones_like()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Scales `grads` in place to a global L2 norm of at most `max_norm` (if positive). Returns the
    /// norm before clipping, an f64 scalar on the gradients' device.
    fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<Tensor> {
        let norm = global_norm(grads)?;
        if max_norm > 0.0 {
            let scale = clip_scale(&norm, max_norm)?.to_dtype(candle_core::DType::F32)?;
            for g in grads.iter_mut() {
                *g = g.broadcast_mul(&scale.to_dtype(g.dtype())?)?;
            }
        }
        Ok(norm)
    }

    /// Two steps against values computed by hand from the update rule above, in both forms.
    #[test]
    fn adamw_matches_hand_computed_updates() {
        hand_computed_updates(StateForm::Host);
        hand_computed_updates(StateForm::Flat);
    }

    fn hand_computed_updates(form: StateForm) {
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
        let mut opt = AdamW::with_form(
            vec![
                ("layer.bias".into(), b.clone()),
                ("layer.weight".into(), w.clone()),
            ],
            cfg,
            form,
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
        let norm = clip_grad_norm(&mut g, 0.0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let exact = (n as f64 * (x as f64) * (x as f64)).sqrt();
        assert!((norm - exact).abs() < 1e-9 * exact, "{norm} vs {exact}");
        let strided = Tensor::full(x, (2000, 2000), &dev).unwrap().t().unwrap();
        let norm = clip_grad_norm(&mut [strided], 0.0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
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
        assert!((norm.to_scalar::<f64>().unwrap() - 5.0).abs() < 1e-6);
        let a = g[0].to_vec1::<f32>().unwrap()[0];
        assert!((a - 0.6).abs() < 1e-5, "{a}");
        // Under the limit nothing changes, bit for bit.
        let mut small = vec![Tensor::new(&[0.3f32, -0.4], &dev).unwrap()];
        clip_grad_norm(&mut small, 1.0).unwrap();
        assert_eq!(small[0].to_vec1::<f32>().unwrap(), [0.3, -0.4]);
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

    fn three_params(seed: u64) -> Vec<(String, Var)> {
        let v = |shape: &[usize], s: u64| {
            let n: usize = shape.iter().product();
            Var::from_vec(
                model::params::normal_samples(n, 1.0, s),
                shape,
                &Device::Cpu,
            )
            .unwrap()
        };
        vec![
            ("a.bias".into(), v(&[5], seed)),
            ("a.weight".into(), v(&[5, 3], seed + 1)),
            ("b.weight".into(), v(&[2, 7], seed + 2)),
        ]
    }

    fn values(params: &[(String, Var)]) -> Vec<f32> {
        params
            .iter()
            .flat_map(|(_, v)| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect()
    }

    /// The flat form (the device path: two buffers, the clip factor inside the update) takes the
    /// host form's steps, clipped and not, decayed and not; its checkpointed moments resume it
    /// exactly.
    #[test]
    fn flat_state_steps_like_the_host_form_and_resumes() {
        let cfg = AdamWConfig {
            peak_lr: 0.01,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.1,
        };
        let (host_p, flat_p) = (three_params(1), three_params(1));
        let mut host = AdamW::with_form(host_p.clone(), cfg, StateForm::Host).unwrap();
        let mut flat = AdamW::with_form(flat_p.clone(), cfg, StateForm::Flat).unwrap();
        let grads = |step: u64| -> Vec<Tensor> {
            three_params(10 * step + 5)
                .iter()
                .map(|(_, v)| v.as_tensor().clone())
                .collect()
        };
        for step in 0..3u64 {
            let g = grads(step);
            let norm = global_norm(&g).unwrap();
            // Step 1 clips (norm ~ 5 > 2), the others do not (limit 100).
            let limit = if step == 1 { 2.0 } else { 100.0 };
            let scale = clip_scale(&norm, limit).unwrap();
            host.step_scaled(&g, Some(&scale), 0.01).unwrap();
            flat.step_scaled(&g, Some(&scale), 0.01).unwrap();
            let (h, f) = (values(&host_p), values(&flat_p));
            let d = h
                .iter()
                .zip(&f)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-6, "step {step}: {d}");
        }
        // A fresh flat optimizer loaded from the saved moments takes the same next step.
        let resumed_p = three_params(1);
        for ((_, a), (_, b)) in resumed_p.iter().zip(&flat_p) {
            a.set(b.as_tensor()).unwrap();
        }
        let mut resumed = AdamW::with_form(resumed_p.clone(), cfg, StateForm::Flat).unwrap();
        resumed.load_state(flat.state_tensors(), flat.t).unwrap();
        let g = grads(9);
        flat.step(&g, 0.005).unwrap();
        resumed.step(&g, 0.005).unwrap();
        assert_eq!(values(&flat_p), values(&resumed_p));
    }

    /// With bf16 copies (the model under `--precision bf16`), both forms update the f32
    /// parameters exactly as without copies, set every copy to its parameter rounded to bf16, and
    /// read gradients from the copies.
    #[test]
    fn updates_set_the_bf16_copies_from_the_f32_parameters() {
        let cfg = AdamWConfig {
            peak_lr: 0.01,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.1,
        };
        let copies_of = |params: &[(String, Var)]| -> Vec<(String, Var)> {
            params
                .iter()
                .map(|(n, v)| {
                    let c = v.as_tensor().to_dtype(candle_core::DType::BF16).unwrap();
                    (n.clone(), Var::from_tensor(&c).unwrap())
                })
                .collect()
        };
        let round = |v: Vec<f32>| -> Vec<f32> {
            let n = v.len();
            Tensor::from_vec(v, n, &Device::Cpu)
                .and_then(|t| t.to_dtype(candle_core::DType::BF16))
                .and_then(|t| t.to_dtype(candle_core::DType::F32))
                .and_then(|t| t.to_vec1::<f32>())
                .unwrap()
        };
        let copy_values = |copies: &[(String, Var)]| -> Vec<f32> {
            copies
                .iter()
                .flat_map(|(_, v)| {
                    let t = v.as_tensor().to_dtype(candle_core::DType::F32).unwrap();
                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                })
                .collect()
        };
        for form in [StateForm::Host, StateForm::Flat] {
            let (plain_p, p) = (three_params(1), three_params(1));
            let copies = copies_of(&p);
            let mut plain = AdamW::with_form(plain_p.clone(), cfg, form).unwrap();
            let mut opt = AdamW::with_form(p.clone(), cfg, form)
                .unwrap()
                .with_copies(copies.clone())
                .unwrap();
            for (source, (_, copy)) in opt.grad_sources().into_iter().zip(&copies) {
                assert_eq!(source.id(), copy.as_tensor().id(), "{form:?}");
            }
            for step in 0..2u64 {
                let g: Vec<Tensor> = three_params(10 * step + 5)
                    .iter()
                    .map(|(_, v)| v.as_tensor().clone())
                    .collect();
                plain.step(&g, 0.01).unwrap();
                opt.step(&g, 0.01).unwrap();
                assert_eq!(values(&p), values(&plain_p), "{form:?} step {step}");
                assert_eq!(
                    copy_values(&copies),
                    round(values(&p)),
                    "{form:?} step {step}"
                );
            }
        }
        // f32 copies are the parameters themselves: ignored.
        let p = three_params(1);
        let opt = AdamW::with_form(p.clone(), cfg, StateForm::Flat)
            .unwrap()
            .with_copies(p.clone())
            .unwrap();
        assert_eq!(opt.grad_sources()[0].id(), p[0].1.as_tensor().id());
    }

    /// The clipped update in one call equals the norm, the clip factor and the scaled step taken
    /// apart, in both forms; the flat norm over chunks (here of 7 values, ending mid-chunk) is the
    /// per-tensor norm.
    #[test]
    fn clip_and_step_is_the_norm_the_clip_and_the_step() {
        let cfg = AdamWConfig {
            peak_lr: 0.01,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.1,
        };
        let g: Vec<Tensor> = three_params(15)
            .iter()
            .map(|(_, v)| v.as_tensor().clone())
            .collect();
        let scalar = |t: &Tensor| t.to_scalar::<f64>().unwrap();
        let flat: Vec<Tensor> = g.iter().map(|t| t.flatten_all().unwrap()).collect();
        let by_tensor = scalar(&global_norm(&g).unwrap());
        let by_chunks = scalar(&flat_global_norm_in(&flat, 7).unwrap());
        assert!((by_tensor - by_chunks).abs() < 1e-12 * by_tensor);
        for form in [StateForm::Host, StateForm::Flat] {
            for limit in [2.0, 100.0, 0.0] {
                let (apart_p, joint_p) = (three_params(1), three_params(1));
                let mut apart = AdamW::with_form(apart_p.clone(), cfg, form).unwrap();
                let mut joint = AdamW::with_form(joint_p.clone(), cfg, form).unwrap();
                let norm = global_norm(&g).unwrap();
                let scale = (limit > 0.0).then(|| clip_scale(&norm, limit).unwrap());
                apart.step_scaled(&g, scale.as_ref(), 0.01).unwrap();
                let joint_norm = joint.clip_and_step(&g, limit, 0.01).unwrap();
                let (n0, n1) = (scalar(&norm), scalar(&joint_norm));
                assert!(
                    (n0 - n1).abs() < 1e-12 * n0,
                    "{form:?} {limit}: {n0} vs {n1}"
                );
                let d = values(&apart_p)
                    .iter()
                    .zip(values(&joint_p))
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(d < 1e-7, "{form:?} {limit}: parameters differ by {d}");
            }
        }
    }
}
