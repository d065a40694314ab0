//! `MpiWorld` (feature `mpi`): rsmpi on the system's MPI, collectives on host buffers.

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
        let Some((universe, _)) = mpi::initialize_with_threading(mpi::Threading::Funneled) else {
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
                let nccl = super::nccl::NcclWorld::init(self, gpu)?;
                return Ok(std::rc::Rc::new(nccl));
            }
        }
        let _ = device;
        Ok(self)
    }
}
