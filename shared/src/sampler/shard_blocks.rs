//! The `--order` flag: how an epoch visits a source's sequences.
//!
//! - `global` (the default): one keyed permutation of all sequences per epoch ([`Permutation`]).
//!   Every step reads from all over the shard set: ideal on local disks, and with object storage
//!   as long as the cache holds the whole set.
//! - `shard-blocks:K`: each epoch permutes the shards, cuts the permuted list into blocks of K
//!   shards, and visits the blocks in turn, each block's sequences in a keyed permutation of their
//!   own. A window of steps then reads from K shards (the next block can be fetched meanwhile),
//!   so a bucket's shards are fetched whole, once per epoch, into a cache of a few blocks. This is
//!   MosaicML streaming's shuffle-block idea as a pure function of (seed, epoch, position): any
//!   world size, O(1) resume.
//!
//! Either order is chosen by the flag, never by where the shards are: a bucket and a local copy
//! give the same batches with the same flags.

use super::order::Permutation;
use super::Sequences;
use crate::error::{Error, Result};
use crate::seed::seed_of;

/// How each epoch orders a source's sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// One permutation of all sequences per epoch.
    #[default]
    Global,
    /// Blocks of this many shards in a shuffled shard order, sequences shuffled within a block.
    ShardBlocks(u32),
}

impl std::str::FromStr for Order {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Config(format!(
                "order {s:?}: expected global or shard-blocks:K (K shards per block, K >= 1)"
            ))
        };
        match s {
            "global" => Ok(Order::Global),
            _ => {
                let k = s.strip_prefix("shard-blocks:").ok_or_else(bad)?;
                let k: u32 = k.parse().map_err(|_| bad())?;
                if k == 0 {
                    return Err(bad());
                }
                Ok(Order::ShardBlocks(k))
            }
        }
    }
}

impl std::fmt::Display for Order {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Order::Global => write!(f, "global"),
            Order::ShardBlocks(k) => write!(f, "shard-blocks:{k}"),
        }
    }
}

impl serde::Serialize for Order {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Order {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A source's shards as units of the block order: the sequences each shard starts.
#[derive(Debug)]
pub(crate) struct ShardBlocks {
    /// `starts[s]..starts[s + 1]`: the sequences (of the view) that begin in shard `s`.
    starts: Vec<u64>,
    k: usize,
}

impl ShardBlocks {
    pub(crate) fn new(sequences: &Sequences, k: u32) -> ShardBlocks {
        ShardBlocks {
            starts: sequences.shard_starts(),
            k: k as usize,
        }
    }

    fn shards(&self) -> usize {
        self.starts.len() - 1
    }

    /// The order of the epoch keyed `key`: O(shards) to build, O(log shards) per position.
    pub(crate) fn epoch(&self, key: u64) -> BlockEpoch {
        let n = self.shards();
        let perm = Permutation::new(n as u64, seed_of(&[key, 0]));
        let shards: Vec<u32> = (0..n as u64).map(|i| perm.apply(i) as u32).collect();
        let mut cum = Vec::with_capacity(n + 1);
        cum.push(0u64);
        for &s in &shards {
            let s = s as usize;
            cum.push(cum.last().expect("non-empty") + self.starts[s + 1] - self.starts[s]);
        }
        BlockEpoch {
            key,
            k: self.k,
            shards,
            cum,
        }
    }

    /// The first sequence of shard `s`.
    fn start(&self, s: u32) -> u64 {
        self.starts[s as usize]
    }
}

/// One epoch of the block order.
#[derive(Debug)]
pub(crate) struct BlockEpoch {
    key: u64,
    k: usize,
    /// The shards in this epoch's order.
    shards: Vec<u32>,
    /// `cum[j]`: sequences in `shards[..j]`.
    cum: Vec<u64>,
}

impl BlockEpoch {
    /// Index into `shards` of the shard holding position `p` of the epoch's concatenation.
    fn unit_at(&self, p: u64) -> usize {
        self.cum.partition_point(|&c| c <= p) - 1
    }

    /// Positions `lo..hi` of block `b`.
    fn block_span(&self, b: usize) -> (u64, u64) {
        let end = ((b + 1) * self.k).min(self.shards.len());
        (self.cum[b * self.k], self.cum[end])
    }

    /// The sequence at position `g` of the epoch.
    pub(crate) fn apply(&self, blocks: &ShardBlocks, g: u64) -> u64 {
        let b = self.unit_at(g) / self.k;
        let (lo, hi) = self.block_span(b);
        let within = Permutation::new(hi - lo, seed_of(&[self.key, 1, b as u64])).apply(g - lo);
        let p = lo + within;
        let j = self.unit_at(p);
        blocks.start(self.shards[j]) + (p - self.cum[j])
    }

    /// The shards of the blocks that positions `from..to` (of this epoch) fall in, and of the block
    /// after them: what a window of steps reads, plus what to fetch next.
    pub(crate) fn shards_for(&self, from: u64, to: u64) -> Vec<usize> {
        let total = *self.cum.last().expect("non-empty");
        if from >= total {
            return Vec::new();
        }
        let first = self.unit_at(from) / self.k;
        let last = self.unit_at(to.min(total).saturating_sub(1).max(from)) / self.k;
        let blocks = self.shards.len().div_ceil(self.k);
        let last = (last + 1).min(blocks - 1);
        let end = ((last + 1) * self.k).min(self.shards.len());
        self.shards[first * self.k..end]
            .iter()
            .map(|&s| s as usize)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(counts: &[u64], k: usize) -> ShardBlocks {
        let mut starts = vec![0];
        for c in counts {
            starts.push(starts.last().unwrap() + c);
        }
        ShardBlocks { starts, k }
    }

    #[test]
    fn orders_parse_and_print() {
        assert_eq!("global".parse::<Order>().unwrap(), Order::Global);
        assert_eq!(
            "shard-blocks:4".parse::<Order>().unwrap(),
            Order::ShardBlocks(4)
        );
        assert_eq!(Order::ShardBlocks(16).to_string(), "shard-blocks:16");
        for bad in ["shard-blocks:0", "shard-blocks:", "blocks:4", "random"] {
            assert!(bad.parse::<Order>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_epoch_is_a_permutation_visiting_blocks_in_turn() {
        // Shards of uneven sizes, empty ones included, blocks of 3.
        let counts = [5u64, 0, 7, 1, 9, 3, 0, 4, 6, 2];
        let b = blocks(&counts, 3);
        let total: u64 = counts.iter().sum();
        let shard_of = |seq: u64| b.starts.partition_point(|&s| s <= seq) - 1;
        for key in 0..20 {
            let e = b.epoch(key);
            let seqs: Vec<u64> = (0..total).map(|g| e.apply(&b, g)).collect();
            let mut sorted = seqs.clone();
            sorted.sort();
            assert_eq!(
                sorted,
                (0..total).collect::<Vec<_>>(),
                "key {key}: not a permutation"
            );
            // Consecutive positions stay within one block until it is used up.
            let block_of_shard: Vec<usize> = {
                let mut v = vec![0; counts.len()];
                for (j, &s) in e.shards.iter().enumerate() {
                    v[s as usize] = j / 3;
                }
                v
            };
            let visited: Vec<usize> = seqs.iter().map(|&q| block_of_shard[shard_of(q)]).collect();
            assert!(
                visited.windows(2).all(|w| w[0] <= w[1]),
                "key {key}: blocks interleave"
            );
            // The window's shards include every shard its positions read.
            for g in 0..total {
                let need = e.shards_for(g, g + 1);
                assert!(need.contains(&shard_of(seqs[g as usize])));
            }
        }
        // Different epochs, different orders.
        let a: Vec<u64> = (0..total).map(|g| b.epoch(1).apply(&b, g)).collect();
        let c: Vec<u64> = (0..total).map(|g| b.epoch(2).apply(&b, g)).collect();
        assert_ne!(a, c);
    }
}
