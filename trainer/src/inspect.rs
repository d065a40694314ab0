//! `trainer inspect-batch`: shows the batch of any step (decoded, with masks marked) and the
//! realised masking statistics, so a schedule can be checked before a run is paid for.

use crate::charts::{line_chart, Series};
use anyhow::{bail, Result};
use clap::Args;
use shared::sampler::{Batch, MaskCounts, IGNORE_LABEL};
use shared::tokenizer::LoadedTokenizer;
use std::fmt::Write;
use std::path::PathBuf;
use training::data::DataArgs;

/// Flags of `inspect-batch`.
#[derive(Debug, Args)]
pub struct InspectBatchArgs {
    /// Data, schedule and masking flags (as for training).
    #[command(flatten)]
    pub data: DataArgs,
    /// Length of the run, in optimizer steps (the schedule's time axis).
    #[arg(long, default_value_t = 70_000)]
    pub steps: u64,
    /// Sequences per step over all ranks.
    #[arg(long, default_value_t = 4096)]
    pub batch_size: usize,
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
    if args.step >= args.steps {
        bail!(
            "--step {} is outside a {}-step run (0..{})",
            args.step,
            args.steps,
            args.steps
        );
    }
    let data = args.data.open(args.batch_size, args.steps)?;
    let s = &data.sampler;
    let masking = s.config().masking;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "shards {} ({} documents, {} sequences of {} tokens, {:?} layout)",
        args.data
            .shards
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        data.shards.len(),
        s.sequences().len(),
        args.data.seq_len,
        args.data.layout
    );
    let _ = writeln!(
        out,
        "schedule {} over {} steps; batch {}; seed {}; split {:.0}/{:.0}/{:.0} mask/random/keep{}{}",
        args.data.schedule,
        args.steps,
        args.batch_size,
        args.data.seed,
        masking.mask_fraction * 100.0,
        masking.random_fraction * 100.0,
        masking.keep_fraction() * 100.0,
        if masking.exact { "; exact count" } else { "" },
        if masking.whole_word { "; whole words" } else { "" }
    );
    if args.stats {
        let last = args.steps - 1;
        let points = args.points.clamp(2, args.steps.max(2));
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
        line_chart(
            &args.plot,
            &format!("masking rate: {}", args.data.schedule),
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
        return Ok(out);
    }
    let b = s.global_batch(args.step)?;
    let (m, r, k) = split(&b.counts);
    let _ = writeln!(
        out,
        "\nstep {} (epoch {}): scheduled rate {:.4}",
        args.step,
        s.epoch_at(args.step),
        b.rate
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
        s.sequences().fill(b.sequence_ids[row], &mut original)?;
        let chosen = b.labels[row * b.seq_len..(row + 1) * b.seq_len]
            .iter()
            .filter(|&&l| l != IGNORE_LABEL)
            .count();
        let _ = writeln!(
            out,
            "\n--- row {row}: sequence {} ({chosen} predicted) ---\n{}",
            b.sequence_ids[row],
            render_row(&data.tokenizer, &b, row, &original)
        );
    }
    Ok(out)
}
