//! `trainer plan`: a run's recipe over its whole length, from its flags alone (no model, no
//! training): the masking rate, each source's weight and rows, sequence length, batch size,
//! tokens so far and the learning rate at evenly spaced steps, printed and plotted.

use crate::charts::{line_chart, Series};
use anyhow::Result;
use clap::Args;
use shared::sampler::{Data, MaskingSampler};
use shared::schedule::LrSchedule;
use std::fmt::Write;
use std::path::{Path, PathBuf};
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

/// What the plan reads: the run's flags, its opened data (sampler and phase plan), its learning
/// rate, and which sources have weights to show.
struct Recipe<'a> {
    train: &'a TrainArgs,
    data: Data,
    lr: LrSchedule,
    mixed: bool,
}

impl Recipe<'_> {
    fn sampler(&self) -> &MaskingSampler {
        &self.data.sampler
    }

    /// Each source's weight at `step` (a phase without a mixture reads one source: weight 1).
    fn weights_at(&self, step: u64) -> Vec<f64> {
        let sampler = self.sampler();
        sampler.weights_at(step).unwrap_or_else(|| {
            let counts = sampler.counts_at(step);
            let total: usize = counts.iter().sum();
            counts.iter().map(|&c| c as f64 / total as f64).collect()
        })
    }
}

/// The plan's rows at evenly spaced steps, and the plots it writes.
pub fn plan(args: &PlanArgs) -> Result<String> {
    let train = &args.train;
    let data = train.data.config.open()?;
    let mixed = data
        .sampler
        .phases()
        .iter()
        .any(|p| data.sampler.weights_at(p.first).is_some());
    let recipe = Recipe {
        train,
        lr: train.lr_schedule(),
        data,
        mixed,
    };
    let steps = train.data.config.steps.max(1);
    let mut out = summary(&recipe);
    out += &phase_lines(&recipe);
    out += &table(&recipe, &table_steps(&recipe, args.points));
    // The plots sample the run finely (every step up to 2,000), so stairs show as stairs.
    let fine = steps.min(2000);
    let mut plot_at: Vec<u64> = (0..fine)
        .map(|i| i * (steps - 1) / (fine - 1).max(1))
        .collect();
    plot_at.dedup();
    let written = plots(&recipe, &plot_at, &args.plot)?;
    let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    let _ = writeln!(out, "\nplots written to {}", names.join(", "));
    Ok(out)
}

/// Evenly spaced steps from the first to the last, and the first and last step of every phase.
fn table_steps(recipe: &Recipe, points: u64) -> Vec<u64> {
    let steps = recipe.train.data.config.steps.max(1);
    let last = steps - 1;
    let points = points.clamp(2, steps.max(2));
    let mut at: Vec<u64> = (0..points).map(|i| i * last / (points - 1)).collect();
    at.extend(
        recipe
            .sampler()
            .phases()
            .iter()
            .flat_map(|p| [p.first, p.end - 1]),
    );
    at.sort_unstable();
    at.dedup();
    at
}

/// The recipe's first line: schedule, batch, learning rate, and the sources of a mixed run
/// without phases.
fn summary(recipe: &Recipe) -> String {
    let (t, config, sampler) = (recipe.train, &recipe.train.data.config, recipe.sampler());
    let names = sampler.source_names();
    let sources = sampler
        .mixture()
        .filter(|_| sampler.phases().len() == 1)
        .map(|m| {
            let parts: Vec<String> = (0..names.len())
                .map(|i| format!("{}={}", names[i], m.describe(i)))
                .collect();
            format!("\nsources: {}", parts.join(", "))
        })
        .unwrap_or_default();
    let rates = match config.rate_dist.is_point() {
        true => format!("schedule {}", config.schedule),
        false => format!(
            "rates per {} from {}",
            if config.rate_per_document {
                "document"
            } else {
                "row"
            },
            config.rate_dist
        ),
    };
    format!(
        "plan of {} steps: {rates}, batch {} x {} tokens, lr {} ({} decay, warm-up {} steps){sources}\n",
        config.steps.max(1),
        config.batch_size,
        config.seq_len,
        t.lr,
        t.lr_schedule,
        recipe.lr.warmup_steps,
    )
}

/// One line per phase (none for a run without phases): its steps, shape, schedule, sources and
/// mix, and which clock each runs on.
fn phase_lines(recipe: &Recipe) -> String {
    let mut out = String::new();
    let shapes = recipe.sampler().phases();
    if shapes.len() < 2 {
        return out;
    }
    let resolved = recipe.data.phase_plan.phases();
    for (k, (phase, resolved)) in shapes.iter().zip(resolved).enumerate() {
        let c = &resolved.config;
        let sources: Vec<String> = c.shards.iter().map(|s| s.to_string()).collect();
        let mix = match (&c.mix, &c.mix_by_size) {
            (Some(m), _) => format!("; mix {m}"),
            (None, Some(a)) => {
                let joins: String = c.join.iter().map(|j| format!(", join {j}")).collect();
                format!("; mix by size, alpha {a}{joins}")
            }
            (None, None) => String::new(),
        };
        let clock = |local: bool| if local { "the phase" } else { "the run" };
        let mix_clock = match mix.is_empty() {
            true => String::new(),
            false => format!(" (over {})", clock(resolved.local_mixture)),
        };
        let _ = writeln!(
            out,
            "phase {}: steps {}..{}, batch {} x {} tokens, schedule {} (over {}); shards {}{mix}{mix_clock}",
            k + 1,
            phase.first,
            phase.end,
            phase.global_batch,
            phase.seq_len,
            c.schedule,
            clock(resolved.local_schedule),
            sources.join(", "),
        );
    }
    out
}

/// The table: rate, learning rate, shape, tokens so far and (mixed runs) each source's weight
/// and rows at each of `at`.
fn table(recipe: &Recipe, at: &[u64]) -> String {
    let sampler = recipe.sampler();
    let band = !recipe.train.data.config.rate_dist.is_point();
    let mut out = format!(
        "\n{:>8} {:>8} {:>10} {:>7} {:>6} {:>14}",
        "step", "rate", "lr", "seq_len", "batch", "tokens so far"
    );
    if band {
        let _ = write!(out, " {:>22}", "rows' rate p10/p50/p90");
    }
    for n in sampler.source_names().iter().filter(|_| recipe.mixed) {
        let _ = write!(out, " {:>16}", format!("{n} w (rows)"));
    }
    out.push('\n');
    for &step in at {
        let _ = write!(
            out,
            "{step:>8} {:>8.4} {:>10.3e} {:>7} {:>6} {:>14}",
            sampler.rates_at(step).mean(),
            recipe.lr.lr(step),
            sampler.seq_len_at(step),
            sampler.global_batch_at(step),
            sampler.tokens_before(step + 1)
        );
        if band {
            let r = sampler.rates_at(step);
            let q = |p: f64| r.quantile(p);
            let _ = write!(
                out,
                " {:>22}",
                format!("{:.3}/{:.3}/{:.3}", q(0.1), q(0.5), q(0.9))
            );
        }
        if recipe.mixed {
            for (w, c) in recipe.weights_at(step).iter().zip(sampler.counts_at(step)) {
                let _ = write!(out, " {:>16}", format!("{w:.3} ({c})"));
            }
        }
        out.push('\n');
    }
    out
}

/// PREFIX-rate.png (masking rate and source weights), PREFIX-lr.png and PREFIX-tokens.png over
/// the steps `at`; returns their paths.
fn plots(recipe: &Recipe, at: &[u64], prefix: &Path) -> Result<Vec<PathBuf>> {
    let sampler = recipe.sampler();
    let curve = |f: &dyn Fn(u64) -> f64| -> Vec<(f64, f64)> {
        at.iter().map(|&s| (s as f64, f(s))).collect()
    };
    let config = &recipe.train.data.config;
    let mut rate = match config.rate_dist.is_point() {
        true => vec![Series {
            label: format!("masking rate ({})", config.schedule),
            points: curve(&|s| sampler.rate_at(s)),
        }],
        // A band: the rows' mean rate and their 10th and 90th percentiles.
        false => vec![
            Series {
                label: format!("mean row rate ({})", config.rate_dist),
                points: curve(&|s| sampler.rates_at(s).mean()),
            },
            Series {
                label: "10th percentile".into(),
                points: curve(&|s| sampler.rates_at(s).quantile(0.1)),
            },
            Series {
                label: "90th percentile".into(),
                points: curve(&|s| sampler.rates_at(s).quantile(0.9)),
            },
        ],
    };
    if recipe.mixed {
        for (i, name) in sampler.source_names().iter().enumerate() {
            rate.push(Series {
                label: format!("weight of {name}"),
                points: curve(&|s| recipe.weights_at(s)[i]),
            });
        }
    }
    let path = |kind: &str| PathBuf::from(format!("{}-{kind}.png", prefix.display()));
    let lr = Series {
        label: "lr".into(),
        points: curve(&|s| recipe.lr.lr(s)),
    };
    let tokens = Series {
        label: "tokens so far".into(),
        points: curve(&|s| sampler.tokens_before(s + 1) as f64),
    };
    let lr_title = format!("learning rate ({})", recipe.train.lr_schedule);
    let charts = [
        ("rate", "masking rate and source weights", "value", rate),
        ("lr", lr_title.as_str(), "learning rate", vec![lr]),
        (
            "tokens",
            "tokens so far (slope: batch x sequence length)",
            "tokens",
            vec![tokens],
        ),
    ];
    let mut written = Vec::new();
    for (kind, title, y, series) in charts {
        line_chart(&path(kind), title, "step", y, &series)?;
        written.push(path(kind));
    }
    Ok(written)
}
