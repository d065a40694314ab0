//! `trainer inspect-batch`: shows the batch of any step (decoded, with masks marked) and the
//! realised masking statistics, so a schedule can be checked before a run is paid for.

use crate::charts::{line_chart, Series};
use anyhow::{bail, Result};
use clap::Args;
use shared::sampler::{Batch, MaskCounts, MaskingSampler, IGNORE_LABEL};
use shared::tokenizer::LoadedTokenizer;
use std::fmt::Write;
use std::path::PathBuf;
use training::data::{Data, DataArgs};

/// Flags of `inspect-batch`.
#[derive(Debug, Args)]
pub struct InspectBatchArgs {
    /// Data, schedule and masking flags (as for training).
    #[command(flatten)]
    pub data: DataArgs,
    /// The step to show.
    #[arg(long, default_value_t = 0)]
    pub step: u64,
    /// Rows of the batch to print.
    #[arg(long, default_value_t = 3)]
    pub rows: usize,
    /// Instead of one batch: rate statistics over the run (table + PNG plot).
    #[arg(long)]
    pub stats: bool,
    /// Steps sampled for --stats, evenly spaced from the first to the last.
    #[arg(long, default_value_t = 41)]
    pub points: u64,
    /// Where --stats writes its plot.
    #[arg(long, default_value = "mask-rate.png")]
    pub plot: PathBuf,
    /// Print the step's batch as one JSON object (`step`, `rate`, `slots`, and `input_ids`,
    /// `attention_mask`, `token_type_ids`, `labels` as lists of rows), as the Python package
    /// returns it.
    #[arg(long, conflicts_with = "stats")]
    pub json: bool,
    /// With --json: this data-parallel rank's rows of the global batch.
    #[arg(long, default_value_t = 0, requires = "json")]
    pub rank: usize,
    /// With --json: the number of data-parallel ranks the global batch is split over.
    #[arg(long, default_value_t = 1, requires = "json")]
    pub world_size: usize,
}

/// Renders one row with masked positions marked: `[M:word]` → [MASK], `[R:word>other]` → random, `[K:word]` → kept.
pub fn render_row(tok: &LoadedTokenizer, batch: &Batch, row: usize, original: &[u32]) -> String {
    let len = batch.seq_len;
    let ids = &batch.input_ids[row * len..(row + 1) * len];
    let labels = &batch.labels[row * len..(row + 1) * len];
    let attn = &batch.attention_mask[row * len..(row + 1) * len];
    let piece = |id: u32| {
        tok.tokenizer
            .id_to_token(id)
            .unwrap_or_else(|| format!("<{id}>"))
    };
    let mut out = String::new();
    for p in 0..len {
        if attn[p] == 0 {
            break;
        }
        let orig = piece(original[p]);
        let word = orig.strip_prefix("##").map(str::to_owned);
        let shown = if labels[p] == IGNORE_LABEL {
            orig.clone()
        } else if ids[p] == tok.info.mask_id {
            format!("[M:{orig}]")
        } else if ids[p] == original[p] {
            format!("[K:{orig}]")
        } else {
            format!("[R:{orig}>{}]", piece(ids[p]))
        };
        if p > 0 && word.is_none() {
            out.push(' ');
        }
        out += &match word {
            Some(_) if labels[p] == IGNORE_LABEL => shown.trim_start_matches("##").to_owned(),
            _ => shown,
        };
    }
    out
}

fn split(c: &MaskCounts) -> (f64, f64, f64) {
    let n = c.chosen.max(1) as f64;
    (
        c.as_mask as f64 / n,
        c.as_random as f64 / n,
        c.as_kept as f64 / n,
    )
}

/// Runs the command and returns its report.
pub fn inspect_batch(args: &InspectBatchArgs) -> Result<String> {
    let config = &args.data.config;
    if args.step >= config.steps {
        bail!(
            "--step {} is outside a {}-step run (0..{})",
            args.step,
            config.steps,
            config.steps
        );
    }
    let data = config.open()?;
    if args.json {
        return batch_json(args, &data);
    }
    let mut out = describe_stream(args, &data);
    if args.stats {
        out += &rate_statistics(args, &data.sampler)?;
    } else {
        out += &show_batch(args, &data)?;
    }
    Ok(out)
}

/// The epoch step `step` starts in; with a mixture, each source's (fractional) epochs so far.
fn epochs_text(s: &MaskingSampler, step: u64) -> String {
    if s.mixture().is_none() {
        return s.epoch_at(step).to_string();
    }
    let parts: Vec<String> = s
        .source_names()
        .iter()
        .zip(s.source_epochs_at(step))
        .map(|(n, e)| format!("{n} {e:.2}"))
        .collect();
    parts.join(", ")
}

/// `--json`: this rank's rows of the step's batch, as the Python package's `MaskedBatches.batch`
/// returns them, and the batches' configuration as `MaskedBatches.config` gives it.
fn batch_json(args: &InspectBatchArgs, data: &Data) -> Result<String> {
    let json = data.batch_json(&args.data.config, args.step, args.rank, args.world_size)?;
    Ok(serde_json::to_string(&json)? + "\n")
}

/// The shards, sequences, schedule and masking rules the batches come from.
fn describe_stream(args: &InspectBatchArgs, data: &Data) -> String {
    let s = &data.sampler;
    let masking = s.config().masking;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "shards {} ({} documents, {} sequences of {} tokens, {} layout)",
        data.describe_dirs(),
        data.sources.iter().map(|(_, set)| set.len()).sum::<u64>(),
        (0..s.mixture().map_or(1, |m| m.names().len()))
            .map(|i| s.source_sequences(i).len())
            .sum::<u64>(),
        args.data.config.seq_len,
        args.data.config.layout
    );
    let _ = writeln!(
        out,
        "schedule {} over {} steps; batch {}; seed {}; split {:.0}/{:.0}/{:.0} mask/random/keep{}{}",
        args.data.config.schedule,
        args.data.config.steps,
        args.data.config.batch_size,
        args.data.config.seed,
        masking.mask_fraction * 100.0,
        masking.random_fraction * 100.0,
        masking.keep_fraction() * 100.0,
        if masking.exact { "; exact count" } else { "" },
        if masking.whole_word { "; whole words" } else { "" }
    );
    if let Some(m) = s.mixture() {
        // The first phase's mixture (its sources, in its own order).
        let names = m.names();
        let parts: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "{n}={} ({} sequences)",
                    m.describe(i),
                    s.source_sequences(i).len()
                )
            })
            .collect();
        let _ = writeln!(out, "mixture: {}", parts.join(", "));
    }
    let phases = s.phases();
    if phases.len() > 1 {
        let parts: Vec<String> = phases
            .iter()
            .map(|p| format!("{}..{}: {} x {}", p.first, p.end, p.global_batch, p.seq_len))
            .collect();
        let _ = writeln!(
            out,
            "phases (steps: batch x tokens): {} (`trainer plan` shows each)",
            parts.join(", ")
        );
    }
    out
}

/// `--stats` with a mixture: each source's scheduled weight against its realised share of the
/// global batch (exact rows over the batch), as a table and a PNG plot beside the rate plot.
fn weight_statistics(args: &InspectBatchArgs, s: &MaskingSampler, steps: &[u64]) -> Result<String> {
    if s.mixture().is_none() {
        return Ok(String::new());
    }
    let names = s.source_names();
    let mut out = String::from("\nmixture weights: scheduled / realised share of the batch\n");
    let _ = write!(out, "{:>8}", "step");
    for n in &names {
        let _ = write!(out, " {:>21}", n);
    }
    out.push('\n');
    let mut series: Vec<Series> = Vec::new();
    for n in &names {
        for kind in ["scheduled", "realised"] {
            series.push(Series {
                label: format!("{n} {kind}"),
                points: Vec::new(),
            });
        }
    }
    for &step in steps {
        let b = s.global_batch(step)?;
        let batch = b.rows() as f64;
        let _ = write!(out, "{step:>8}");
        let weights = s.weights_at(step).unwrap_or_else(|| vec![1.0; names.len()]);
        for (i, w) in weights.iter().enumerate() {
            let rows = b.sources.iter().filter(|&&x| x as usize == i).count();
            let share = rows as f64 / batch;
            let _ = write!(out, " {w:>10.4} / {share:>8.4}");
            series[2 * i].points.push((step as f64, *w));
            series[2 * i + 1].points.push((step as f64, share));
        }
        out.push('\n');
    }
    let plot = args.plot.with_file_name(format!(
        "{}-mixture.png",
        args.plot
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("mask-rate")
    ));
    line_chart(
        &plot,
        "mixture weights",
        "step",
        "share of the batch",
        &series,
    )?;
    let _ = writeln!(out, "plot written to {}", plot.display());
    Ok(out)
}

/// `--stats`: scheduled vs realised rate and the replacement split at evenly spaced steps, as a
/// table and a PNG plot.
fn rate_statistics(args: &InspectBatchArgs, s: &MaskingSampler) -> Result<String> {
    let mut out = String::new();
    let steps = args.data.config.steps;
    let last = steps - 1;
    let points = args.points.clamp(2, steps.max(2));
    let mut steps: Vec<u64> = (0..points).map(|i| (i * last) / (points - 1)).collect();
    steps.dedup();
    let _ = writeln!(
        out,
        "\n{:>8} {:>10} {:>10} {:>7} {:>7} {:>7}",
        "step", "scheduled", "realised", "mask%", "rand%", "keep%"
    );
    let (mut sched, mut real) = (Vec::new(), Vec::new());
    for &step in &steps {
        let b = s.global_batch(step)?;
        let (m, r, k) = split(&b.counts);
        let _ = writeln!(
            out,
            "{step:>8} {:>10.4} {:>10.4} {:>7.1} {:>7.1} {:>7.1}",
            b.rate,
            b.realised_rate(),
            m * 100.0,
            r * 100.0,
            k * 100.0
        );
        sched.push((step as f64, b.rate));
        real.push((step as f64, b.realised_rate()));
    }
    if !args.data.config.rate_dist.is_point() {
        out += &row_rate_statistics(s, &steps)?;
    }
    line_chart(
        &args.plot,
        &format!("masking rate: {}", args.data.config.schedule),
        "step",
        "masking rate",
        &[
            Series {
                label: "scheduled".into(),
                points: sched,
            },
            Series {
                label: "realised (whole batch)".into(),
                points: real,
            },
        ],
    )?;
    let _ = writeln!(out, "\nplot written to {}", args.plot.display());
    out += &weight_statistics(args, s, &steps)?;
    Ok(out)
}

/// `--stats` with a rate distribution: the quantiles of each sampled step's row rates beside
/// the distribution's own.
fn row_rate_statistics(s: &MaskingSampler, steps: &[u64]) -> Result<String> {
    let mut out = format!(
        "\nrows' rates ({}): drawn / the distribution's\n{:>8} {:>15} {:>15} {:>15} {:>15}\n",
        s.config().rate_dist,
        "step",
        "mean",
        "p10",
        "p50",
        "p90"
    );
    for &step in steps {
        let mut rates = s.global_batch(step)?.row_rates;
        rates.sort_by(f64::total_cmp);
        let drawn = |p: f64| rates[((p * rates.len() as f64) as usize).min(rates.len() - 1)];
        let dist = s.rates_at(step);
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let pair = |a: f64, b: f64| format!("{a:.3} / {b:.3}");
        let _ = writeln!(
            out,
            "{step:>8} {:>15} {:>15} {:>15} {:>15}",
            pair(mean, dist.mean()),
            pair(drawn(0.1), dist.quantile(0.1)),
            pair(drawn(0.5), dist.quantile(0.5)),
            pair(drawn(0.9), dist.quantile(0.9)),
        );
    }
    Ok(out)
}

/// One step's batch: its rates and its first rows decoded, masked positions marked.
fn show_batch(args: &InspectBatchArgs, data: &Data) -> Result<String> {
    let s = &data.sampler;
    let mut out = String::new();
    let b = s.global_batch(args.step)?;
    let (m, r, k) = split(&b.counts);
    let dist = &args.data.config.rate_dist;
    let rate_words = match dist.is_point() {
        true => "scheduled rate",
        false => "mean row rate",
    };
    let _ = writeln!(
        out,
        "\nstep {} (epoch {}): {rate_words} {:.4}{}",
        args.step,
        epochs_text(s, args.step),
        b.rate,
        match dist.is_point() {
            true => String::new(),
            false => format!(" (rows' rates from {dist})"),
        }
    );
    let _ = writeln!(
        out,
        "realised: {} of {} maskable tokens chosen = {:.4}; of those {:.1}% [MASK], {:.1}% random, {:.1}% kept",
        b.counts.chosen,
        b.counts.maskable,
        b.realised_rate(),
        m * 100.0,
        r * 100.0,
        k * 100.0
    );
    let _ = writeln!(out, "legend: [M:word] -> [MASK], [R:word>other] -> random token, [K:word] -> kept; all three are predicted");
    let mut original = vec![0u32; b.seq_len];
    for row in 0..args.rows.min(b.rows()) {
        let source = b.sources[row] as usize;
        s.sequences_at(b.step, source)
            .expect("the step's phase reads its rows' sources")
            .fill(b.sequence_ids[row], &mut original)?;
        let from = match s.source_names()[source] {
            "" => String::new(),
            name => format!(" of {name}"),
        };
        let chosen = b.labels[row * b.seq_len..(row + 1) * b.seq_len]
            .iter()
            .filter(|&&l| l != IGNORE_LABEL)
            .count();
        let rate = match dist.is_point() {
            true => String::new(),
            false => format!(", rate {:.3}", b.row_rates[row]),
        };
        let _ = writeln!(
            out,
            "\n--- row {row}: sequence {}{from} ({chosen} predicted{rate}) ---\n{}",
            b.sequence_ids[row],
            render_row(&data.tokenizer, &b, row, &original)
        );
    }
    Ok(out)
}
