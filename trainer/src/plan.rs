//! `trainer plan`: a run's recipe over its whole length, from its flags alone (no model, no
//! training): the masking rate, each source's weight and rows, sequence length, batch size,
//! tokens so far and the learning rate at evenly spaced steps, printed and plotted.

use crate::charts::{line_chart, Series};
use anyhow::Result;
use clap::Args;
use std::fmt::Write;
use std::path::PathBuf;
use training::pretrain::TrainArgs;

/// Flags of `plan`: the training flags, and where the plots go.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The run's flags, as for training (`--config run.toml` too).
    #[command(flatten)]
    pub train: TrainArgs,
    /// Steps shown, evenly spaced from the first to the last.
    #[arg(long, default_value_t = 21)]
    pub points: u64,
    /// Where the plots go: PREFIX-rate.png (masking rate and source weights), PREFIX-lr.png.
    #[arg(long, default_value = "plan")]
    pub plot: PathBuf,
}

/// The plan's rows at evenly spaced steps, and the plots it writes.
pub fn plan(args: &PlanArgs) -> Result<String> {
    let t = &args.train;
    let config = &t.data.config;
    let data = config.open()?;
    let sampler = &data.sampler;
    let lr = t.lr_schedule();
    let steps = config.steps.max(1);
    let last = steps - 1;
    let points = args.points.clamp(2, steps.max(2));
    let mut at: Vec<u64> = (0..points).map(|i| i * last / (points - 1)).collect();
    at.dedup();
    let names = sampler.source_names();
    let mixed = sampler.mixture();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan of {steps} steps: schedule {}, batch {} x {} tokens, lr {} ({} decay, warm-up {} steps){}",
        config.schedule,
        config.batch_size,
        config.seq_len,
        t.lr,
        t.lr_schedule,
        lr.warmup_steps,
        mixed
            .map(|m| {
                let parts: Vec<String> = (0..names.len())
                    .map(|i| format!("{}={}", names[i], m.describe(i)))
                    .collect();
                format!("\nsources: {}", parts.join(", "))
            })
            .unwrap_or_default()
    );
    let mut header = format!(
        "\n{:>8} {:>8} {:>10} {:>7} {:>6} {:>14}",
        "step", "rate", "lr", "seq_len", "batch", "tokens so far"
    );
    for n in names.iter().filter(|_| mixed.is_some()) {
        let _ = write!(header, " {:>16}", format!("{n} w (rows)"));
    }
    let _ = writeln!(out, "{header}");
    let mut rate = Vec::new();
    let mut lrs = Vec::new();
    let mut weights: Vec<Vec<(f64, f64)>> = vec![Vec::new(); names.len()];
    let tokens_per_step = (config.batch_size * config.seq_len) as u64;
    for &step in &at {
        let r = sampler.rate_at(step);
        let l = lr.lr(step);
        let _ = write!(
            out,
            "{step:>8} {r:>8.4} {l:>10.3e} {:>7} {:>6} {:>14}",
            config.seq_len,
            config.batch_size,
            (step + 1) * tokens_per_step
        );
        if let Some(m) = mixed {
            for (w, c) in m.weights_at(step).iter().zip(m.counts(step)) {
                let _ = write!(out, " {:>16}", format!("{w:.3} ({c})"));
            }
        }
        let _ = writeln!(out);
    }
    // The plots sample the run finely (every step up to 2,000), so stairs show as stairs.
    let fine = steps.min(2000);
    let mut plot_at: Vec<u64> = (0..fine).map(|i| i * last / (fine - 1).max(1)).collect();
    plot_at.dedup();
    for &step in &plot_at {
        rate.push((step as f64, sampler.rate_at(step)));
        lrs.push((step as f64, lr.lr(step)));
        if let Some(m) = mixed {
            for (i, w) in m.weights_at(step).into_iter().enumerate() {
                weights[i].push((step as f64, w));
            }
        }
    }
    let prefix = args.plot.display().to_string();
    let (rate_png, lr_png) = (
        PathBuf::from(format!("{prefix}-rate.png")),
        PathBuf::from(format!("{prefix}-lr.png")),
    );
    let mut series = vec![Series {
        label: format!("masking rate ({})", config.schedule),
        points: rate,
    }];
    if mixed.is_some() {
        for (name, points) in names.iter().zip(weights) {
            series.push(Series {
                label: format!("weight of {name}"),
                points,
            });
        }
    }
    line_chart(
        &rate_png,
        "masking rate and source weights",
        "step",
        "value",
        &series,
    )?;
    line_chart(
        &lr_png,
        &format!("learning rate ({})", t.lr_schedule),
        "step",
        "learning rate",
        &[Series {
            label: "lr".into(),
            points: lrs,
        }],
    )?;
    let _ = writeln!(
        out,
        "\nplots written to {} and {}",
        rate_png.display(),
        lr_png.display()
    );
    Ok(out)
}
