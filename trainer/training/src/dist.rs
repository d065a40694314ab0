//! Data parallelism: the ranks of a job and the collectives the training loop needs.
//!
//! The job is launched by the cluster's own engine (`mpirun -np N trainer …`, Slurm's `srun
//! trainer …`); MPI says which rank this process is. [`Collective`] is what the loop asks of it:
//! gradients summed over ranks (one large buffer per bucket, not one call per tensor), a few f64
//! sums per step (loss, counts, the stop flag), and a parameter checksum compared across ranks.
//! [`SingleProcess`] is the one-rank implementation (every collective is the identity);
//! `MpiWorld` (feature `mpi`) the MPI one, on host buffers; `NcclWorld` (feature `nccl`) sums CUDA
//! gradients with NCCL, its unique id made by rank 0 and broadcast over MPI.

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
    /// The collectives to use once the model's device is known: with feature `nccl`, an MPI job
    /// on CUDA devices sums gradients with NCCL on the GPUs (MPI keeps the small host sums).
    fn for_device(self: Rc<Self>, device: &candle_core::Device) -> Result<Rc<dyn Collective>>;
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
    fn for_device(self: Rc<Self>, _: &candle_core::Device) -> Result<Rc<dyn Collective>> {
        Ok(self)
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

#[cfg(feature = "mpi")]
mod mpi_world {
    use super::{sum_in_buckets, Collective};
    use anyhow::{bail, Result};
    use candle_core::Tensor;
    use mpi::collective::SystemOperation;
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::*;

    /// MPI's world communicator (and the node-local one that gives the local rank).
    pub struct MpiWorld {
        pub(super) world: SimpleCommunicator,
        local_rank: usize,
        local_size: usize,
        // Dropped last: finalises MPI.
        _universe: mpi::environment::Universe,
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
            // Through host buffers: MPI sums what it can address (CUDA tensors are copied).
            sum_in_buckets(tensors, |flat| {
                let send = flat.to_vec1::<f32>()?;
                let mut recv = vec![0f32; send.len()];
                self.world
                    .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
                Ok(Tensor::from_vec(recv, send.len(), flat.device())?)
            })
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

        fn for_device(
            self: std::rc::Rc<Self>,
            device: &candle_core::Device,
        ) -> Result<std::rc::Rc<dyn Collective>> {
            #[cfg(feature = "nccl")]
            if let candle_core::Device::Cuda(gpu) = device {
                if self.world.size() > 1 {
                    let nccl = super::nccl_world::NcclWorld::init(self, gpu)?;
                    return Ok(std::rc::Rc::new(nccl));
                }
            }
            let _ = device;
            Ok(self)
        }
    }
}

#[cfg(feature = "nccl")]
mod nccl_world {
    use super::mpi_world::MpiWorld;
    use super::{sum_in_buckets, Collective};
    use anyhow::Result;
    use candle_core::backend::BackendStorage;
    use candle_core::{CudaDevice, CudaStorage, CustomOp1, Layout, Shape, Tensor};
    use cudarc::nccl::safe::{Comm, Id, ReduceOp};
    use mpi::traits::*;
    use std::rc::Rc;

    /// NCCL on this rank's GPU for gradients; MPI for everything else.
    pub struct NcclWorld {
        mpi: Rc<MpiWorld>,
        comm: Rc<Comm>,
    }

    impl NcclWorld {
        /// Joins the NCCL communicator of the job on `gpu`: rank 0 makes the unique id, MPI
        /// broadcasts it.
        pub fn init(mpi: Rc<MpiWorld>, gpu: &CudaDevice) -> Result<Self> {
            let mut raw = [0 as std::ffi::c_char; 128];
            if mpi.rank() == 0 {
                let id = Id::new().map_err(|e| anyhow::anyhow!("NCCL unique id: {e:?}"))?;
                raw = *id.internal();
            }
            mpi.world.process_at_rank(0).broadcast_into(&mut raw[..]);
            let comm = Comm::from_rank(
                gpu.cuda_stream(),
                mpi.rank(),
                mpi.world_size(),
                Id::uninit(raw),
            )
            .map_err(|e| anyhow::anyhow!("NCCL communicator (rank {}): {e:?}", mpi.rank()))?;
            Ok(NcclWorld {
                mpi,
                comm: Rc::new(comm),
            })
        }
    }

    /// Sums a contiguous f32 CUDA tensor over the job's GPUs (out of place).
    struct AllReduceSum(Rc<Comm>);

    // SAFETY: the op runs synchronously on the thread that owns the communicator (candle applies
    // custom ops on the calling thread); it is never shared or sent elsewhere.
    unsafe impl Send for AllReduceSum {}
    // SAFETY: as above.
    unsafe impl Sync for AllReduceSum {}

    impl CustomOp1 for AllReduceSum {
        fn name(&self) -> &'static str {
            "nccl-all-reduce-sum"
        }

        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
            candle_core::bail!("nccl-all-reduce-sum: CUDA tensors only")
        }

        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let Some((start, end)) = l.contiguous_offsets() else {
                candle_core::bail!("nccl-all-reduce-sum: contiguous input only")
            };
            let device = s.device().clone();
            let src = s.as_cuda_slice::<f32>()?.slice(start..end);
            // SAFETY: every element is written by the all-reduce before it is read.
            let mut dst = unsafe { device.alloc::<f32>(end - start) }?;
            self.0
                .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
            Ok((CudaStorage::wrap_cuda_slice(dst, device), l.shape().clone()))
        }
    }

    impl Collective for NcclWorld {
        fn rank(&self) -> usize {
            self.mpi.rank()
        }
        fn world_size(&self) -> usize {
            self.mpi.world_size()
        }
        fn local_rank(&self) -> usize {
            self.mpi.local_rank()
        }
        fn local_size(&self) -> usize {
            self.mpi.local_size()
        }

        fn sum_tensors(&self, tensors: &mut [Tensor]) -> Result<()> {
            sum_in_buckets(tensors, |flat| {
                Ok(flat.apply_op1_no_bwd(&AllReduceSum(self.comm.clone()))?)
            })
        }

        fn sum_f64(&self, values: &mut [f64]) -> Result<()> {
            self.mpi.sum_f64(values)
        }
        fn min_max_u64(&self, value: u64) -> Result<(u64, u64)> {
            self.mpi.min_max_u64(value)
        }
        fn abort(&self, code: i32) {
            self.mpi.abort(code)
        }
        fn describe(&self) -> String {
            format!("{}, NCCL all-reduce", self.mpi.describe())
        }
        fn for_device(self: Rc<Self>, _: &candle_core::Device) -> Result<Rc<dyn Collective>> {
            Ok(self)
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
