//! Prefetching for shards in a bucket: the shards the next steps read are fetched in the
//! background while the current ones train (a no-op for local shards).

use super::{EpochOrder, MaskingSampler};
use std::sync::Arc;

/// Steps ahead whose shards are fetched in the background (remote shards).
const LOOKAHEAD_STEPS: u64 = 2;
/// Positions sampled per source to find the shards a window of steps reads (global order).
const LOOKAHEAD_ROWS: u64 = 16_384;

impl MaskingSampler {
    /// The cache the first remote source reads through (sources in one cache directory share it).
    pub fn shard_cache(&self) -> Option<Arc<crate::store::ShardCache>> {
        self.sources
            .iter()
            .find_map(|s| s.sequences.shards().cache().cloned())
    }

    /// Starts fetching, in the background, the remote shards that steps `step ..= step +
    /// LOOKAHEAD_STEPS` read (with the block order, also the block after them). A no-op for local
    /// shards.
    pub fn prefetch_from(&self, step: u64) {
        let p = self.at(step);
        if !std::ptr::eq(p, self) {
            return p.prefetch_from(step);
        }
        if !self
            .sources
            .iter()
            .any(|s| s.sequences.shards().is_remote())
        {
            return;
        }
        use std::sync::atomic::Ordering;
        if self.prefetched.swap(step + 1, Ordering::Relaxed) == step + 1 {
            return;
        }
        let from = self.rows_before(step);
        let to = self.rows_before(step + 1 + LOOKAHEAD_STEPS);
        for (i, s) in self.sources.iter().enumerate() {
            let set = s.sequences.shards();
            if !set.is_remote() || from[i] == to[i] {
                continue;
            }
            let fits = set
                .cache()
                .is_some_and(|c| c.config().max_bytes >= set.file_bytes());
            if s.blocks.is_none() && fits {
                // The global order reads everywhere: with room for the whole set, fetch it all
                // (the cache skips what it holds or has queued).
                set.prefetch(0..set.num_shards());
                continue;
            }
            let mut shards = self.shards_between(i, from[i], to[i]);
            let mut seen = std::collections::HashSet::new();
            shards.retain(|x| seen.insert(*x));
            set.prefetch(shards);
        }
    }

    /// The shards positions `from..to` of source `i`'s stream read (with the block order, the
    /// blocks they fall in and the next one; with the global order, a sample of them), with, for
    /// packed sequences, the shard after each.
    fn shards_between(&self, i: usize, from: u64, to: u64) -> Vec<usize> {
        let s = &self.sources[i];
        let n = s.sequences.len();
        let mut shards = Vec::new();
        let mut g = from;
        while g < to {
            let epoch = g / n;
            let end = to.min((epoch + 1) * n);
            let order = self.epoch_order(i, epoch);
            match &order {
                EpochOrder::Blocks(e) => shards.extend(e.shards_for(g % n, end - epoch * n)),
                EpochOrder::Global(_) => {
                    let stride = ((end - g) / LOOKAHEAD_ROWS).max(1);
                    for p in (g..end).step_by(stride as usize) {
                        shards.extend(s.sequences.shards_of(self.sequence_in(i, &order, p)));
                    }
                }
            }
            g = end;
        }
        if s.sequences.layout() != crate::sampler::Layout::Truncate {
            // A packed sequence may run into the next shard.
            let last = s.sequences.shards().num_shards();
            let next: Vec<usize> = shards
                .iter()
                .map(|&x| x + 1)
                .filter(|&x| x < last)
                .collect();
            shards.extend(next);
        }
        shards
    }
}
