//! `trainer --shards DIR --schedule SPEC --out runs/NAME`: the pretraining loop.
//!
//! [`pretrain`] reads as the algorithm: set up (device, data, model, optimizer, run files) →
//! maybe resume → loop { [`Run::step`] (micro-batches → reduce → clip + AdamW at the scheduled
//! lr) → [`Run::log`] → maybe [`Run::evaluate`] → maybe [`Run::check_replicas`] → maybe
//! [`Run::checkpoint`] } → summary. One file per part:
//!
//! - [`args`]: `TrainArgs`, the flags; [`identity`]: which of them a resume may change.
//! - [`setup`]: device, lock, data and model, and the run files written before the first step.
//! - [`resume`]: continuing from the run directory's latest checkpoint.
//! - [`run`]: `Run`, the state the loop carries, and one method per part of an iteration.

mod args;
mod identity;
mod resume;
mod run;
mod setup;

pub use args::TrainArgs;
pub use identity::{DataIdentity, ResumeFree, RunIdentity};
pub use run::Run;
pub use setup::open_data;

use crate::dist::Collective;
use crate::held_out::Score;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Final numbers of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Steps completed.
    pub steps: u64,
    /// Mean loss of the last logged step.
    pub final_train_loss: f64,
    /// Last held-out evaluation (loss, accuracy).
    pub final_eval: Option<(f64, f64)>,
    /// Wall time of this invocation.
    pub seconds: f64,
    /// Non-padding tokens per second over this invocation.
    pub tokens_per_sec: f64,
    /// Share of wall time spent waiting for data.
    pub data_wait_share: f64,
    /// With ELBO draws: the last held-out ELBO (nats per token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_elbo: Option<f64>,
    /// With a mixture: each source's last held-out (loss, accuracy).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub final_eval_by_source: BTreeMap<String, Score>,
    /// With a mixture: epochs of each source read by the end of the run (a source read 2.5
    /// times over repeats with a fresh permutation each epoch).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source_epochs: BTreeMap<String, f64>,
    /// With shards in a bucket: this process's use of the shard cache (downloads, bytes, hits,
    /// reads that waited for the network, evictions, peak size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_cache: Option<shared::store::CacheStats>,
    /// With `--profile`: mean phase times and the transfers of a steady step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::profile::ProfileSummary>,
}

/// Trains as configured, as one rank of `comm`'s job (every rank runs this with the same
/// arguments; rank 0 writes the run's files). `interrupted` is set by Ctrl-C or SIGTERM on any
/// rank: all ranks stop after the same step, a checkpoint is saved, then it returns.
pub fn pretrain(
    args: &TrainArgs,
    interrupted: Arc<AtomicBool>,
    comm: Rc<dyn Collective>,
) -> Result<Summary> {
    let out = args.out.clone().context("--out RUN_DIR is required")?;
    let env = setup::Environment::new(args, &out, comm)?;
    let data = setup::open_data(args, args.runtime.quiet || !env.writer)?;
    let mut model = setup::Model::new(args, &data, &env)?;
    let start = resume::resume_point(args, &out, &data, &mut model, env.writer)?;
    let mut run = Run::start(args, out, env, data, model, start)?;
    let mut step = start;
    while step < args.steps() {
        let result = run.step(step, &interrupted)?;
        run.log(step, &result)?;
        step += 1;
        if run.evaluation_due(step) {
            run.evaluate(step)?;
        }
        if run.replica_check_due(step) {
            run.check_replicas(step)?;
        }
        if result.stop_requested || run.checkpoint_due(step) {
            run.checkpoint(step)?;
        }
        if result.stop_requested {
            run.report_interrupted();
            break;
        }
    }
    run.finish(step)
}
