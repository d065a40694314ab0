//! Cross-entropy summed over rows, each row weighted, with arg-max hits, fused with the logits'
//! bias (the MLM decoder's): the CPU kernel (loss, hit and logsumexp per row of `x + b` in one
//! pass, the sum never stored; `softmax − onehot` back, and the bias gradient as its column sums),
//! twin of `kernels/cross_entropy.cu`, and, as the composed twin, the bias add, log-softmax and a
//! gather in candle ops.

use super::bias::sum_rows;
use super::rows::{f32_rows, u32_values};
use super::{supports, supports_cuda, vmath};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// `Σᵢ cᵢ·CEᵢ` over the rows of logits `[M, V]` plus `bias` `[V]` (`None`: no bias; the bias is
/// added inside the kernel, never stored) against u32 labels `[M]` (differentiable in the logits
/// and the bias), with `coefficients` `[M]` f32 (`None`: all 1, the plain sum), and how many
/// rows' arg-max equals the label (an f32 scalar on the logits' device: nothing is read back).
pub fn weighted_cross_entropy_and_correct(
    logits: &Tensor,
    bias: Option<&Tensor>,
    labels: &Tensor,
    coefficients: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (device, dtype) = (logits.device(), logits.dtype());
    let (per_row, correct) =
        match supports(device, dtype) || supports_cuda("cross_entropy", device, dtype) {
            true => per_row_kernel(logits, bias, labels)?,
            false => per_row_composed(logits, bias, labels)?,
        };
    let sum = match coefficients {
        Some(c) => (per_row * c)?.sum_all()?,
        None => per_row.sum_all()?,
    };
    Ok((sum, correct))
}

/// Each row's cross-entropy `[M]` and the hits, by the kernel. (bf16 logits on the CPU, the
/// twins' case: the f32 kernel on them and the bias widened, as the bf16 kernel reads them; its
/// rows are f32 either way.)
fn per_row_kernel(
    logits: &Tensor,
    bias: Option<&Tensor>,
    labels: &Tensor,
) -> Result<(Tensor, Tensor)> {
    if logits.device().is_cpu() && logits.dtype() == DType::BF16 {
        let bias = bias.map(|b| b.to_dtype(DType::F32)).transpose()?;
        return per_row_kernel(&logits.to_dtype(DType::F32)?, bias.as_ref(), labels);
    }
    let op = CrossEntropyRows {
        bias_grad: bias.is_some(),
    };
    let bias = bias_of(logits, bias)?;
    let rows = logits
        .contiguous()?
        .apply_op3(&bias, &labels.contiguous()?, op)?;
    // Detached: the count must not keep the forward graph (logits and all) alive.
    let correct = rows.narrow(1, 1, 1)?.sum_all()?.detach();
    Ok((rows.narrow(1, 0, 1)?.squeeze(1)?, correct))
}

/// The bias the kernel adds: `bias`, or zeros (adding 0 changes no value).
fn bias_of(logits: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => b.contiguous(),
        None => Tensor::zeros(logits.dim(D::Minus1)?, logits.dtype(), logits.device()),
    }
}

/// The kernel's rows `[M, 3]` (loss, hit, logsumexp) of `logits + bias` on `logits`' device
/// whatever [`supports`] says (the CPU kernel, or the CUDA one with the `cuda` feature): what
/// `trainer device-check` compares across devices.
pub fn cross_entropy_kernel(logits: &Tensor, bias: &Tensor, labels: &Tensor) -> Result<Tensor> {
    logits.contiguous()?.apply_op3_no_bwd(
        &bias.contiguous()?,
        &labels.contiguous()?,
        &CrossEntropyRows { bias_grad: false },
    )
}

/// The kernel's backward: d logits of `logits + bias` from each row's terms `[M, 3]` f32 (the
/// loss gradient, the logsumexp, the label, exact in f32 below 2^24).
pub fn cross_entropy_backward_kernel(
    logits: &Tensor,
    bias: &Tensor,
    terms: &Tensor,
) -> Result<Tensor> {
    logits.contiguous()?.apply_op3_no_bwd(
        &bias.contiguous()?,
        &terms.contiguous()?,
        &CrossEntropyRowsBackward,
    )
}

/// Each row's cross-entropy `[M]` and the hits, in candle ops (the composed twin).
fn per_row_composed(
    logits: &Tensor,
    bias: Option<&Tensor>,
    labels: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let logits = match bias {
        Some(b) => logits.broadcast_add(b)?,
        None => logits.clone(),
    };
    // In f32 whatever the logits' dtype, as the kernels compute it.
    let logits = &logits.to_dtype(DType::F32)?;
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let per_row = log_p
        .gather(&labels.unsqueeze(1)?.contiguous()?, 1)?
        .squeeze(1)?
        .neg()?;
    let correct = logits
        .argmax(D::Minus1)?
        .eq(labels)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .detach();
    Ok((per_row, correct))
}

/// The mean cross-entropy of logits `[M, V]` against labels `[M]` and the arg-max hits: the
/// unweighted sum over M.
pub fn cross_entropy_and_correct(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    let (sum, correct) = weighted_cross_entropy_and_correct(logits, None, labels, None)?;
    Ok(((sum / logits.dim(0)?.max(1) as f64)?, correct))
}

/// Cross-entropy per row of logits `[M, V]` plus a bias `[V]` against u32 labels `[M]`, in one
/// pass: output `[M, 3]` holding each row's loss (`logsumexp − z[label]` for `z = x + b`, the sum
/// never stored), 1.0 where the row's first arg-max is the label (0.0 otherwise), so accuracy
/// needs no second pass, and the row's logsumexp, which the backward reuses. Only the loss column
/// has a gradient; the bias gets one (dx's column sums) when `bias_grad`.
struct CrossEntropyRows {
    bias_grad: bool,
}

/// (loss, logsumexp, first arg-max) of one row of `x + b`.
fn ce_row(x: &[f32], b: &[f32], label: usize) -> (f32, f32, usize) {
    let z: Vec<f32> = x.iter().zip(b).map(|(&x, &b)| x + b).collect();
    let (max, lse) = vmath::max_and_logsumexp(&z);
    let arg = z.iter().position(|&v| v == max).unwrap_or(0);
    (lse - z[label], lse, arg)
}

fn u32_labels<'a>(s: &'a CpuStorage, l: &Layout, rows: usize) -> Result<&'a [u32]> {
    let labels = u32_values(s, l, "cross-entropy labels")?;
    if labels.len() != rows {
        candle_core::bail!("cross-entropy: {} labels for {rows} rows", labels.len());
    }
    Ok(labels)
}

/// The logits' rows and classes, and the bias, checked against each other.
fn logits_and_bias<'a>(
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    what: &str,
) -> Result<(&'a [f32], &'a [f32], usize)> {
    let (x, dim) = f32_rows(s1, l1, what)?;
    let (b, _) = f32_rows(s2, l2, what)?;
    if b.len() != dim || dim == 0 {
        candle_core::bail!("{what}: bias of {} for {dim} classes", b.len());
    }
    Ok((x, b, dim))
}

/// The largest class count whose labels an f32 holds exactly (the backward's row terms).
const MAX_CLASSES: usize = 1 << 24;

impl CustomOp3 for CrossEntropyRows {
    fn name(&self) -> &'static str {
        "cross-entropy-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b, dim) = logits_and_bias((s1, l1), (s2, l2), "cross-entropy")?;
        let rows = x.len() / dim;
        let labels = u32_labels(s3, l3, rows)?;
        if let Some(&bad) = labels.iter().find(|&&t| t as usize >= dim) {
            candle_core::bail!("cross-entropy: label {bad} outside {dim} classes");
        }
        let mut out = vec![0f32; rows * 3];
        out.par_chunks_mut(3)
            .zip(x.par_chunks(dim))
            .zip(labels.par_iter())
            .for_each(|((o, x), &t)| {
                let (loss, lse, arg) = ce_row(x, b, t as usize);
                o[0] = loss;
                o[1] = (arg == t as usize) as u8 as f32;
                o[2] = lse;
            });
        Ok((CpuStorage::F32(out), Shape::from((rows, 3))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::cross_entropy((s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        bias: &Tensor,
        labels: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if logits.dim(D::Minus1)? > MAX_CLASSES {
            candle_core::bail!("cross-entropy: over {MAX_CLASSES} classes");
        }
        // Each row's loss gradient, logsumexp and label, on the device: nothing is read back.
        let labels = labels.to_dtype(DType::F32)?.unsqueeze(1)?;
        let terms = Tensor::cat(&[grad.narrow(1, 0, 1)?, res.narrow(1, 2, 1)?, labels], 1)?;
        let dx = cross_entropy_backward_kernel(logits, bias, &terms)?;
        let db = match self.bias_grad {
            true => Some(sum_rows(&dx)?),
            false => None,
        };
        Ok((Some(dx), db, None))
    }
}

/// d logits = (softmax(x + b) − onehot(label)) · dloss, row-wise; inputs (x, b, `[M, 3]` of each
/// row's dloss, logsumexp and label).
struct CrossEntropyRowsBackward;

impl CustomOp3 for CrossEntropyRowsBackward {
    fn name(&self) -> &'static str {
        "cross-entropy-rows-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b, dim) = logits_and_bias((s1, l1), (s2, l2), "cross-entropy bwd")?;
        let rows = x.len() / dim;
        let (terms, _) = f32_rows(s3, l3, "cross-entropy bwd")?;
        if terms.len() != 3 * rows {
            candle_core::bail!("cross-entropy bwd: {} terms for {rows} rows", terms.len());
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(dim)
            .zip(x.par_chunks(dim))
            .zip(terms.par_chunks(3))
            .for_each(|((o, x), terms)| {
                let (g, lse, t) = (terms[0], terms[1], terms[2] as usize);
                let z: Vec<f32> = x.iter().zip(b).map(|(&x, &b)| x + b).collect();
                vmath::exp_shifted_scaled(o, &z, lse, g);
                if t < dim {
                    o[t] -= g;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::cross_entropy_backward((s1, l1), (s2, l2), (s3, l3))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{max_abs_diff, var};
    use super::*;
    use candle_core::Device;

    /// The kernel equals candle-nn's cross-entropy (loss and gradient) and counts arg-max hits.
    #[test]
    fn kernel_matches_candle_nn_and_counts_hits() {
        let (m, v) = (7usize, 300usize);
        let x = var(&[m, v], 3.0, 21);
        let rows = x.as_tensor().to_vec2::<f32>().unwrap();
        // Labels: the arg-max for rows 0 and 3, something else elsewhere.
        let labels: Vec<u32> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let arg = (0..v).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap() as u32;
                if i == 0 || i == 3 {
                    arg
                } else {
                    (arg + 1 + i as u32) % v as u32
                }
            })
            .collect();
        let labels = Tensor::from_vec(labels, m, &Device::Cpu).unwrap();
        let (loss, correct) = cross_entropy_and_correct(x.as_tensor(), &labels).unwrap();
        let reference = candle_nn::loss::cross_entropy(x.as_tensor(), &labels).unwrap();
        let (a, b) = (
            loss.to_scalar::<f32>().unwrap(),
            reference.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-5 * b.abs(), "{a} vs {b}");
        assert_eq!(correct.to_scalar::<f32>().unwrap(), 2.0);
        let gf = loss.backward().unwrap();
        let gr = reference.backward().unwrap();
        let d = max_abs_diff(
            gf.get(x.as_tensor()).unwrap(),
            gr.get(x.as_tensor()).unwrap(),
        );
        assert!(d < 1e-6, "gradient max difference {d}");
    }

    /// Weighted: the kernel and the composed twin agree (sum and gradient), and both equal the
    /// hand sum Σ cᵢ·(logsumexp(xᵢ) − xᵢ[labelᵢ]) computed on the host.
    #[test]
    fn weighted_kernel_matches_the_composed_twin_and_a_hand_sum() {
        let (m, v) = (9usize, 257usize);
        let x = var(&[m, v], 2.0, 5);
        let labels: Vec<u32> = (0..m as u32).map(|i| (i * 37 + 3) % v as u32).collect();
        let c: Vec<f32> = (0..m).map(|i| 0.25 + i as f32 * 0.5).collect();
        let (dev, rows) = (&Device::Cpu, x.as_tensor().to_vec2::<f32>().unwrap());
        let hand: f64 = rows
            .iter()
            .zip(&labels)
            .zip(&c)
            .map(|((r, &t), &c)| {
                let max = r.iter().cloned().fold(f32::MIN, f32::max) as f64;
                let lse = max + r.iter().map(|&a| (a as f64 - max).exp()).sum::<f64>().ln();
                c as f64 * (lse - r[t as usize] as f64)
            })
            .sum();
        let labels = Tensor::from_vec(labels, m, dev).unwrap();
        let c = Tensor::from_vec(c, m, dev).unwrap();
        let mut results = Vec::new();
        for per_row in [per_row_kernel, per_row_composed] {
            let (rows, _) = per_row(x.as_tensor(), None, &labels).unwrap();
            let sum = (rows * &c).unwrap().sum_all().unwrap();
            let g = sum.backward().unwrap().get(x.as_tensor()).unwrap().clone();
            results.push((sum.to_scalar::<f32>().unwrap() as f64, g));
        }
        let (public, _) =
            weighted_cross_entropy_and_correct(x.as_tensor(), None, &labels, Some(&c)).unwrap();
        assert_eq!(public.to_scalar::<f32>().unwrap() as f64, results[0].0);
        for (sum, _) in &results {
            assert!((sum - hand).abs() < 1e-5 * hand, "{sum} vs {hand}");
        }
        let d = max_abs_diff(&results[0].1, &results[1].1);
        assert!(d < 1e-6, "gradient max difference {d}");
    }

    #[test]
    fn a_label_outside_the_classes_is_an_error() {
        let x = var(&[2, 5], 1.0, 1);
        let labels = Tensor::from_vec(vec![1u32, 5], 2, &Device::Cpu).unwrap();
        let err = cross_entropy_and_correct(x.as_tensor(), &labels).unwrap_err();
        assert!(
            err.to_string().contains("label 5 outside 5 classes"),
            "{err}"
        );
    }

    /// With the decoder's bias inside the kernel: the loss, the hits and both gradients equal
    /// the bias added first (the composed twin, and the kernel without a bias on the sum), and
    /// the bias gradient is the logits' gradient summed over rows.
    #[test]
    fn the_fused_bias_equals_adding_it_first() {
        let (m, v) = (70usize, 33usize);
        let x = var(&[m, v], 2.0, 61);
        let b = var(&[v], 1.5, 62);
        let labels: Vec<u32> = (0..m as u32).map(|i| (i * 13 + 5) % v as u32).collect();
        let labels = Tensor::from_vec(labels, m, &Device::Cpu).unwrap();
        let c = var(&[m], 1.0, 63).as_tensor().abs().unwrap();
        let run = |fused: bool, kernel: bool| {
            let (loss, correct) = match fused {
                true => {
                    weighted_cross_entropy_and_correct(x.as_tensor(), Some(&b), &labels, Some(&c))
                }
                false => {
                    let z = x.as_tensor().broadcast_add(&b).unwrap();
                    let per_row = if kernel {
                        per_row_kernel
                    } else {
                        per_row_composed
                    };
                    let (rows, correct) = per_row(&z, None, &labels).unwrap();
                    Ok(((rows * &c).unwrap().sum_all().unwrap(), correct))
                }
            }
            .unwrap();
            let g = loss.backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (
                loss.to_scalar::<f32>().unwrap(),
                correct.to_scalar::<f32>().unwrap(),
                flat(g.get(x.as_tensor()).unwrap()),
                flat(g.get(b.as_tensor()).unwrap()),
            )
        };
        let (fused, unfused, composed) = (run(true, true), run(false, true), run(false, false));
        // The kernel's arithmetic is the same on the sum: bit for bit (the bias gradient is a
        // column sum, whose order differs from the broadcast add's).
        let same = fused.0 == unfused.0 && fused.1 == unfused.1 && fused.2 == unfused.2;
        assert!(
            same,
            "loss {} vs {}, or d logits differ",
            fused.0, unfused.0
        );
        assert!((fused.0 - composed.0).abs() < 1e-5 * composed.0.abs());
        assert_eq!(fused.1, composed.1);
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-5);
        assert!(close(&fused.2, &composed.2), "d logits: fused vs composed");
        assert!(close(&fused.3, &composed.3), "d bias: fused vs composed");
        assert!(close(&fused.3, &unfused.3), "d bias: fused vs unfused");
        // d bias = Σ rows of d logits.
        let db: Vec<f32> = (0..v)
            .map(|j| (0..m).map(|r| fused.2[r * v + j]).sum())
            .collect();
        assert!(
            close(&db, &fused.3),
            "d bias is not the column sums of d logits"
        );
    }
}
