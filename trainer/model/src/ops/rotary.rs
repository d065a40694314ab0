//! Rotary position embeddings (RoFormer, in the "rotate half" layout of transformers' ModernBERT
//! and Llama) applied to the query and key blocks of fused `[B, L, 3H]` projections: the CPU
//! kernel (its backward is the inverse rotation, the same kernel with the sines negated) and the
//! composed twin.
//!
//! Within each head of `dh` columns, column `i < dh/2` and column `i + dh/2` form a pair rotated
//! by the angle `position · θ^(-2i/dh)`; the value block passes through unchanged.

use super::rows::f32_rows;
use super::tables;
use super::{bf16_twin, supports, supports_cuda};
use crate::transfer::upload;
use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The cosines and sines of one rotary setting at given token positions: `[T, dh/2]` each on the
/// device, one row per token (`T` = B·L, in the batch's row-major order).
#[derive(Clone)]
pub struct RotaryTables {
    cos: Tensor,
    sin: Tensor,
    half: usize,
}

/// `inv_freq = 1 / θ^(2i/dh)` in f32, as transformers computes it.
fn inverse_frequencies(head_dim: usize, theta: f64) -> Result<Vec<f32>> {
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        candle_core::bail!("rotary embeddings need an even head size, got {head_dim}");
    }
    Ok((0..head_dim / 2)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect())
}

/// cos and sin of `position · inv_freq` (rounded to f32, as transformers does) for each position.
fn host_tables(positions: impl Iterator<Item = u32>, inv_freq: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in positions {
        for &f in inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

impl RotaryTables {
    /// Tables for tokens at `positions` (one per token), heads of `head_dim` columns and base
    /// `theta`, built on the host and uploaded (tests and one-off use; the models use
    /// [`RotaryTables::at`]).
    pub fn new(positions: &[u32], head_dim: usize, theta: f64, device: &Device) -> Result<Self> {
        let inv_freq = inverse_frequencies(head_dim, theta)?;
        let half = inv_freq.len();
        let (cos, sin) = host_tables(positions.iter().copied(), &inv_freq);
        let t = positions.len();
        Ok(Self::of(
            upload(cos, (t, half), device)?,
            upload(sin, (t, half), device)?,
            half,
        ))
    }

    fn of(cos: Tensor, sin: Tensor, half: usize) -> Self {
        RotaryTables { cos, sin, half }
    }

    /// Tables for `rows` rows of `len` tokens at `positions` (`[B, L]` u32 on `device`; `None`:
    /// 0..L in every row), taken by device ops from the table of positions 0..L, which is built
    /// once per (head size, θ, L, device) and cached: nothing is built on the host per batch.
    pub fn at(
        positions: Option<&Tensor>,
        rows: usize,
        len: usize,
        head_dim: usize,
        theta: f64,
        device: &Device,
    ) -> Result<Self> {
        let inv_freq = inverse_frequencies(head_dim, theta)?;
        let half = inv_freq.len();
        let table = |which: &str, cosines: bool| {
            let name = format!("rotary-{which}-{head_dim}-{:x}-{len}", theta.to_bits());
            tables::cached(&name, device, || {
                let (cos, sin) = host_tables(0..len as u32, &inv_freq);
                upload(if cosines { cos } else { sin }, (len, half), device)
            })
        };
        let (cos, sin) = (table("cos", true)?, table("sin", false)?);
        let spread = |t: Tensor| -> Result<Tensor> {
            match positions {
                Some(p) => t.index_select(&p.flatten_all()?, 0),
                None => t
                    .unsqueeze(0)?
                    .broadcast_as((rows, len, half))?
                    .reshape((rows * len, half)),
            }
        };
        Ok(Self::of(spread(cos)?, spread(sin)?, half))
    }

    /// Tokens covered.
    pub fn tokens(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// Applies `op` to `qkv` with these tables (the kernel on the tensors' device).
    fn apply(&self, qkv: &Tensor, op: Rotary) -> Result<Tensor> {
        let (cos, sin) = (self.cos.contiguous()?, self.sin.contiguous()?);
        qkv.contiguous()?.apply_op3(&cos, &sin, op)
    }
}

/// Rotates the query and key blocks of `qkv` `[B, L, 3H]` (`heads` heads each) by `tables`
/// (B·L tokens, heads of H/heads columns). Returns a new `[B, L, 3H]` tensor.
pub fn rotary(qkv: &Tensor, heads: usize, tables: &RotaryTables) -> Result<Tensor> {
    check(qkv, heads, tables)?;
    if supports(qkv.device(), qkv.dtype()) || supports_cuda("rotary", qkv.device(), qkv.dtype()) {
        if let Some(y) = bf16_twin(&[qkv], |w| rotary(&w[0], heads, tables))? {
            return Ok(y);
        }
        return tables.apply(qkv, Rotary::new(heads));
    }
    rotary_composed(qkv, heads, tables)
}

/// This crate's rotary kernel on `qkv`'s device whatever [`supports`] says (the CPU kernel, or
/// the CUDA one with the `cuda` feature), or with `inverse` its backward (the inverse rotation of
/// a gradient): what `trainer device-check` compares across devices.
pub fn rotary_kernel(
    qkv: &Tensor,
    heads: usize,
    tables: &RotaryTables,
    inverse: bool,
) -> Result<Tensor> {
    check(qkv, heads, tables)?;
    let op = Rotary { heads, inverse };
    let (cos, sin) = (tables.cos.contiguous()?, tables.sin.contiguous()?);
    qkv.contiguous()?.apply_op3_no_bwd(&cos, &sin, &op)
}

fn check(qkv: &Tensor, heads: usize, tables: &RotaryTables) -> Result<()> {
    let (b, l, three_h) = qkv.dims3()?;
    if three_h % 3 != 0 || heads == 0 || (three_h / 3) % heads != 0 {
        candle_core::bail!("rotary: width {three_h} is not 3 × a multiple of {heads} heads");
    }
    if three_h / 3 / heads != 2 * tables.half || tables.tokens() != b * l {
        candle_core::bail!(
            "rotary: tables for {} tokens of head size {}, input [{b}, {l}, {three_h}] with {heads} heads",
            tables.tokens(),
            2 * tables.half
        );
    }
    Ok(())
}

/// [`rotary`] from tensor ops (any device).
pub fn rotary_composed(qkv: &Tensor, heads: usize, tables: &RotaryTables) -> Result<Tensor> {
    check(qkv, heads, tables)?;
    if qkv.dtype() != candle_core::DType::F32 {
        // In f32 with the f32 tables, as the kernels compute; the result in qkv's dtype.
        let wide = qkv.to_dtype(candle_core::DType::F32)?;
        return rotary_composed(&wide, heads, tables)?.to_dtype(qkv.dtype());
    }
    let (b, l, three_h) = qkv.dims3()?;
    let h = three_h / 3;
    let (dh, half) = (h / heads, tables.half);
    let (cos, sin) = (
        tables.cos.reshape((b, l, 1, half))?,
        tables.sin.reshape((b, l, 1, half))?,
    );
    let rotate = |block: usize| -> Result<Tensor> {
        let x = qkv.narrow(2, block * h, h)?.reshape((b, l, heads, dh))?;
        let (x1, x2) = (x.narrow(3, 0, half)?, x.narrow(3, half, half)?);
        let y1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let y2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
        Tensor::cat(&[y1, y2], 3)?.reshape((b, l, h))
    };
    Tensor::cat(&[rotate(0)?, rotate(1)?, qkv.narrow(2, 2 * h, h)?], 2)
}

/// The rotation of the query and key blocks (or, `inverse`, its transpose: the backward), with
/// the tables (`[T, dh/2]` cosines and sines) as its second and third inputs.
struct Rotary {
    heads: usize,
    inverse: bool,
}

impl Rotary {
    fn new(heads: usize) -> Self {
        Rotary {
            heads,
            inverse: false,
        }
    }
}

impl CustomOp3 for Rotary {
    fn name(&self) -> &'static str {
        "rotary"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        cos: &CpuStorage,
        lc: &Layout,
        sin: &CpuStorage,
        ls: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, width) = f32_rows(s, l, "rotary")?;
        let (cos, _) = f32_rows(cos, lc, "rotary tables")?;
        let (sin, _) = f32_rows(sin, ls, "rotary tables")?;
        let h = width / 3;
        let dh = h / self.heads;
        let half = dh / 2;
        let sign = if self.inverse { -1.0f32 } else { 1.0 };
        let mut out = x.to_vec();
        out.par_chunks_mut(width)
            .enumerate()
            .for_each(|(token, row)| {
                let cos = &cos[token * half..(token + 1) * half];
                let sin = &sin[token * half..(token + 1) * half];
                // The query and key blocks: 2·heads heads of dh columns.
                for head in row[..2 * h].chunks_mut(dh) {
                    let (x1, x2) = head.split_at_mut(half);
                    for i in 0..half {
                        let (a, b, c, s) = (x1[i], x2[i], cos[i], sign * sin[i]);
                        x1[i] = a * c - b * s;
                        x2[i] = b * c + a * s;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
        cos: &candle_core::CudaStorage,
        lc: &Layout,
        sin: &candle_core::CudaStorage,
        ls: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::rotary((s, l), (cos, lc), (sin, ls), self.heads, self.inverse)
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The rotation is orthogonal: its gradient is the inverse rotation of the incoming one.
        let back = Rotary {
            heads: self.heads,
            inverse: !self.inverse,
        };
        let dx = grad.contiguous()?.apply_op3_no_bwd(cos, sin, &back)?;
        Ok((Some(dx), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_finite_differences, assert_same_op, var};
    use super::*;

    /// The kernel equals the composed rotation, forward and backward, at positions that restart
    /// mid-row (packed documents).
    #[test]
    fn kernel_matches_composed_rotary() {
        let (b, l, heads, dh) = (2usize, 5usize, 3usize, 8usize);
        let qkv = var(&[b, l, 3 * heads * dh], 1.0, 3);
        let positions = [0, 1, 2, 0, 1, 7, 8, 9, 10, 11];
        let tables = RotaryTables::new(&positions, dh, 10_000.0, &Device::Cpu).unwrap();
        assert_same_op(
            || rotary(qkv.as_tensor(), heads, &tables).unwrap(),
            || rotary_composed(qkv.as_tensor(), heads, &tables).unwrap(),
            &[&qkv],
            1e-6,
        );
    }

    #[test]
    fn kernel_gradient_matches_finite_differences() {
        let tables = RotaryTables::new(&[0, 5, 1, 2], 4, 10_000.0, &Device::Cpu).unwrap();
        assert_finite_differences(&[2, 2, 3 * 2 * 4], 1.0, 4, |x| {
            rotary(x, 2, &tables).unwrap()
        });
    }

    /// Hand-computed: head size 4, θ = 100: inv_freq = [1, 0.1]; position 2 rotates the pair
    /// (x0, x2) by 2 rad and (x1, x3) by 0.2 rad; values pass through; position 0 is the identity.
    #[test]
    fn rotation_by_hand() {
        let row: Vec<f32> = (1..=12).map(|v| v as f32).collect(); // q 1..4, k 5..8, v 9..12
        let qkv = Tensor::from_vec([row.clone(), row].concat(), (1, 2, 12), &Device::Cpu).unwrap();
        let tables = RotaryTables::new(&[0, 2], 4, 100.0, &Device::Cpu).unwrap();
        let y = rotary(&qkv, 1, &tables).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(y[0][0], (1..=12).map(|v| v as f32).collect::<Vec<_>>());
        let rot = |a: f32, b: f32, t: f32| (a * t.cos() - b * t.sin(), b * t.cos() + a * t.sin());
        let (q0, q2) = rot(1.0, 3.0, 2.0);
        let (q1, q3) = rot(2.0, 4.0, 0.2);
        let (k0, k2) = rot(5.0, 7.0, 2.0);
        let (k1, k3) = rot(6.0, 8.0, 0.2);
        let want = [q0, q1, q2, q3, k0, k1, k2, k3, 9.0, 10.0, 11.0, 12.0];
        for (got, want) in y[0][1].iter().zip(want) {
            assert!((got - want).abs() < 1e-5, "{:?} vs {want:?}", y[0][1]);
        }
    }

    /// The rotation keeps each pair's norm, and the inverse undoes it.
    #[test]
    fn rotation_is_orthogonal() {
        let qkv = var(&[1, 6, 3 * 2 * 6], 1.0, 8);
        let tables =
            RotaryTables::new(&[3, 90, 4000, 1, 0, 65535], 6, 160_000.0, &Device::Cpu).unwrap();
        let y = rotary(qkv.as_tensor(), 2, &tables).unwrap();
        let z = rotary_kernel(&y, 2, &tables, true).unwrap();
        let d = super::super::testing::max_abs_diff(&z, qkv.as_tensor());
        assert!(d < 1e-5, "inverse rotation differs by {d}");
        let n = |t: &Tensor| {
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!((n(&y) - n(qkv.as_tensor())).abs() < 1e-3 * n(&y));
    }

    /// The cached tables taken by device ops equal the host-built ones bit for bit, in the
    /// default layout and at packed positions.
    #[test]
    fn cached_tables_equal_host_tables() {
        let dev = Device::Cpu;
        let (rows, len, dh, theta) = (2usize, 5usize, 8usize, 160_000.0);
        let packed = [0u32, 1, 2, 0, 1, 0, 1, 2, 3, 4];
        let default: Vec<u32> = (0..rows * len).map(|t| (t % len) as u32).collect();
        let p = Tensor::from_slice(&packed, (rows, len), &dev).unwrap();
        for (positions, host) in [(None, &default[..]), (Some(&p), &packed[..])] {
            let cached = RotaryTables::at(positions, rows, len, dh, theta, &dev).unwrap();
            let built = RotaryTables::new(host, dh, theta, &dev).unwrap();
            let host = |t: &RotaryTables| {
                let v = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (v(&t.cos), v(&t.sin))
            };
            assert_eq!(host(&cached), host(&built));
        }
    }
}
