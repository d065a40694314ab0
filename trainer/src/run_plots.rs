//! Run plots: train loss, eval loss, mask rate and learning rate vs step, for one or many runs.

use crate::charts::{line_chart, Series};
use anyhow::Result;
use std::path::{Path, PathBuf};
use training::metrics_log::{read, Record};

/// Extracts an (x, y) point from a record, if it carries that metric.
type Pick = Box<dyn Fn(&Record) -> Option<(f64, f64)>>;

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
    let charts: [(&str, &str, &str, Pick); 4] = [
        (
            "train-loss.png",
            "training MLM loss",
            "loss",
            Box::new(|r| {
                if let Record::Train { step, loss, .. } = r {
                    Some((*step as f64, *loss))
                } else {
                    None
                }
            }),
        ),
        (
            "eval-loss.png",
            "held-out MLM loss at 15% masking",
            "loss",
            Box::new(|r| {
                if let Record::Eval { step, loss, .. } = r {
                    Some((*step as f64, *loss))
                } else {
                    None
                }
            }),
        ),
        (
            "mask-rate.png",
            "masking rate",
            "rate",
            Box::new(|r| {
                if let Record::Train {
                    step, mask_rate, ..
                } = r
                {
                    Some((*step as f64, *mask_rate))
                } else {
                    None
                }
            }),
        ),
        (
            "lr.png",
            "learning rate",
            "lr",
            Box::new(|r| {
                if let Record::Train { step, lr, .. } = r {
                    Some((*step as f64, *lr))
                } else {
                    None
                }
            }),
        ),
    ];
    let mut written = Vec::new();
    for (file, title, y, pick) in charts.iter() {
        let path = out_dir.join(file);
        line_chart(&path, title, "step", y, &series(pick.as_ref()))?;
        written.push(path);
    }
    Ok(written)
}

/// Plots of a single run, into the run directory.
pub fn write_run_plots(run: &Path) -> Result<()> {
    compare(&[run.to_path_buf()], run).map(|_| ())
}
