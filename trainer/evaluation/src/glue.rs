//! `trainer glue`: the GLUE suite over the tasks present in a GLUE directory, with the paper's
//! per-task hyper-parameters (RTE, MRPC and STS-B start from the MNLI model when MNLI is run),
//! written as `glue.json` and a markdown table `glue.md`.

use crate::finetune::{run_task, FinetuneOptions, TaskResult};
use crate::tasks::{present, Task};
use crate::CheckpointArgs;
use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use training::saved_model;

/// `trainer glue` flags.
#[derive(Debug, Clone, Args)]
pub struct GlueArgs {
    #[command(flatten)]
    pub source: CheckpointArgs,
    /// GLUE directory with one sub-directory per task (CoLA/, SST-2/, …).
    #[arg(long)]
    pub data: PathBuf,
    /// Comma-separated tasks to run (default: every task present).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Fine-tune RTE, MRPC and STS-B from the pretrained model even when MNLI is run.
    #[arg(long)]
    pub no_mnli_init: bool,
    /// One peak learning rate for every task instead of the paper's per-task values (small models
    /// usually need a larger one than BERT-base).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Output directory (default: CHECKPOINT/glue).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub opts: FinetuneOptions,
}

/// The suite's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct GlueReport {
    /// Weights evaluated.
    pub checkpoint: PathBuf,
    /// Per task.
    pub tasks: Vec<TaskResult>,
    /// Mean of the task scores (the paper's GLUE average over the tasks present), ×100.
    pub average: f64,
    /// Wall time of the whole suite.
    pub seconds: f64,
}

impl GlueReport {
    /// The report as a markdown table (metrics ×100, mean ± std over seeds).
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "GLUE dev results for `{}` ({} seed(s) per task)\n\n| task | metric | mean ± std | score |\n|---|---|---|---|\n",
            self.checkpoint.display(),
            self.tasks.first().map(|t| t.seeds.len()).unwrap_or(0)
        );
        for t in &self.tasks {
            let metrics: Vec<String> = t
                .task
                .metric_names()
                .iter()
                .map(|m| {
                    format!(
                        "{:.2} ± {:.2}",
                        t.mean.get(*m).copied().unwrap_or(f64::NAN) * 100.0,
                        t.std.get(*m).copied().unwrap_or(f64::NAN) * 100.0
                    )
                })
                .collect();
            s.push_str(&format!(
                "| {} | {} | {} | {:.2} |\n",
                t.task,
                t.task.metric_names().join(" / "),
                metrics.join(" / "),
                t.score * 100.0
            ));
        }
        s.push_str(&format!("| **average** | | | **{:.2}** |\n", self.average));
        s
    }
}

/// The tasks to run: those present under `--data`, narrowed to `--tasks` (each of which must be
/// present), in [`Task::ALL`] order.
fn selected_tasks(args: &GlueArgs) -> Result<Vec<(Task, PathBuf)>> {
    let mut tasks = present(&args.data);
    if !args.tasks.is_empty() {
        let wanted: Vec<Task> = args
            .tasks
            .iter()
            .map(|t| Task::parse(t))
            .collect::<Result<_>>()?;
        for w in &wanted {
            if !tasks.iter().any(|(t, _)| t == w) {
                bail!("{}: no {}/train.tsv", args.data.display(), w.dir_name());
            }
        }
        tasks.retain(|(t, _)| wanted.contains(t));
    }
    if tasks.is_empty() {
        bail!(
            "{}: no GLUE task directories ({} with train.tsv)",
            args.data.display(),
            Task::ALL.map(|t| t.dir_name()).join(", ")
        );
    }
    Ok(tasks)
}

/// Runs the suite.
pub fn run_suite(args: &GlueArgs) -> Result<GlueReport> {
    let t0 = Instant::now();
    let tasks = selected_tasks(args)?;
    let pre = args.source.load()?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.source.checkpoint.join("glue"));
    let use_mnli = !args.no_mnli_init && tasks.iter().any(|(t, _)| *t == Task::Mnli);
    let mut mnli_model = None;
    let mut results = Vec::new();
    // MNLI first (Task::ALL order), so its model can seed RTE, MRPC and STS-B.
    for (task, dir) in &tasks {
        let mut hyper = task.paper_hyper();
        if let Some(e) = args.opts.epochs {
            hyper.epochs = e;
        }
        if let Some(lr) = args.lr {
            hyper.lr = lr;
        }
        let task_out = out.join(task.dir_name());
        let save = (*task == Task::Mnli && use_mnli).then(|| task_out.join("model"));
        let init = if use_mnli && task.starts_from_mnli() {
            mnli_model.as_ref()
        } else {
            None
        };
        let r = run_task(
            &pre,
            init,
            *task,
            dir,
            hyper,
            &args.opts,
            &task_out,
            save.as_deref(),
        )?;
        if let Some(dir) = save {
            mnli_model = Some(saved_model::load(&dir, None)?);
        }
        eprintln!(
            "{}: score {:.2} ({})",
            task,
            r.score * 100.0,
            crate::finetune::fmt_metrics(&r.mean)
        );
        results.push(r);
    }
    let average = results.iter().map(|r| r.score).sum::<f64>() / results.len() as f64 * 100.0;
    let report = GlueReport {
        checkpoint: pre.source.clone(),
        tasks: results,
        average,
        seconds: t0.elapsed().as_secs_f64(),
    };
    std::fs::create_dir_all(&out)?;
    shared::atomic::write_file(&out.join("glue.json"), &serde_json::to_vec_pretty(&report)?)?;
    shared::atomic::write_file(&out.join("glue.md"), report.markdown().as_bytes())?;
    Ok(report)
}
