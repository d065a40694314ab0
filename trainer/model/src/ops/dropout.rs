//! Inverted dropout from a counter-based generator: the mask of element `i` is a pure function of
//! (seed, step, micro-batch, layer, site) and `i`, drawn where the tensor lives.
//!
//! A micro-batch's [`Dropout`] holds the key of (seed, step, micro-batch); [`Dropout::mask`] adds
//! (layer, [`Site`]) and gives the [`DropoutMask`] of one call. Its bits are Philox4x32-10
//! ([`shared::philox`]) word `i` for element `i`: the CPU kernel here and the CUDA kernel in
//! `kernels/dropout.cu` draw the same words, so no mask is ever uploaded, a resumed run draws the
//! same masks, and the backward regenerates the mask instead of storing it (the op's backward is
//! the op itself applied to the incoming gradient).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use shared::philox::PhiloxStream;
use shared::seed::seed_of;

/// Where in the model a mask is drawn; with the layer index, it separates the masks of one
/// micro-batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// After the embeddings' norm (layer 0).
    Embeddings = 1,
    /// On the attention probabilities `[B, heads, L, L]`.
    AttentionProbs = 2,
    /// On the attention block's output projection.
    AttentionOutput = 3,
    /// On the feed-forward block (BERT: its output; ModernBERT: the gated activation).
    FeedForward = 4,
    /// On a classifier's pooled input (fine-tuning heads).
    Classifier = 5,
}

/// Domain tag of dropout keys.
const DROPOUT_TAG: u64 = 0x0064_726f_706f;

/// The dropout of one micro-batch: probability `p` and the key of (seed, step, micro-batch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    key: u64,
    p: f64,
}

impl Dropout {
    /// Dropout with probability `p` for the micro-batch identified by `key` (e.g. step and
    /// micro-batch index in the global batch) within run seed `seed`.
    pub fn new(seed: u64, key: &[u64], p: f64) -> Self {
        let mut parts = Vec::with_capacity(key.len() + 2);
        parts.extend([seed, DROPOUT_TAG]);
        parts.extend_from_slice(key);
        Dropout {
            key: seed_of(&parts),
            p,
        }
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// The mask of layer `layer`'s `site`.
    pub fn mask(&self, layer: usize, site: Site) -> DropoutMask {
        DropoutMask {
            key: seed_of(&[self.key, layer as u64, site as u64]),
            p: self.p,
        }
    }
}

/// One call's mask: element `i` is dropped when Philox word `i` under `key` falls below `p · 2³²`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutMask {
    /// The Philox key.
    pub key: u64,
    /// The drop probability.
    pub p: f64,
}

impl DropoutMask {
    /// `x` with each element zeroed with probability p and the rest scaled by 1/(1−p), drawn on
    /// `x`'s device (differentiable: the backward applies the same mask).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if self.p <= 0.0 {
            return Ok(x.clone());
        }
        x.contiguous()?.apply_op1(PhiloxDropout(*self))
    }

    /// `residual + apply(x)` in one op (differentiable: `residual`'s gradient passes through, and
    /// `x`'s is the mask applied to it); the two ops under [`super::Kernels::Composed`].
    pub fn add_to(&self, residual: &Tensor, x: &Tensor) -> Result<Tensor> {
        if self.p <= 0.0 {
            return residual + x;
        }
        if super::kernels() == super::Kernels::Composed {
            return residual + self.apply(x)?;
        }
        if residual.shape() != x.shape() {
            candle_core::bail!(
                "residual dropout: residual {:?} for values {:?}",
                residual.dims(),
                x.dims()
            );
        }
        residual
            .contiguous()?
            .apply_op2(&x.contiguous()?, PhiloxResidualDropout(*self))
    }

    /// The residual dropout's kernel on the tensors' device (no gradient): what `trainer
    /// device-check` compares across devices.
    pub fn add_to_kernel(&self, residual: &Tensor, x: &Tensor) -> Result<Tensor> {
        residual
            .contiguous()?
            .apply_op2_no_bwd(&x.contiguous()?, &PhiloxResidualDropout(*self))
    }

    /// The factors (0 or 1/(1−p)) of elements `first .. first + n`, computed on the host: the
    /// reference the kernels are tested against, and what the CPU attention kernel multiplies by.
    pub fn factors(&self, first: u64, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n];
        self.fill_factors(first, &mut out);
        out
    }

    /// [`DropoutMask::factors`] into `out`.
    pub fn fill_factors(&self, first: u64, out: &mut [f32]) {
        PhiloxStream::new(self.key).dropout_factors(self.p, first, out);
    }

    /// (threshold, keep factor): a word below the threshold drops, kept values are multiplied by
    /// the factor (in f32, then rounded to the tensor's dtype).
    pub(crate) fn threshold_and_keep(&self) -> (u32, f32) {
        let threshold = (self.p * 4_294_967_296.0).min(u32::MAX as f64) as u32;
        (threshold, (1.0 / (1.0 - self.p)) as f32)
    }
}

/// `residual + x` with `x` through `dropout`'s mask at (`layer`, `site`) when training (`Some`),
/// `residual + x` when evaluating (`None`): the residual connection after a dropped block, one
/// pass over memory instead of the mask's and the sum's two (the sum in f32, rounded once; under
/// `--kernels composed`, the two ops).
pub fn residual_dropout(
    residual: &Tensor,
    x: Tensor,
    dropout: Option<&Dropout>,
    layer: usize,
    site: Site,
) -> Result<Tensor> {
    match dropout {
        Some(d) => d.mask(layer, site).add_to(residual, &x),
        None => residual + x,
    }
}

/// `x` through `dropout`'s mask at (`layer`, `site`) when training (`Some`), unchanged when
/// evaluating (`None`).
pub fn maybe_dropout(
    x: Tensor,
    dropout: Option<&Dropout>,
    layer: usize,
    site: Site,
) -> Result<Tensor> {
    match dropout {
        Some(d) => d.mask(layer, site).apply(&x),
        None => Ok(x),
    }
}

/// The op: `x ⊙ factors(key)` over contiguous `x`, element `i` taking word `i`.
struct PhiloxDropout(DropoutMask);

/// Elements per rayon task (a multiple of 4: each Philox block serves four elements).
const CHUNK: usize = 1 << 14;

/// Both dropout ops' CPU kernel: `x ⊙ factors` (no `residual`) or `residual + x ⊙ factors`, the
/// arithmetic in f32 and rounded back to the tensors' dtype once.
fn drop_cpu(
    residual: Option<(&CpuStorage, &Layout)>,
    x: (&CpuStorage, &Layout),
    mask: &DropoutMask,
) -> Result<CpuStorage> {
    Ok(match x.0 {
        CpuStorage::F32(_) => CpuStorage::F32(drop_typed(residual, x, mask, |v| v, |v| v)?),
        CpuStorage::BF16(_) => CpuStorage::BF16(drop_typed(
            residual,
            x,
            mask,
            half::bf16::to_f32,
            half::bf16::from_f32,
        )?),
        CpuStorage::F16(_) => CpuStorage::F16(drop_typed(
            residual,
            x,
            mask,
            half::f16::to_f32,
            half::f16::from_f32,
        )?),
        _ => candle_core::bail!("dropout: no CPU kernel for this dtype"),
    })
}

/// [`drop_cpu`] for values of type `T`, converted through `to_f32` / `from_f32`.
fn drop_typed<T: WithDType>(
    residual: Option<(&CpuStorage, &Layout)>,
    (s, l): (&CpuStorage, &Layout),
    mask: &DropoutMask,
    to_f32: fn(T) -> f32,
    from_f32: fn(f32) -> T,
) -> Result<Vec<T>> {
    let x = contiguous_values::<T>(s, l)?;
    Ok(match residual {
        None => drop_map(x, mask, |_, v, factor| from_f32(to_f32(v) * factor)),
        Some((rs, rl)) => {
            let r = contiguous_values::<T>(rs, rl)?;
            if r.len() != x.len() {
                candle_core::bail!("residual dropout: {} and {} values", r.len(), x.len());
            }
            drop_map(x, mask, |i, v, factor| {
                from_f32(to_f32(r[i]) + to_f32(v) * factor)
            })
        }
    })
}

/// The contiguous values of a CPU tensor of `T`s.
fn contiguous_values<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("dropout: contiguous input only")
    };
    Ok(&s.as_slice::<T>()?[a..b])
}

/// `y[i] = f(i, x[i], factor(i))` over the Philox stream of `mask`, in parallel chunks.
fn drop_map<T: Copy + Send + Sync>(
    x: &[T],
    mask: &DropoutMask,
    f: impl Fn(usize, T, f32) -> T + Sync,
) -> Vec<T> {
    let stream = PhiloxStream::new(mask.key);
    let (threshold, keep) = mask.threshold_and_keep();
    let mut y = x.to_vec();
    y.par_chunks_mut(CHUNK).enumerate().for_each(|(c, ys)| {
        let first = c * CHUNK;
        for (j, quad) in ys.chunks_mut(4).enumerate() {
            let words = stream.block((first / 4 + j) as u64);
            for (k, (y, w)) in quad.iter_mut().zip(words).enumerate() {
                let factor = if w < threshold { 0.0 } else { keep };
                *y = f(first + 4 * j + k, *y, factor);
            }
        }
    });
    y
}

/// The op: `residual + x ⊙ factors(key)` over contiguous inputs, element `i` taking word `i`.
struct PhiloxResidualDropout(DropoutMask);

impl CustomOp2 for PhiloxResidualDropout {
    fn name(&self) -> &'static str {
        "philox-residual-dropout"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = drop_cpu(Some((s1, l1)), (s2, l2), &self.0)?;
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::residual_dropout((s1, l1), (s2, l2), &self.0)
    }

    fn bwd(
        &self,
        _residual: &Tensor,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op1(PhiloxDropout(self.0))?;
        Ok((Some(grad.clone()), Some(dx)))
    }
}

impl CustomOp1 for PhiloxDropout {
    fn name(&self) -> &'static str {
        "philox-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = drop_cpu(None, (s, l), &self.0)?;
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::dropout(s, l, &self.0)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(PhiloxDropout(self.0))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn mask(p: f64) -> DropoutMask {
        Dropout::new(3, &[7, 1], p).mask(2, Site::FeedForward)
    }

    /// The kept fraction is within 5 standard deviations of 1 − p, kept values are 1/(1−p), and
    /// the same key gives the same factors.
    #[test]
    fn factors_drop_at_rate_p_and_repeat_with_the_key() {
        let n = 100_000;
        let f = mask(0.1).factors(0, n);
        assert_eq!(f, mask(0.1).factors(0, n));
        let kept = f.iter().filter(|&&v| v != 0.0).count() as f64;
        let sd = (n as f64 * 0.1 * 0.9).sqrt();
        assert!((kept - 0.9 * n as f64).abs() < 5.0 * sd, "kept {kept}");
        assert!(f.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
    }

    /// Hand-picked coordinates: element `i`'s factor comes from Philox word `i` under the key of
    /// seed_of(seed_of(seed, tag, step, micro), layer, site), computed here from the published
    /// block function, not from the stream.
    #[test]
    fn element_i_takes_philox_word_i_of_the_site_key() {
        let m = mask(0.5);
        let key = seed_of(&[
            seed_of(&[3, DROPOUT_TAG, 7, 1]),
            2,
            Site::FeedForward as u64,
        ]);
        assert_eq!(m.key, key);
        let f = m.factors(0, 4_000);
        for i in [0usize, 1, 3, 4, 1_234, 3_999] {
            let block = shared::philox::philox4x32_10(
                [(i / 4) as u32, 0, 0, 0],
                [key as u32, (key >> 32) as u32],
            );
            let dropped = block[i % 4] < (1u32 << 31);
            assert_eq!(f[i] == 0.0, dropped, "element {i}");
        }
        // Layers, sites, steps and micro-batches have their own masks.
        let other = [
            Dropout::new(3, &[7, 1], 0.5).mask(3, Site::FeedForward),
            Dropout::new(3, &[7, 1], 0.5).mask(2, Site::AttentionOutput),
            Dropout::new(3, &[8, 1], 0.5).mask(2, Site::FeedForward),
            Dropout::new(3, &[7, 2], 0.5).mask(2, Site::FeedForward),
            Dropout::new(4, &[7, 1], 0.5).mask(2, Site::FeedForward),
        ];
        for o in other {
            assert_ne!(o.factors(0, 64), f[..64], "{o:?}");
        }
    }

    /// The op multiplies by the host factors (f32 exactly; bf16 as f32 products rounded once),
    /// whatever the chunking, and its gradient is the same mask: forward and backward agree.
    #[test]
    fn op_equals_host_factors_and_backward_uses_the_same_mask() {
        let n = 3 * CHUNK + 5;
        let m = mask(0.3);
        let x = Var::from_vec(
            (0..n).map(|i| 1.0 + (i % 13) as f32).collect::<Vec<_>>(),
            n,
            &Device::Cpu,
        )
        .unwrap();
        let y = m.apply(x.as_tensor()).unwrap();
        let expect: Vec<f32> = m
            .factors(0, n)
            .iter()
            .enumerate()
            .map(|(i, f)| (1.0 + (i % 13) as f32) * f)
            .collect();
        assert_eq!(y.to_vec1::<f32>().unwrap(), expect);
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, m.factors(0, n));
        let xb = x.as_tensor().to_dtype(DType::BF16).unwrap();
        let yb = m.apply(&xb).unwrap().to_dtype(DType::F32).unwrap();
        let expect_b: Vec<f32> = expect
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        assert_eq!(yb.to_vec1::<f32>().unwrap(), expect_b);
        assert!(
            mask(0.0)
                .apply(x.as_tensor())
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0]
                == 1.0
        );
    }

    /// Residual + dropout in one op: `r + x · factor` from the host factors (f32: bit for bit
    /// the mask then the sum; bf16: the f32 sum of the bf16 inputs rounded once), whatever the
    /// chunking; `r`'s gradient passes through and `x`'s is the mask.
    #[test]
    fn residual_dropout_is_the_sum_with_the_same_mask() {
        let n = 2 * CHUNK + 7;
        let m = mask(0.25);
        let values = |k: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * k + 3) % 17) as f32 * 0.37 - 2.9)
                .collect()
        };
        let (rv, xv, pv) = (values(5), values(11), values(3));
        let (r, x) = (
            Var::from_vec(rv.clone(), n, &Device::Cpu).unwrap(),
            Var::from_vec(xv.clone(), n, &Device::Cpu).unwrap(),
        );
        let y = m.add_to(r.as_tensor(), x.as_tensor()).unwrap();
        let unfused = (r.as_tensor() + m.apply(x.as_tensor()).unwrap()).unwrap();
        let f = m.factors(0, n);
        let expect: Vec<f32> = (0..n).map(|i| rv[i] + xv[i] * f[i]).collect();
        assert!(y.to_vec1::<f32>().unwrap() == expect, "forward");
        assert!(unfused.to_vec1::<f32>().unwrap() == expect, "unfused");
        let probe = Tensor::from_vec(pv.clone(), n, &Device::Cpu).unwrap();
        let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let (gr, gx) = (
            g.get(r.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
            g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(gr == pv, "residual's gradient");
        let want_x: Vec<f32> = (0..n).map(|i| pv[i] * f[i]).collect();
        assert!(gx == want_x, "x's gradient");
        // bf16: the sum of the rounded inputs in f32, rounded once.
        let bf = |v: &Var| v.as_tensor().to_dtype(DType::BF16).unwrap();
        let yb = m
            .add_to(&bf(&r), &bf(&x))
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let round = |v: f32| half::bf16::from_f32(v).to_f32();
        let expect_b: Vec<f32> = (0..n)
            .map(|i| round(round(rv[i]) + round(xv[i]) * f[i]))
            .collect();
        assert!(yb.to_vec1::<f32>().unwrap() == expect_b, "bf16");
        // The exposed kernel is the op; p = 0 is the plain sum.
        let k = m.add_to_kernel(r.as_tensor(), x.as_tensor()).unwrap();
        assert!(k.to_vec1::<f32>().unwrap() == expect, "kernel");
        let plain = mask(0.0).add_to(r.as_tensor(), x.as_tensor()).unwrap();
        let sum: Vec<f32> = (0..n).map(|i| rv[i] + xv[i]).collect();
        assert!(plain.to_vec1::<f32>().unwrap() == sum, "p = 0");
    }
}
