//! Run plots: train loss, eval loss, mask rate and learning rate vs step, for one or many runs,
//! and the held-out ELBO when a run scored it.

use crate::charts::{line_chart, Series};
use anyhow::Result;
use std::path::{Path, PathBuf};
use training::metrics_log::{read, Record};

/// The (step, value) a chart takes from a metrics record, if the record carries it.
type Pick = fn(&Record) -> Option<(f64, f64)>;

/// The four comparison charts: file, title, y label, and what each plots.
const CHARTS: [(&str, &str, &str, Pick); 4] = [
    ("train-loss.png", "training MLM loss", "loss", |r| match r {
        Record::Train { step, loss, .. } => Some((*step as f64, *loss)),
        _ => None,
    }),
    (
        "eval-loss.png",
        "held-out MLM loss at 15% masking",
        "loss",
        |r| match r {
            Record::Eval { step, loss, .. } => Some((*step as f64, *loss)),
            _ => None,
        },
    ),
    ("mask-rate.png", "masking rate", "rate", |r| match r {
        Record::Train {
            step, mask_rate, ..
        } => Some((*step as f64, *mask_rate)),
        _ => None,
    }),
    ("lr.png", "learning rate", "lr", |r| match r {
        Record::Train { step, lr, .. } => Some((*step as f64, *lr)),
        _ => None,
    }),
];

/// The four charts for `runs`, written into `out_dir`; returns the files written.
pub fn compare(runs: &[PathBuf], out_dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir)?;
    let mut sets: Vec<(String, Vec<Record>)> = Vec::new();
    for r in runs {
        let name = r
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| r.display().to_string());
        sets.push((name, read(&r.join("metrics.jsonl"))?));
    }
    let series = |pick: &dyn Fn(&Record) -> Option<(f64, f64)>| -> Vec<Series> {
        sets.iter()
            .map(|(name, recs)| Series {
                label: name.clone(),
                points: recs.iter().filter_map(pick).collect(),
            })
            .collect()
    };
    let mut written = Vec::new();
    for (file, title, y, pick) in CHARTS {
        let path = out_dir.join(file);
        line_chart(&path, title, "step", y, &series(&pick))?;
        written.push(path);
    }
    let elbo = series(&|r| match r {
        Record::Eval {
            step,
            eval_elbo: Some(e),
            ..
        } => Some((*step as f64, *e)),
        _ => None,
    });
    if elbo.iter().any(|s| !s.points.is_empty()) {
        let path = out_dir.join("eval-elbo.png");
        let title = "held-out ELBO (bound on NLL, nats per token)";
        line_chart(&path, title, "step", "nats per token", &elbo)?;
        written.push(path);
    }
    Ok(written)
}

/// Plots of a single run, into the run directory.
pub fn write_run_plots(run: &Path) -> Result<()> {
    compare(&[run.to_path_buf()], run).map(|_| ())
}
