//! `trainer eval RUN`: a run's held-out scores after the fact, as the trainer's own evaluations
//! compute them: the MLM loss and accuracy at the fixed 15% (per source with a mixture) and the
//! masked-diffusion ELBO, on the run's held-out sequences (its `config.json` names the shards,
//! the layout and the split), for its latest checkpoint or another one.

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use training::held_out::{Evaluator, Score};
use training::pretrain::TrainArgs;
use training::runtime::RuntimeArgs;

/// `trainer eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Run directory (its `config.json` gives the data; its latest checkpoint is scored).
    pub run: PathBuf,
    /// Score these weights instead (a checkpoint or HuggingFace-format directory).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// ELBO draws per held-out sequence (default: the run's, 4 with a rate distribution, else
    /// 0; 0: no ELBO).
    #[arg(long)]
    pub elbo_draws: Option<usize>,
    /// Also write the result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Compute in: auto, fp32 or bf16 (default: the run's `--precision`, so a run's scores
    /// repeat; pass the run's `--kernels` too where it chose them).
    #[arg(long)]
    pub precision: Option<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// The scores of one checkpoint.
#[derive(Debug, Serialize)]
pub struct EvalReport {
    /// The weights scored.
    pub checkpoint: PathBuf,
    /// Held-out sequences over every source.
    pub sequences: u64,
    /// MLM loss and accuracy at 15%, pooled.
    pub eval: Score,
    /// Per named source (empty with one unnamed source).
    pub by_source: BTreeMap<String, Score>,
    /// The ELBO per maskable token in nats (`None` without draws).
    pub eval_elbo: Option<f64>,
}

impl EvalReport {
    /// A Markdown table of the scores.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "{} ({} held-out sequences)\n\n| set | loss at 15% | accuracy | ELBO |\n|---|---|---|---|\n",
            self.checkpoint.display(),
            self.sequences
        );
        let elbo = self
            .eval_elbo
            .map_or("-".to_string(), |e| format!("{e:.4}"));
        out += &format!(
            "| all | {:.4} | {:.4} | {elbo} |\n",
            self.eval.loss, self.eval.accuracy
        );
        for (name, s) in &self.by_source {
            out += &format!("| {name} | {:.4} | {:.4} | |\n", s.loss, s.accuracy);
        }
        out
    }
}

/// The run's training flags, from its `config.json`.
fn run_args(run: &std::path::Path) -> Result<TrainArgs> {
    let path = run.join("config.json");
    let text = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (is {} a run directory?)",
            path.display(),
            run.display()
        )
    })?;
    let config: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    serde_json::from_value(config["train"].clone())
        .with_context(|| format!("{}: the run's training flags (\"train\")", path.display()))
}

/// `trainer eval`: scores the checkpoint, prints the table, writes the JSON.
pub fn eval(args: &EvalArgs) -> Result<EvalReport> {
    let train = run_args(&args.run)?;
    let data = training::pretrain::open_data(&train, true)?;
    let sequences = data.held_out.iter().map(|(_, s)| s.len()).sum();
    let draws = args.elbo_draws.unwrap_or_else(|| train.elbo_draws());
    let evaluator = Evaluator::new(data.held_out, &data.tokenizer, train.eval_batch, draws)?
        .with_context(|| {
            format!(
                "{} holds out no sequences (it was trained with --eval-sequences 0)",
                args.run.display()
            )
        })?;
    let weights = args.checkpoint.clone().unwrap_or_else(|| args.run.clone());
    let pre = training::saved_model::load(&weights, None)?;
    let device = args.runtime.device()?;
    let precision = args.precision.as_deref().unwrap_or(&train.precision);
    let model = pre.mlm_model_in(
        &device,
        training::device::compute_dtype(precision, &device)?,
    )?;
    let comm = training::dist::SingleProcess;
    let evaluation = evaluator.evaluate(&model, &device, &comm)?;
    let report = EvalReport {
        checkpoint: pre.source.clone(),
        sequences,
        eval: evaluation.pooled,
        by_source: evaluation.by_source,
        eval_elbo: evaluation.elbo,
    };
    print!("{}", report.markdown());
    if let Some(path) = &args.json {
        shared::atomic::write_file(path, &serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(report)
}
