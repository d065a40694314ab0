//! Data parallelism: the ranks of a job and the collectives the training loop needs.
//!
//! The job is launched by the cluster's own engine (`mpirun -np N trainer …`, Slurm's `srun
//! trainer …`); MPI says which rank this process is. [`Collective`] is what the loop asks of it:
//! gradients summed over ranks (one large buffer per bucket, not one call per tensor), a few f64
//! sums per step (loss, counts, the stop flag), and a parameter checksum compared across ranks.
//! [`SingleProcess`] is the one-rank implementation (every collective is the identity);
//! `MpiWorld` (feature `mpi`) the MPI one.

use anyhow::Result;
use candle_core::Tensor;
use std::rc::Rc;

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
}

/// Whether this process writes the run's files (rank 0).
pub fn is_writer(comm: &dyn Collective) -> bool {
    comm.rank() == 0
}

/// One process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn local_size(&self) -> usize {
        1
    }
    fn sum_tensors(&self, _tensors: &mut [Tensor]) -> Result<()> {
        Ok(())
    }
    fn sum_f64(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn min_max_u64(&self, value: u64) -> Result<(u64, u64)> {
        Ok((value, value))
    }
    fn abort(&self, _code: i32) {}
    fn describe(&self) -> String {
        "single process".into()
    }
}

/// The job this process belongs to: MPI's world when built with `mpi` (a process started without
/// a launcher is a world of one), else a single process.
pub fn init() -> Result<Rc<dyn Collective>> {
    #[cfg(feature = "mpi")]
    {
        Ok(Rc::new(mpi_world::MpiWorld::init()?))
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

#[cfg(feature = "mpi")]
mod mpi_world {
    use super::{buckets, Collective};
    use anyhow::{bail, Result};
    use candle_core::Tensor;
    use mpi::collective::SystemOperation;
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::*;

    /// MPI's world communicator (and the node-local one that gives the local rank).
    pub struct MpiWorld {
        // Dropped last: finalises MPI.
        _universe: mpi::environment::Universe,
        world: SimpleCommunicator,
        local_rank: usize,
        local_size: usize,
    }

    impl MpiWorld {
        /// Initialises MPI (once per process).
        pub fn init() -> Result<Self> {
            let Some((universe, _)) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            else {
                bail!("MPI was already initialised in this process");
            };
            let world = universe.world();
            let local = world.split_shared(world.rank());
            let (local_rank, local_size) = (local.rank() as usize, local.size() as usize);
            Ok(MpiWorld {
                _universe: universe,
                world,
                local_rank,
                local_size,
            })
        }
    }

    impl Collective for MpiWorld {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn world_size(&self) -> usize {
            self.world.size() as usize
        }
        fn local_rank(&self) -> usize {
            self.local_rank
        }
        fn local_size(&self) -> usize {
            self.local_size
        }

        fn sum_tensors(&self, tensors: &mut [Tensor]) -> Result<()> {
            if self.world.size() == 1 {
                return Ok(());
            }
            let sizes: Vec<usize> = tensors.iter().map(|t| t.elem_count()).collect();
            for range in buckets(&sizes) {
                let mut send = Vec::with_capacity(sizes[range.clone()].iter().sum());
                for t in &tensors[range.clone()] {
                    send.extend(t.flatten_all()?.to_vec1::<f32>()?);
                }
                let mut recv = vec![0f32; send.len()];
                self.world
                    .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
                let mut offset = 0;
                for t in &mut tensors[range] {
                    let n = t.elem_count();
                    let summed = recv[offset..offset + n].to_vec();
                    *t = Tensor::from_vec(summed, t.shape(), t.device())?;
                    offset += n;
                }
            }
            Ok(())
        }

        fn sum_f64(&self, values: &mut [f64]) -> Result<()> {
            if self.world.size() == 1 {
                return Ok(());
            }
            let send = values.to_vec();
            self.world
                .all_reduce_into(&send[..], values, SystemOperation::sum());
            Ok(())
        }

        fn min_max_u64(&self, value: u64) -> Result<(u64, u64)> {
            let (mut min, mut max) = (0u64, 0u64);
            self.world
                .all_reduce_into(&value, &mut min, SystemOperation::min());
            self.world
                .all_reduce_into(&value, &mut max, SystemOperation::max());
            Ok((min, max))
        }

        fn abort(&self, code: i32) {
            if self.world.size() > 1 {
                self.world.abort(code);
            }
        }

        fn describe(&self) -> String {
            format!(
                "MPI rank {} of {} (local rank {} of {})",
                self.world.rank(),
                self.world.size(),
                self.local_rank,
                self.local_size
            )
        }
    }
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
