//! Cross-entropy summed over rows, each row weighted, with arg-max hits: the CPU kernel (loss,
//! hit and logsumexp per row in one pass; `softmax − onehot` back) and, as the composed twin,
//! log-softmax and a gather in candle ops.

use super::rows::{f32_rows, u32_values};
use super::{supports, supports_cuda, vmath};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// `Σᵢ cᵢ·CEᵢ` over the rows of logits `[M, V]` against u32 labels `[M]` (differentiable), with
/// `coefficients` `[M]` f32 (`None`: all 1, the plain sum), and how many rows' arg-max equals the
/// label (an f32 scalar on the logits' device: nothing is read back).
pub fn weighted_cross_entropy_and_correct(
    logits: &Tensor,
    labels: &Tensor,
    coefficients: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (device, dtype) = (logits.device(), logits.dtype());
    let (per_row, correct) =
        match supports(device, dtype) || supports_cuda("cross_entropy", device, dtype) {
            true => per_row_kernel(logits, labels)?,
            false => per_row_composed(logits, labels)?,
        };
    let sum = match coefficients {
        Some(c) => (per_row * c)?.sum_all()?,
        None => per_row.sum_all()?,
    };
    Ok((sum, correct))
}

/// Each row's cross-entropy `[M]` and the hits, by the kernel.
fn per_row_kernel(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    let rows = logits
        .contiguous()?
        .apply_op2(&labels.contiguous()?, CrossEntropyRows)?;
    // Detached: the count must not keep the forward graph (logits and all) alive.
    let correct = rows.narrow(1, 1, 1)?.sum_all()?.detach();
    Ok((rows.narrow(1, 0, 1)?.squeeze(1)?, correct))
}

/// The kernel's rows `[M, 3]` (loss, hit, logsumexp) on `logits`' device whatever [`supports`]
/// says (the CPU kernel, or the CUDA one with the `cuda` feature): what `trainer device-check`
/// compares across devices.
pub fn cross_entropy_kernel(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    logits
        .contiguous()?
        .apply_op2_no_bwd(&labels.contiguous()?, &CrossEntropyRows)
}

/// The kernel's backward: d logits from each row's loss gradient and logsumexp (`[M, 2]`).
pub fn cross_entropy_backward_kernel(
    logits: &Tensor,
    labels: &Tensor,
    grad_and_lse: &Tensor,
) -> Result<Tensor> {
    logits.contiguous()?.apply_op3_no_bwd(
        &labels.contiguous()?,
        &grad_and_lse.contiguous()?,
        &CrossEntropyRowsBackward,
    )
}

/// Each row's cross-entropy `[M]` and the hits, in candle ops (the composed twin).
fn per_row_composed(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let per_row = log_p
        .gather(&labels.unsqueeze(1)?.contiguous()?, 1)?
        .squeeze(1)?
        .neg()?;
    let correct = logits
        .argmax(D::Minus1)?
        .eq(labels)?
        .to_dtype(candle_core::DType::F32)?
        .sum_all()?
        .detach();
    Ok((per_row, correct))
}

/// The mean cross-entropy of logits `[M, V]` against labels `[M]` and the arg-max hits: the
/// unweighted sum over M.
pub fn cross_entropy_and_correct(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    let (sum, correct) = weighted_cross_entropy_and_correct(logits, labels, None)?;
    Ok(((sum / logits.dim(0)?.max(1) as f64)?, correct))
}

/// Cross-entropy per row of logits `[M, V]` against u32 labels `[M]`, in one pass: output `[M, 3]`
/// holding each row's loss (`logsumexp − x[label]`), 1.0 where the row's first arg-max is the
/// label (0.0 otherwise), so accuracy needs no second pass, and the row's logsumexp, which the
/// backward reuses. Only the loss column has a gradient.
struct CrossEntropyRows;

/// (loss, logsumexp, first arg-max) of one row.
fn ce_row(x: &[f32], label: usize) -> (f32, f32, usize) {
    let (max, lse) = vmath::max_and_logsumexp(x);
    let arg = x.iter().position(|&v| v == max).unwrap_or(0);
    (lse - x[label], lse, arg)
}

fn u32_labels<'a>(s: &'a CpuStorage, l: &Layout, rows: usize) -> Result<&'a [u32]> {
    let labels = u32_values(s, l, "cross-entropy labels")?;
    if labels.len() != rows {
        candle_core::bail!("cross-entropy: {} labels for {rows} rows", labels.len());
    }
    Ok(labels)
}

impl CustomOp2 for CrossEntropyRows {
    fn name(&self) -> &'static str {
        "cross-entropy-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dim) = f32_rows(s1, l1, "cross-entropy")?;
        let rows = x.len() / dim.max(1);
        let labels = u32_labels(s2, l2, rows)?;
        if let Some(&bad) = labels.iter().find(|&&t| t as usize >= dim) {
            candle_core::bail!("cross-entropy: label {bad} outside {dim} classes");
        }
        let mut out = vec![0f32; rows * 3];
        out.par_chunks_mut(3)
            .zip(x.par_chunks(dim))
            .zip(labels.par_iter())
            .for_each(|((o, x), &t)| {
                let (loss, lse, arg) = ce_row(x, t as usize);
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
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::cross_entropy((s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Each row's loss gradient beside its logsumexp, on the device: nothing is read back.
        let grad_and_lse = Tensor::cat(&[grad.narrow(1, 0, 1)?, res.narrow(1, 2, 1)?], 1)?;
        let g = cross_entropy_backward_kernel(logits, labels, &grad_and_lse)?;
        Ok((Some(g), None))
    }
}

/// d logits = (softmax(x) − onehot(label)) · dloss, row-wise; inputs (x, labels, `[M, 2]` of each
/// row's dloss and logsumexp).
struct CrossEntropyRowsBackward;

impl candle_core::CustomOp3 for CrossEntropyRowsBackward {
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
        let (x, dim) = f32_rows(s1, l1, "cross-entropy bwd")?;
        let rows = x.len() / dim.max(1);
        let labels = u32_labels(s2, l2, rows)?;
        let (gl, _) = f32_rows(s3, l3, "cross-entropy bwd")?;
        if gl.len() != 2 * rows {
            candle_core::bail!("cross-entropy bwd: {} values for {rows} rows", gl.len());
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(dim)
            .zip(x.par_chunks(dim))
            .zip(labels.par_iter().zip(gl.par_chunks(2)))
            .for_each(|((o, x), (&t, gl))| {
                let (g, lse) = (gl[0], gl[1]);
                vmath::exp_shifted_scaled(o, x, lse, g);
                o[t as usize] -= g;
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
            let (rows, _) = per_row(x.as_tensor(), &labels).unwrap();
            let sum = (rows * &c).unwrap().sum_all().unwrap();
            let g = sum.backward().unwrap().get(x.as_tensor()).unwrap().clone();
            results.push((sum.to_scalar::<f32>().unwrap() as f64, g));
        }
        let (public, _) =
            weighted_cross_entropy_and_correct(x.as_tensor(), &labels, Some(&c)).unwrap();
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
}
