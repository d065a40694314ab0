//! A task's files, read and tokenized once.

use super::train::shuffle;
use super::*;
use crate::classifier::{encode_all, Encoded};
use crate::tasks::{read_tsv, Example, Label, Task};
use anyhow::{bail, Result};
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use shared::seed::seed_of;
use std::path::Path;
use training::saved_model::Pretrained;

/// Seed tag of the `--max-train` subset.
const SUBSET_TAG: u64 = 0x5355_4253;

fn encode_examples(pre: &Pretrained, examples: &[Example], max_len: usize) -> Result<Vec<Encoded>> {
    let inputs: Vec<(&str, Option<&str>)> = examples
        .iter()
        .map(|e| (e.a.as_str(), e.b.as_deref()))
        .collect();
    encode_all(&pre.tokenizer.tokenizer, &inputs, max_len)
}

/// A task's files, read and tokenized once.
pub struct TaskData {
    /// The task.
    pub task: Task,
    /// Training inputs and labels.
    pub train: Vec<(Encoded, Label)>,
    /// Dev sets (MNLI: matched, mismatched).
    pub dev: Vec<Vec<(Encoded, Label)>>,
    /// Test sets with their submission file names and row ids.
    pub test: Vec<(String, Vec<(Encoded, String)>)>,
    /// Rows skipped as malformed.
    pub skipped: usize,
}

/// Examples tokenized, each with its label.
fn labelled(pre: &Pretrained, ex: Vec<Example>, max_len: usize) -> Result<Vec<(Encoded, Label)>> {
    let enc = encode_examples(pre, &ex, max_len)?;
    Ok(enc
        .into_iter()
        .zip(ex.into_iter().map(|e| e.label))
        .collect())
}

impl TaskData {
    /// Reads `dir`'s train, dev (and, if `with_test`, test) files and tokenizes them.
    pub fn load(
        task: Task,
        dir: &Path,
        pre: &Pretrained,
        opts: &FinetuneOptions,
        with_test: bool,
    ) -> Result<Self> {
        let mut skipped = 0;
        let mut read = |name: &str, test: bool| -> Result<Vec<Example>> {
            let f = read_tsv(task, &dir.join(name), test, opts.skip_bad_rows)?;
            for s in &f.skipped {
                eprintln!("skipped: {s}");
            }
            skipped += f.skipped.len();
            Ok(f.examples)
        };
        let mut train_ex = read("train.tsv", false)?;
        if let Some(n) = opts.max_train {
            if n < train_ex.len() {
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed_of(&[opts.seed, SUBSET_TAG]));
                shuffle(&mut train_ex, &mut rng);
                train_ex.truncate(n);
            }
        }
        if train_ex.is_empty() {
            bail!("{}: no training examples", dir.join("train.tsv").display());
        }
        let train = labelled(pre, train_ex, opts.max_len)?;
        let mut dev = Vec::new();
        for name in task.dev_files() {
            let mut ex = read(name, false)?;
            if let Some(n) = opts.max_eval {
                ex.truncate(n);
            }
            dev.push(labelled(pre, ex, opts.max_len)?);
        }
        let mut test = Vec::new();
        if with_test {
            for (file, submission) in task.test_files() {
                let ex = read(file, true)?;
                let enc = encode_examples(pre, &ex, opts.max_len)?;
                test.push((
                    submission.to_string(),
                    enc.into_iter().zip(ex.into_iter().map(|e| e.id)).collect(),
                ));
            }
        }
        Ok(TaskData {
            task,
            train,
            dev,
            test,
            skipped,
        })
    }
}
