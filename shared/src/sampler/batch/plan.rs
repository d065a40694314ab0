//! How a step's global batch splits over data-parallel ranks and accumulation micro-batches.

use crate::error::{Error, Result};
use std::ops::Range;

/// How one step's global batch is split over data-parallel ranks and accumulation micro-batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchPlan {
    /// Sequences per optimizer step over all ranks.
    pub global_batch: usize,
    /// Number of data-parallel ranks.
    pub world_size: usize,
    /// This rank.
    pub rank: usize,
    /// Sequences per forward/backward pass.
    pub micro_batch: usize,
}

impl BatchPlan {
    /// Rank `rank` of `world_size` taking its share of the global batch in one micro-batch (what
    /// a caller that does its own accumulation, such as the Python package, asks for).
    pub fn whole_rank(global_batch: usize, world_size: usize, rank: usize) -> Self {
        BatchPlan {
            global_batch,
            world_size,
            rank,
            micro_batch: global_batch / world_size.max(1),
        }
    }

    /// The plan of a step of `global_batch` sequences (a phase's batch size): the same ranks, and
    /// micro-batches of this plan's `micro_batch`, or of the rank's share when that is smaller.
    pub fn for_global_batch(&self, global_batch: usize) -> BatchPlan {
        BatchPlan {
            global_batch,
            micro_batch: self.micro_batch.min(global_batch / self.world_size.max(1)),
            ..*self
        }
    }

    /// Checks that the global batch splits evenly.
    pub fn validate(&self) -> Result<()> {
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(Error::Config(format!(
                "rank {} of world size {}",
                self.rank, self.world_size
            )));
        }
        if self.micro_batch == 0
            || !self
                .global_batch
                .is_multiple_of(self.world_size * self.micro_batch)
        {
            return Err(Error::Config(format!(
                "global batch {} is not a multiple of world size {} x micro-batch {}",
                self.global_batch, self.world_size, self.micro_batch
            )));
        }
        Ok(())
    }

    /// Micro-batches per rank per step (gradient-accumulation steps).
    pub fn accumulation_steps(&self) -> usize {
        self.global_batch / (self.world_size * self.micro_batch)
    }

    /// Global-batch slots of this rank: the union of its micro-batches, in order.
    pub fn rank_slots(&self) -> Range<usize> {
        let per_rank = self.global_batch / self.world_size;
        self.rank * per_rank..(self.rank + 1) * per_rank
    }

    /// Global-batch slots of this rank's micro-batch `m`.
    pub fn slots(&self, m: usize) -> Range<usize> {
        let start = self.rank * (self.global_batch / self.world_size) + m * self.micro_batch;
        start..start + self.micro_batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 64 sequences over 4 ranks in micro-batches of 8: each rank owns 16 consecutive slots,
    /// split in two micro-batches (hand-computed).
    #[test]
    fn ranks_and_micro_batches_partition_the_global_batch() {
        let plan = BatchPlan {
            global_batch: 64,
            world_size: 4,
            rank: 2,
            micro_batch: 8,
        };
        plan.validate().unwrap();
        assert_eq!(plan.accumulation_steps(), 2);
        assert_eq!(plan.rank_slots(), 32..48);
        assert_eq!((plan.slots(0), plan.slots(1)), (32..40, 40..48));
        // A phase of 16 sequences: the rank's share (4) caps the micro-batch.
        let small = plan.for_global_batch(16);
        assert_eq!((small.micro_batch, small.slots(0)), (4, 8..12));
        assert_eq!(BatchPlan::whole_rank(64, 4, 1).slots(0), 16..32);
    }

    #[test]
    fn uneven_splits_and_bad_ranks_are_refused() {
        let bad = |global_batch, world_size, rank, micro_batch| {
            let plan = BatchPlan {
                global_batch,
                world_size,
                rank,
                micro_batch,
            };
            plan.validate().unwrap_err().to_string()
        };
        assert!(bad(64, 3, 0, 8).contains("not a multiple of world size 3 x micro-batch 8"));
        assert!(bad(64, 4, 0, 0).contains("micro-batch 0"));
        assert!(bad(64, 4, 4, 8).contains("rank 4 of world size 4"));
        assert!(bad(64, 0, 0, 8).contains("world size 0"));
    }
}
