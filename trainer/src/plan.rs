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
    /// Where the plots go: PREFIX-rate.png (masking rate and source weights), PREFIX-lr.png,
    /// PREFIX-tokens.png (tokens so far).
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
    let phases = sampler.phases();
    // Evenly spaced steps, and the first and last step of every phase.
    let mut at: Vec<u64> = (0..points).map(|i| i * last / (points - 1)).collect();
    at.extend(phases.iter().flat_map(|p| [p.first, p.end - 1]));
    at.sort_unstable();
    at.dedup();
    let names = sampler.source_names();
    let mixed = phases.iter().any(|p| sampler.weights_at(p.first).is_some());
    // Each source's weight at `step` (a phase without a mixture reads one source: weight 1).
    let weights_at = |step: u64| -> Vec<f64> {
        sampler.weights_at(step).unwrap_or_else(|| {
            let counts = sampler.counts_at(step);
            let total: usize = counts.iter().sum();
            counts.iter().map(|&c| c as f64 / total as f64).collect()
        })
    };
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
        sampler
            .mixture()
            .filter(|_| phases.len() == 1)
            .map(|m| {
                let parts: Vec<String> = (0..names.len())
                    .map(|i| format!("{}={}", names[i], m.describe(i)))
                    .collect();
                format!("\nsources: {}", parts.join(", "))
            })
            .unwrap_or_default()
    );
    if phases.len() > 1 {
        for (k, (phase, resolved)) in phases.iter().zip(config.resolve_phases()?).enumerate() {
            let c = &resolved.config;
            let sources: Vec<String> = c.shards.iter().map(|s| s.to_string()).collect();
            let mix = match (&c.mix, &c.mix_by_size) {
                (Some(m), _) => format!("; mix {m}"),
                (None, Some(a)) => format!(
                    "; mix by size, alpha {a}{}",
                    c.join
                        .iter()
                        .map(|j| format!(", join {j}"))
                        .collect::<String>()
                ),
                (None, None) => String::new(),
            };
            let clock = |local: bool| if local { "the phase" } else { "the run" };
            let _ = writeln!(
                out,
                "phase {}: steps {}..{}, batch {} x {} tokens, schedule {} (over {}); shards {}{mix}{}",
                k + 1,
                phase.first,
                phase.end,
                phase.global_batch,
                phase.seq_len,
                c.schedule,
                clock(resolved.local_schedule),
                sources.join(", "),
                if mix.is_empty() {
                    String::new()
                } else {
                    format!(" (over {})", clock(resolved.local_mixture))
                }
            );
        }
    }
    let mut header = format!(
        "\n{:>8} {:>8} {:>10} {:>7} {:>6} {:>14}",
        "step", "rate", "lr", "seq_len", "batch", "tokens so far"
    );
    for n in names.iter().filter(|_| mixed) {
        let _ = write!(header, " {:>16}", format!("{n} w (rows)"));
    }
    let _ = writeln!(out, "{header}");
    let mut rate = Vec::new();
    let mut lrs = Vec::new();
    let mut weights: Vec<Vec<(f64, f64)>> = vec![Vec::new(); names.len()];
    let mut tokens = Vec::new();
    for &step in &at {
        let r = sampler.rate_at(step);
        let l = lr.lr(step);
        let _ = write!(
            out,
            "{step:>8} {r:>8.4} {l:>10.3e} {:>7} {:>6} {:>14}",
            sampler.seq_len_at(step),
            sampler.global_batch_at(step),
            sampler.tokens_before(step + 1)
        );
        if mixed {
            for (w, c) in weights_at(step).iter().zip(sampler.counts_at(step)) {
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
        tokens.push((step as f64, sampler.tokens_before(step + 1) as f64));
        if mixed {
            for (i, w) in weights_at(step).into_iter().enumerate() {
                weights[i].push((step as f64, w));
            }
        }
    }
    let prefix = args.plot.display().to_string();
    let (rate_png, lr_png, tokens_png) = (
        PathBuf::from(format!("{prefix}-rate.png")),
        PathBuf::from(format!("{prefix}-lr.png")),
        PathBuf::from(format!("{prefix}-tokens.png")),
    );
    let mut series = vec![Series {
        label: format!("masking rate ({})", config.schedule),
        points: rate,
    }];
    if mixed {
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
    line_chart(
        &tokens_png,
        "tokens so far (slope: batch x sequence length)",
        "step",
        "tokens",
        &[Series {
            label: "tokens so far".into(),
            points: tokens,
        }],
    )?;
    let _ = writeln!(
        out,
        "\nplots written to {}, {} and {}",
        rate_png.display(),
        lr_png.display(),
        tokens_png.display()
    );
    Ok(out)
}
