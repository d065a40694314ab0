//! Background batch building: a thread runs ahead of the trainer, building each micro-batch on
//! its own rayon pool and handing it over through a bounded channel.
//!
//! Batches are a pure function of (seed, step, slots), so the loader's thread count, prefetch
//! depth and start step change only timing, never content.

use super::batch::{Batch, BatchPlan, MaskingSampler};
use crate::error::{Error, Result};
use crossbeam_channel::{bounded, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Loader tuning: affects speed only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoaderConfig {
    /// Threads building batches (0 = all cores).
    pub threads: usize,
    /// Micro-batches built ahead of the consumer.
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            threads: 0,
            prefetch: 4,
        }
    }
}

/// One micro-batch as delivered to the trainer.
#[derive(Debug)]
pub struct MicroBatch {
    /// Index of the micro-batch within its step (0..accumulation_steps).
    pub micro: usize,
    /// The batch.
    pub batch: Batch,
}

/// Iterates over micro-batches of steps `start..end`, built ahead on a background thread; an error
/// (a corrupted shard) ends the iteration after it is yielded.
pub struct Loader {
    rx: Option<Receiver<Result<MicroBatch>>>,
    handle: Option<JoinHandle<()>>,
    waited: Duration,
}

impl Loader {
    /// Starts building at step `start`. `plan` is the ranks' split; each step's own plan is
    /// `plan.for_global_batch` of the step's batch size (phases may change it), so
    /// `plan.micro_batch` is the largest micro-batch.
    pub fn start(
        sampler: Arc<MaskingSampler>,
        plan: BatchPlan,
        start: u64,
        end: u64,
        cfg: LoaderConfig,
    ) -> Result<Self> {
        for phase in sampler.phases() {
            plan.for_global_batch(phase.global_batch).validate()?;
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .thread_name(|i| format!("maskrate-loader-{i}"))
            .build()
            .map_err(|e| Error::Config(format!("loader thread pool: {e}")))?;
        let (tx, rx) = bounded(cfg.prefetch.max(1));
        let handle = std::thread::Builder::new()
            .name("maskrate-loader".into())
            .spawn(move || {
                for step in start..end {
                    let plan = plan.for_global_batch(sampler.global_batch_at(step));
                    for micro in 0..plan.accumulation_steps() {
                        let item = pool
                            .install(|| sampler.batch(step, plan.slots(micro)))
                            .map(|batch| MicroBatch { micro, batch });
                        let failed = item.is_err();
                        if tx.send(item).is_err() || failed {
                            return; // consumer gone, or nothing more to build
                        }
                    }
                }
            })
            .map_err(|e| Error::Config(format!("loader thread: {e}")))?;
        Ok(Loader {
            rx: Some(rx),
            handle: Some(handle),
            waited: Duration::ZERO,
        })
    }

    /// Total time `next` spent waiting for data (the trainer's data stall).
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Iterator for Loader {
    type Item = Result<MicroBatch>;

    fn next(&mut self) -> Option<Result<MicroBatch>> {
        let t = Instant::now();
        let item = self.rx.as_ref()?.recv().ok();
        self.waited += t.elapsed();
        item
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        drop(self.rx.take()); // unblocks the builder's send
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
