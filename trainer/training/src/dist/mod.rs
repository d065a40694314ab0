//! Data parallelism: the ranks of a job and the collectives the training loop needs.
//!
//! The job is launched by the cluster's own engine (`mpirun -np N trainer …`, Slurm's `srun
//! trainer …`); MPI says which rank this process is. [`Collective`] is what the loop asks of it:
//! gradients summed over ranks (one large buffer per bucket, not one call per tensor), a few f64
//! sums per step (loss, counts, the stop flag), and a parameter checksum compared across ranks.
//! [`SingleProcess`] is the one-rank implementation (every collective is the identity);
//! `MpiWorld` (feature `mpi`) the MPI one, on host buffers; `NcclWorld` (feature `nccl`) sums CUDA
//! gradients with NCCL, its unique id made by rank 0 and broadcast over MPI.
//!
//! One file per backend: [`single`], `mpi` and `nccl`.

use anyhow::Result;
use candle_core::Tensor;
use std::rc::Rc;

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
mod single;

pub use single::SingleProcess;

/// The collectives of a data-parallel job.
pub trait Collective {
    /// This process's rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// This process's rank among the ranks on its node (picks the GPU).
    fn local_rank(&self) -> usize;
    /// Number of ranks on this node.
    fn local_size(&self) -> usize;
    /// Replaces each tensor by its element-wise sum over ranks.
    fn sum_tensors(&self, tensors: &mut [Tensor]) -> Result<()>;
    /// Replaces each value by its sum over ranks.
    fn sum_f64(&self, values: &mut [f64]) -> Result<()>;
    /// The smallest and largest of `value` over ranks.
    fn min_max_u64(&self, value: u64) -> Result<(u64, u64)>;
    /// Stops every rank of the job (after an error on this one, so that no rank waits forever in
    /// a collective). Returns only in a single process.
    fn abort(&self, code: i32);
    /// How the job was launched, for logs and `config.json`.
    fn describe(&self) -> String;
    /// The collectives to use once the model's device is known: with feature `nccl`, an MPI job
    /// on CUDA devices sums gradients with NCCL on the GPUs (MPI keeps the small host sums).
    fn for_device(self: Rc<Self>, device: &candle_core::Device) -> Result<Rc<dyn Collective>>;
}

/// Whether this process writes the run's files (rank 0).
pub fn is_writer(comm: &dyn Collective) -> bool {
    comm.rank() == 0
}

/// The job this process belongs to: MPI's world when built with `mpi` (a process started without
/// a launcher is a world of one), else a single process.
pub fn init() -> Result<Rc<dyn Collective>> {
    #[cfg(feature = "mpi")]
    {
        Ok(Rc::new(self::mpi::MpiWorld::init()?))
    }
    #[cfg(not(feature = "mpi"))]
    {
        Ok(Rc::new(SingleProcess))
    }
}

/// Elements per all-reduce call: gradients are packed into buckets of at most this many f32
/// (64 MiB), so BERT-base's 110M gradients take two calls instead of 200.
pub const BUCKET_ELEMENTS: usize = 16 << 20;

/// Groups consecutive tensors into buckets of at most [`BUCKET_ELEMENTS`] (a larger tensor is a
/// bucket of its own). Returns index ranges into `sizes`.
pub fn buckets(sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut filled) = (0, 0);
    for (i, &n) in sizes.iter().enumerate() {
        if filled > 0 && filled + n > BUCKET_ELEMENTS {
            out.push(start..i);
            (start, filled) = (i, 0);
        }
        filled += n;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// Sums `tensors` over ranks bucket by bucket: each bucket's tensors are flattened into one
/// vector, `sum_flat` returns that vector summed over ranks, and the sum is split back into
/// tensors of the original shapes.
#[cfg(feature = "mpi")]
fn sum_in_buckets(
    tensors: &mut [Tensor],
    sum_flat: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<()> {
    let sizes: Vec<usize> = tensors.iter().map(|t| t.elem_count()).collect();
    for range in buckets(&sizes) {
        let flat: Vec<Tensor> = tensors[range.clone()]
            .iter()
            .map(|t| t.flatten_all())
            .collect::<candle_core::Result<_>>()?;
        let summed = sum_flat(&Tensor::cat(&flat, 0)?)?;
        let mut offset = 0;
        for t in &mut tensors[range] {
            let n = t.elem_count();
            *t = summed.narrow(0, offset, n)?.reshape(t.shape())?;
            offset += n;
        }
    }
    Ok(())
}

/// A checksum of `tensors`' exact values (f32 bits, in order): ranks whose parameters differ in
/// any bit give different sums.
pub fn checksum(tensors: &[Tensor]) -> Result<u64> {
    use rayon::prelude::*;
    let mut h = 0u64;
    for t in tensors {
        let v = t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        let parts: Vec<u64> = v
            .par_chunks(1 << 16)
            .map(|c| {
                c.iter()
                    .fold(0u64, |h, x| shared::seed::mix64(h ^ x.to_bits() as u64))
            })
            .collect();
        h = parts.iter().fold(h, |h, &p| shared::seed::mix64(h ^ p));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_tensor_once_within_the_limit() {
        let b = BUCKET_ELEMENTS;
        let sizes = [3, b - 3, 1, b + 5, 2, 2];
        assert_eq!(buckets(&sizes), vec![0..2, 2..3, 3..4, 4..6]);
        assert_eq!(buckets(&[]), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(buckets(&[1, 2, 3]), vec![0..3]);
    }

    #[test]
    fn checksum_sees_a_single_bit() {
        let dev = candle_core::Device::Cpu;
        let a = vec![Tensor::new(&[1f32, 2.0, 3.0], &dev).unwrap()];
        let b = vec![Tensor::new(&[1f32, 2.0, f32::from_bits(3f32.to_bits() ^ 1)], &dev).unwrap()];
        assert_eq!(checksum(&a).unwrap(), checksum(&a).unwrap());
        assert_ne!(checksum(&a).unwrap(), checksum(&b).unwrap());
    }
}
