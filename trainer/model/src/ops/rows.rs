//! Row helpers the CPU kernels share: the contiguous f32 rows of a tensor, and maps and sums over
//! blocks of rows on the rayon pool whose results do not depend on the thread count.

use candle_core::{CpuStorage, Layout, Result};
use rayon::prelude::*;

/// The contiguous f32 data of a CPU tensor and its last dimension.
pub(super) fn f32_rows<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<(&'a [f32], usize)> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{what}: f32 only")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: contiguous input only")
    };
    let dim = *l.dims().last().unwrap_or(&1);
    Ok((&data[a..b], dim))
}

/// The contiguous u32 data of a CPU tensor (ids, labels).
pub(super) fn u32_values<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [u32]> {
    let CpuStorage::U32(data) = s else {
        candle_core::bail!("{what}: u32 only")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: contiguous input only")
    };
    Ok(&data[a..b])
}

pub(super) const ROWS_PER_TASK: usize = 64;

/// Σ of per-block partial sums, added in block order: rayon's `reduce` combines in a tree shaped
/// by work stealing, which would make the float result vary from run to run.
pub(super) fn sum_in_order(partial: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    partial.iter().fold(vec![0f32; len], |mut acc, p| {
        acc.iter_mut().zip(p).for_each(|(a, &v)| *a += v);
        acc
    })
}

/// Applies `f(out_row, x_row)` to every row of length `dim`, rows split across the rayon pool.
pub(super) fn map_rows(x: &[f32], dim: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    map_rows_to(x, dim, dim, f)
}

/// As [`map_rows`], with input rows of `dim` and output rows of `out_dim` values.
pub(super) fn map_rows_to(
    x: &[f32],
    dim: usize,
    out_dim: usize,
    f: impl Fn(&mut [f32], &[f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; x.len() / dim * out_dim];
    out.par_chunks_mut(out_dim * ROWS_PER_TASK)
        .zip(x.par_chunks(dim * ROWS_PER_TASK))
        .for_each(|(o, x)| {
            for (o, x) in o.chunks_mut(out_dim).zip(x.chunks(dim)) {
                f(o, x);
            }
        });
    out
}

/// As [`map_rows`] over two inputs of the same shape: `f(out_row, a_row, b_row)`.
pub(super) fn map_rows2(
    a: &[f32],
    b: &[f32],
    dim: usize,
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync,
) -> Vec<f32> {
    map_rows2_to(a, b, [dim, dim, dim], f)
}

/// As [`map_rows2`] with rows of `dims` = `[a, b, out]` values (as many rows in each).
pub(super) fn map_rows2_to(
    a: &[f32],
    b: &[f32],
    dims: [usize; 3],
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync,
) -> Vec<f32> {
    let [a_dim, b_dim, out_dim] = dims;
    let mut out = vec![0f32; a.len() / a_dim * out_dim];
    out.par_chunks_mut(out_dim * ROWS_PER_TASK)
        .zip(a.par_chunks(a_dim * ROWS_PER_TASK))
        .zip(b.par_chunks(b_dim * ROWS_PER_TASK))
        .for_each(|((o, a), b)| {
            for ((o, a), b) in o
                .chunks_mut(out_dim)
                .zip(a.chunks(a_dim))
                .zip(b.chunks(b_dim))
            {
                f(o, a, b);
            }
        });
    out
}

/// Lanes of a CUDA warp: the CPU twins of the warp kernels sum lane by lane.
pub(super) const LANES: usize = 32;

/// The value every lane holds after a warp's xor-shuffle butterfly (16, 8, 4, 2, 1) of `op`
/// over the lanes' values `v`: how the CUDA kernels combine their lanes' partial results.
#[inline(always)]
pub(super) fn butterfly(mut v: [f32; LANES], op: impl Fn(f32, f32) -> f32) -> f32 {
    for off in [16, 8, 4, 2, 1] {
        let prev = v;
        for (l, x) in v.iter_mut().enumerate() {
            *x = op(prev[l], prev[l ^ off]);
        }
    }
    v[0]
}

/// Σ f(i, x[i]) as a warp sums it: lane l adds the terms i ≡ l (mod 32) in order from 0, then
/// the lanes combine by [`butterfly`].
#[inline(always)]
pub(super) fn warp_sum(x: &[f32], f: impl Fn(usize, f32) -> f32) -> f32 {
    let mut parts = [0f32; LANES];
    for (c, chunk) in x.chunks(LANES).enumerate() {
        for (l, (p, &v)) in parts.iter_mut().zip(chunk).enumerate() {
            *p += f(c * LANES + l, v);
        }
    }
    butterfly(parts, |a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The butterfly is the warp's: lane 0's value after xor-shuffles 16, 8, 4, 2, 1, which
    /// differs from a left-to-right sum for values that round differently; `warp_sum` feeds it
    /// lane l's terms l, l + 32, … in order.
    #[test]
    fn warp_sums_add_in_the_shuffles_order() {
        // ±0.1, ∓0.2, …: a left-to-right sum rounds to -1.6000001, the butterfly to -1.6000004.
        let v: [f32; LANES] =
            std::array::from_fn(|l| (l as f32 + 1.0) * 0.1 * if l % 2 == 0 { 1.0 } else { -1.0 });
        let mut want = v;
        for off in [16, 8, 4, 2, 1] {
            for l in 0..off {
                want[l] += want[l + off];
            }
        }
        assert_eq!(butterfly(v, |a, b| a + b).to_bits(), want[0].to_bits());
        let sequential = v.iter().sum::<f32>();
        assert_ne!(
            sequential.to_bits(),
            want[0].to_bits(),
            "the orders differ here"
        );
        let m = butterfly(std::array::from_fn(|l| (l as f32 * 7.0) % 11.0), f32::max);
        assert_eq!(m, 10.0);
        // 70 values: lanes 0-5 take three terms, the rest two.
        let x: Vec<f32> = (0..70).map(|i| 1.0 + i as f32 * 1e-3).collect();
        let mut parts = [0f32; LANES];
        for (i, &v) in x.iter().enumerate() {
            parts[i % LANES] += v * 2.0;
        }
        let want = butterfly(parts, |a, b| a + b);
        assert_eq!(warp_sum(&x, |_, v| v * 2.0).to_bits(), want.to_bits());
    }
}
