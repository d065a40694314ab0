//! `metrics.jsonl`: one JSON object per logged step (training) or evaluation.

use crate::held_out::Score;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// A training step.
    Train {
        /// Step index (0-based).
        step: u64,
        /// Learning rate used.
        lr: f64,
        /// Masking rate used.
        mask_rate: f64,
        /// Mean MLM loss over the step's micro-batches.
        loss: f64,
        /// Masked-token accuracy.
        accuracy: f64,
        /// Gradient norm before clipping.
        grad_norm: f64,
        /// Non-padding tokens per second.
        tokens_per_sec: f64,
        /// Seconds this step waited for data.
        data_wait_sec: f64,
        /// Data-parallel jobs: seconds this step spent in collectives (gradient all-reduce and
        /// the step's sums); absent in one process.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sync_sec: Option<f64>,
    },
    /// A held-out evaluation after `step` steps.
    Eval {
        /// Steps completed.
        step: u64,
        /// MLM loss at the fixed evaluation rate.
        loss: f64,
        /// Masked-token accuracy.
        accuracy: f64,
        /// With a mixture: each source's held-out loss and accuracy (the fields above pool them).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        sources: BTreeMap<String, Score>,
        /// With `--elbo-draws`: the held-out ELBO, a bound on the negative log-likelihood per
        /// token in nats.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eval_elbo: Option<f64>,
    },
}

impl Record {
    /// The step of the record.
    pub fn step(&self) -> u64 {
        match self {
            Record::Train { step, .. } | Record::Eval { step, .. } => *step,
        }
    }
}

/// Appends records, flushing each line.
pub struct MetricsLog {
    /// `None`: a rank that does not write the run's files.
    file: Option<(std::fs::File, std::path::PathBuf)>,
}

impl MetricsLog {
    /// An append-only log: each record is one line, flushed as it is written. Opens `path`, first
    /// dropping records of steps at or after `keep_before` (a resumed run redoes them).
    pub fn open(path: &Path, keep_before: u64) -> Result<Self> {
        let kept: Vec<String> = if path.exists() {
            read_complete(path)?
                .into_iter()
                .filter(|r| match r {
                    Record::Train { step, .. } => *step < keep_before,
                    Record::Eval { step, .. } => *step <= keep_before,
                })
                .map(|r| serde_json::to_string(&r).expect("serializes"))
                .collect()
        } else {
            Vec::new()
        };
        // The kept records replace the file atomically (a kill here loses nothing); then appends.
        let text: String = kept.iter().map(|l| format!("{l}\n")).collect();
        shared::atomic::write_file(path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(MetricsLog {
            file: Some((file, path.to_path_buf())),
        })
    }

    /// A log that writes nothing (the ranks of a data-parallel job other than rank 0).
    pub fn discard() -> Self {
        MetricsLog { file: None }
    }

    /// Appends one record.
    pub fn write(&mut self, r: &Record) -> Result<()> {
        if let Some((file, path)) = &mut self.file {
            let line = format!("{}\n", serde_json::to_string(r)?);
            shared::faults::step("append", path)
                .and_then(|()| file.write_all(line.as_bytes()))
                .and_then(|()| file.flush())
                .with_context(|| format!("appending to {}", path.display()))?;
        }
        Ok(())
    }
}

/// Reads every record of a `metrics.jsonl`.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(path, &text)
}

/// The (step, loss) of every training record of a `metrics.jsonl`, in file order.
pub fn train_losses(path: &Path) -> Result<Vec<(u64, f64)>> {
    Ok(read(path)?
        .into_iter()
        .filter_map(|r| match r {
            Record::Train { step, loss, .. } => Some((step, loss)),
            Record::Eval { .. } => None,
        })
        .collect())
}

/// [`read`], leaving out a last line cut short (no newline) by a full disk or a crash mid-append.
fn read_complete(path: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    parse(path, complete)
}

fn parse(path: &Path, text: &str) -> Result<Vec<Record>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: bad record", path.display(), i + 1))
        })
        .collect()
}
