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
