//! The GLUE tasks: their files, columns, labels, metrics and the paper's fine-tuning
//! hyper-parameters, and a reader for the standard GLUE TSV layout of each.
//!
//! GLUE TSVs are tab-separated with no quoting (quotes are text: `csv.QUOTE_NONE` in GLUE's own
//! loaders). Every file has a header row except CoLA's train/dev. Columns are found by header name,
//! so extra columns (MNLI's parses, label1..label5) are ignored.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A GLUE task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Task {
    /// Corpus of Linguistic Acceptability.
    CoLA,
    /// Stanford Sentiment Treebank (binary).
    Sst2,
    /// Microsoft Research Paraphrase Corpus.
    Mrpc,
    /// Semantic Textual Similarity Benchmark (regression 0–5).
    Stsb,
    /// Recognising Textual Entailment.
    Rte,
    /// Question NLI.
    Qnli,
    /// Multi-Genre NLI.
    Mnli,
    /// Quora Question Pairs.
    Qqp,
    /// Winograd NLI.
    Wnli,
}

/// A gold label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Label {
    /// Class index.
    Class(usize),
    /// Regression target.
    Score(f64),
    /// Test rows have none.
    None,
}

/// One example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// First (or only) sentence.
    pub a: String,
    /// Second sentence of a pair.
    pub b: Option<String>,
    /// Gold label.
    pub label: Label,
    /// The row's `index`/`id` column (test files; GLUE submissions are keyed by it).
    pub id: String,
}

/// Fine-tuning hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Hyper {
    /// Peak learning rate.
    pub lr: f64,
    /// Epochs over the training set.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
}

/// Columns of one file layout.
struct Layout {
    header: bool,
    a: &'static str,
    b: Option<&'static str>,
    label: Option<&'static str>,
    id: Option<&'static str>,
}

/// CoLA train/dev have no header: source, label, original label, sentence.
const COLA_COLUMNS: [&str; 4] = ["source", "label", "original_label", "sentence"];

impl Task {
    /// Every task, in the paper's table order.
    pub const ALL: [Task; 9] = [
        Task::Mnli,
        Task::Qnli,
        Task::Qqp,
        Task::Rte,
        Task::Sst2,
        Task::Mrpc,
        Task::CoLA,
        Task::Stsb,
        Task::Wnli,
    ];

    /// The GLUE directory name (`CoLA`, `SST-2`, …), also accepted by `--task`.
    pub fn dir_name(self) -> &'static str {
        match self {
            Task::CoLA => "CoLA",
            Task::Sst2 => "SST-2",
            Task::Mrpc => "MRPC",
            Task::Stsb => "STS-B",
            Task::Rte => "RTE",
            Task::Qnli => "QNLI",
            Task::Mnli => "MNLI",
            Task::Qqp => "QQP",
            Task::Wnli => "WNLI",
        }
    }

    /// Parses a task name, case-insensitive, with or without the hyphen (`sst2`, `STS-B`).
    pub fn parse(name: &str) -> Result<Task> {
        let norm = |s: &str| s.to_ascii_lowercase().replace(['-', '_'], "");
        Task::ALL
            .into_iter()
            .find(|t| norm(t.dir_name()) == norm(name))
            .with_context(|| {
                format!(
                    "unknown GLUE task {name:?}; expected one of {}",
                    Task::ALL.map(|t| t.dir_name()).join(", ")
                )
            })
    }

    /// Label names in class order (empty for the regression task STS-B).
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            Task::Stsb => &[],
            Task::Rte | Task::Qnli => &["entailment", "not_entailment"],
            Task::Mnli => &["contradiction", "entailment", "neutral"],
            _ => &["0", "1"],
        }
    }

    /// Outputs of the head: classes, or 1 for regression.
    pub fn num_outputs(self) -> usize {
        self.labels().len().max(1)
    }

    /// Whether the task is a regression (STS-B).
    pub fn is_regression(self) -> bool {
        self == Task::Stsb
    }

    /// The paper's fine-tuning hyper-parameters (Ankner et al., appendix; MosaicML's recipe).
    pub fn paper_hyper(self) -> Hyper {
        let (lr, epochs, batch_size) = match self {
            Task::Mnli => (5e-5, 3, 48),
            Task::Rte => (1e-5, 3, 16),
            Task::Qqp => (3e-5, 3, 16),
            Task::CoLA => (5e-5, 10, 32),
            Task::Mrpc => (8e-5, 10, 32),
            Task::Qnli => (1e-5, 10, 16),
            Task::Sst2 => (3e-5, 3, 16),
            Task::Stsb => (3e-5, 10, 32),
            Task::Wnli => (1e-5, 3, 16),
        };
        Hyper {
            lr,
            epochs,
            batch_size,
        }
    }

    /// Whether the paper starts this task from the MNLI fine-tuned model.
    pub fn starts_from_mnli(self) -> bool {
        matches!(self, Task::Rte | Task::Mrpc | Task::Stsb)
    }

    /// Names of the task's metrics, the first being the headline one.
    pub fn metric_names(self) -> &'static [&'static str] {
        match self {
            Task::CoLA => &["mcc"],
            Task::Mrpc | Task::Qqp => &["f1", "accuracy"],
            Task::Stsb => &["pearson", "spearman"],
            Task::Mnli => &["accuracy_m", "accuracy_mm"],
            _ => &["accuracy"],
        }
    }

    /// Dev files: MNLI has matched and mismatched; the others one `dev.tsv`.
    pub fn dev_files(self) -> &'static [&'static str] {
        match self {
            Task::Mnli => &["dev_matched.tsv", "dev_mismatched.tsv"],
            _ => &["dev.tsv"],
        }
    }

    /// Test files and their GLUE submission names.
    pub fn test_files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Task::Mnli => &[
                ("test_matched.tsv", "MNLI-m.tsv"),
                ("test_mismatched.tsv", "MNLI-mm.tsv"),
            ],
            Task::CoLA => &[("test.tsv", "CoLA.tsv")],
            Task::Sst2 => &[("test.tsv", "SST-2.tsv")],
            Task::Mrpc => &[("test.tsv", "MRPC.tsv")],
            Task::Stsb => &[("test.tsv", "STS-B.tsv")],
            Task::Rte => &[("test.tsv", "RTE.tsv")],
            Task::Qnli => &[("test.tsv", "QNLI.tsv")],
            Task::Qqp => &[("test.tsv", "QQP.tsv")],
            Task::Wnli => &[("test.tsv", "WNLI.tsv")],
        }
    }

    fn layout(self, test: bool) -> Layout {
        let l = |header, a, b, label, id| Layout {
            header,
            a,
            b,
            label,
            id,
        };
        match (self, test) {
            (Task::CoLA, false) => l(false, "sentence", None, Some("label"), None),
            (Task::CoLA, true) => l(true, "sentence", None, None, Some("index")),
            (Task::Sst2, false) => l(true, "sentence", None, Some("label"), None),
            (Task::Sst2, true) => l(true, "sentence", None, None, Some("index")),
            (Task::Mrpc, false) => l(true, "#1 String", Some("#2 String"), Some("Quality"), None),
            (Task::Mrpc, true) => l(true, "#1 String", Some("#2 String"), None, Some("index")),
            (Task::Stsb, t) => l(
                true,
                "sentence1",
                Some("sentence2"),
                (!t).then_some("score"),
                Some("index"),
            ),
            (Task::Rte | Task::Wnli, t) => l(
                true,
                "sentence1",
                Some("sentence2"),
                (!t).then_some("label"),
                Some("index"),
            ),
            (Task::Qnli, t) => l(
                true,
                "question",
                Some("sentence"),
                (!t).then_some("label"),
                Some("index"),
            ),
            (Task::Mnli, t) => l(
                true,
                "sentence1",
                Some("sentence2"),
                (!t).then_some("gold_label"),
                Some("index"),
            ),
            (Task::Qqp, t) => l(
                true,
                "question1",
                Some("question2"),
                (!t).then_some("is_duplicate"),
                Some("id"),
            ),
        }
    }

    fn parse_label(self, text: &str) -> Option<Label> {
        if self.is_regression() {
            return text
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(Label::Score);
        }
        self.labels()
            .iter()
            .position(|l| *l == text)
            .map(Label::Class)
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dir_name())
    }
}

/// Result of reading one file.
#[derive(Debug)]
pub struct ReadFile {
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// Rows skipped (only with `skip_bad`), with their messages.
    pub skipped: Vec<String>,
}

/// Where a task file's fields are, by column index.
struct RowColumns {
    a: usize,
    b: Option<usize>,
    label: Option<usize>,
    id: Option<usize>,
}

impl RowColumns {
    /// The example in one row's `fields`, or why the row is malformed.
    fn example(&self, task: Task, fields: &[&str]) -> std::result::Result<Example, String> {
        let get = |i: usize| {
            fields
                .get(i)
                .copied()
                .ok_or_else(|| format!("{} columns, expected at least {}", fields.len(), i + 1))
        };
        let label = match self.label {
            Some(c) => {
                let raw = get(c)?.trim();
                task.parse_label(raw).ok_or_else(|| {
                    format!(
                        "label {raw:?} is not one of {}",
                        if task.is_regression() {
                            "a number".to_string()
                        } else {
                            format!("{:?}", task.labels())
                        }
                    )
                })?
            }
            None => Label::None,
        };
        Ok(Example {
            a: get(self.a)?.to_string(),
            b: self.b.map(get).transpose()?.map(str::to_string),
            label,
            id: self.id.map(get).transpose()?.unwrap_or("").to_string(),
        })
    }
}

/// Reads a GLUE TSV (`test` = unlabelled test layout). A malformed row is an error naming the
/// file and line, or is skipped and reported when `skip_bad` (QQP's train file has a few).
pub fn read_tsv(task: Task, path: &Path, test: bool, skip_bad: bool) -> Result<ReadFile> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow::anyhow!("{}:{line}: invalid UTF-8", path.display())
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let layout = task.layout(test);
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let columns: Vec<String> = if layout.header {
        let (_, header) = lines
            .next()
            .with_context(|| format!("{}: empty file, expected a header row", path.display()))?;
        header.split('\t').map(|c| c.trim().to_string()).collect()
    } else {
        COLA_COLUMNS.iter().map(|c| c.to_string()).collect()
    };
    let find = |name: &str| -> Result<usize> {
        columns.iter().position(|c| c == name).with_context(|| {
            format!(
                "{}:1: no column {name:?} in the header {columns:?} (is this the {task} {} file?)",
                path.display(),
                if test { "test" } else { "train/dev" }
            )
        })
    };
    let columns = RowColumns {
        a: find(layout.a)?,
        b: layout.b.map(find).transpose()?,
        label: layout.label.map(find).transpose()?,
        id: layout.id.map(find).transpose()?,
    };
    let mut out = ReadFile {
        examples: Vec::new(),
        skipped: Vec::new(),
    };
    for (line_no, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        match columns.example(task, &fields) {
            Ok(ex) => out.examples.push(ex),
            Err(msg) => {
                let msg = format!("{}:{line_no}: {msg}", path.display());
                if !skip_bad {
                    bail!("{msg} (use --skip-bad-rows to skip such rows)");
                }
                out.skipped.push(msg);
            }
        }
    }
    Ok(out)
}

/// The tasks whose directory exists under `glue_dir`, in [`Task::ALL`] order.
pub fn present(glue_dir: &Path) -> Vec<(Task, PathBuf)> {
    Task::ALL
        .into_iter()
        .map(|t| (t, glue_dir.join(t.dir_name())))
        .filter(|(_, p)| p.join("train.tsv").exists())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_parse_loosely_and_reject_unknown() {
        assert_eq!(Task::parse("sst2").unwrap(), Task::Sst2);
        assert_eq!(Task::parse("STS-B").unwrap(), Task::Stsb);
        assert_eq!(Task::parse("cola").unwrap(), Task::CoLA);
        let err = Task::parse("squad").unwrap_err().to_string();
        assert!(err.contains("MNLI") && err.contains("squad"), "{err}");
    }

    #[test]
    fn paper_hyper_parameters() {
        assert_eq!(
            Task::Mnli.paper_hyper(),
            Hyper {
                lr: 5e-5,
                epochs: 3,
                batch_size: 48
            }
        );
        assert_eq!(Task::Mrpc.paper_hyper().lr, 8e-5);
        assert_eq!(Task::Qnli.paper_hyper().epochs, 10);
        assert!(Task::Rte.starts_from_mnli() && !Task::Sst2.starts_from_mnli());
    }
}
