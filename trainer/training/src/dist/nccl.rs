//! `NcclWorld` (feature `nccl`): NCCL all-reduce of CUDA gradients, its unique id broadcast over MPI.

use super::mpi::MpiWorld;
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

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
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
