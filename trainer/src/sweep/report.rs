//! `REPORT.md` from a sweep's run directories: per schedule (mean ± std over seeds) held-out MLM
//! loss and accuracy, BLiMP, GLUE per task and average; steps to reach the baseline's final eval
//! loss (the paper's speed-up measure); plots; the paper's numbers beside ours; and generated
//! statements of where the two agree.

use super::{run_state, RunState, SweepConfig};
use crate::charts::{line_chart, Series};
use anyhow::Result;
use evaluation::scores::mean_std;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use training::metrics_log::{read, Record};

/// The paper's published results (Ankner et al., 2023, BERT-base on C4): GLUE average and
/// speed-up to the constant-15% baseline's quality, by schedule.
pub const PAPER: &[(&str, f64, Option<f64>)] = &[
    ("constant:0.15", 83.83, None),
    ("linear:0.3:0.15", 84.29, Some(1.89)),
    ("constant:0.3", 84.12, None),
    ("cosine:0.3:0.15", 84.27, None),
    ("linear:0.15:0.3", 83.74, None),
];

/// What one finished run produced.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// Eval curve: (step, loss, accuracy).
    pub eval: Vec<(u64, f64, f64)>,
    /// Mask rate per step.
    pub rates: Vec<(u64, f64)>,
    /// The last evaluation's held-out ELBO (nats per token), when the run scored it.
    pub elbo: Option<f64>,
    /// BLiMP overall accuracy (0–1).
    pub blimp: Option<f64>,
    /// GLUE task scores (0–1) by task name.
    pub glue: BTreeMap<String, f64>,
    /// GLUE average over tasks (×100).
    pub glue_avg: Option<f64>,
    /// Training tokens per second.
    pub tokens_per_sec: Option<f64>,
}

/// Reads a run directory.
pub fn read_run(dir: &Path) -> Result<RunResult> {
    let mut r = RunResult::default();
    for rec in read(&dir.join("metrics.jsonl"))? {
        match rec {
            Record::Eval {
                step,
                loss,
                accuracy,
                eval_elbo,
                ..
            } => {
                r.eval.push((step, loss, accuracy));
                r.elbo = eval_elbo;
            }
            Record::Train {
                step, mask_rate, ..
            } => r.rates.push((step, mask_rate)),
        }
    }
    let json = |p: &Path| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
    };
    if let Some(b) = json(&dir.join("blimp/blimp.json")) {
        r.blimp = b["overall"]["accuracy"].as_f64();
    }
    if let Some(g) = json(&dir.join("glue/glue.json")) {
        r.glue_avg = g["average"].as_f64();
        for t in g["tasks"].as_array().into_iter().flatten() {
            if let (Some(name), Some(score)) = (t["task"].as_str(), t["score"].as_f64()) {
                // glue.json stores the task as serialised (`Sst2`); the report uses GLUE's names.
                let name = evaluation::tasks::Task::ALL
                    .into_iter()
                    .find(|k| {
                        serde_json::to_value(k)
                            .ok()
                            .as_ref()
                            .and_then(|v| v.as_str())
                            == Some(name)
                    })
                    .map(|k| k.dir_name().to_string())
                    .unwrap_or_else(|| name.to_string());
                r.glue.insert(name, score);
            }
        }
    }
    if let Some(s) = json(&dir.join("summary.json")) {
        r.tokens_per_sec = s["tokens_per_sec"].as_f64();
    }
    Ok(r)
}

/// The first eval step whose loss is at or below `target`.
pub fn steps_to_reach(curve: &[(u64, f64)], target: f64) -> Option<u64> {
    curve.iter().find(|(_, l)| *l <= target).map(|(s, _)| *s)
}

/// Mean over runs at the steps every run has.
pub fn mean_curve(curves: &[Vec<(u64, f64)>]) -> Vec<(u64, f64)> {
    let Some(first) = curves.first() else {
        return Vec::new();
    };
    first
        .iter()
        .filter_map(|(step, _)| {
            let vals: Vec<f64> = curves
                .iter()
                .filter_map(|c| c.iter().find(|(s, _)| s == step).map(|(_, v)| *v))
                .collect();
            (vals.len() == curves.len())
                .then(|| (*step, vals.iter().sum::<f64>() / vals.len() as f64))
        })
        .collect()
}

/// Aggregates of one schedule over its finished seeds.
#[derive(Debug, Clone)]
pub struct ScheduleSummary {
    /// The schedule.
    pub schedule: String,
    /// Finished runs.
    pub runs: usize,
    /// Final eval loss, mean and std.
    pub eval_loss: (f64, f64),
    /// Final eval accuracy.
    pub eval_acc: (f64, f64),
    /// Final held-out ELBO (nats per token), for runs that scored it.
    pub elbo: Option<(f64, f64)>,
    /// BLiMP accuracy (×100).
    pub blimp: Option<(f64, f64)>,
    /// GLUE task scores (×100).
    pub glue: BTreeMap<String, (f64, f64)>,
    /// GLUE average (×100).
    pub glue_avg: Option<(f64, f64)>,
    /// Mean eval curve over seeds.
    pub curve: Vec<(u64, f64)>,
    /// Mask rate per step of the first seed.
    pub rates: Vec<(u64, f64)>,
    /// Mean training tokens/s.
    pub tokens_per_sec: Option<f64>,
}

fn stat(values: Vec<f64>) -> Option<(f64, f64)> {
    (!values.is_empty()).then(|| mean_std(&values))
}

/// Summarises finished runs of one schedule.
pub fn summarise(schedule: &str, runs: &[RunResult]) -> ScheduleSummary {
    let finals: Vec<(f64, f64)> = runs
        .iter()
        .filter_map(|r| r.eval.last().map(|e| (e.1, e.2)))
        .collect();
    let mut tasks: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in runs {
        for (t, s) in &r.glue {
            tasks.entry(t.clone()).or_default().push(s * 100.0);
        }
    }
    ScheduleSummary {
        schedule: schedule.to_string(),
        runs: runs.len(),
        eval_loss: stat(finals.iter().map(|f| f.0).collect()).unwrap_or((f64::NAN, 0.0)),
        eval_acc: stat(finals.iter().map(|f| f.1).collect()).unwrap_or((f64::NAN, 0.0)),
        elbo: stat(runs.iter().filter_map(|r| r.elbo).collect()),
        blimp: stat(
            runs.iter()
                .filter_map(|r| r.blimp.map(|b| b * 100.0))
                .collect(),
        ),
        glue: tasks.into_iter().map(|(t, v)| (t, mean_std(&v))).collect(),
        glue_avg: stat(runs.iter().filter_map(|r| r.glue_avg).collect()),
        curve: mean_curve(
            &runs
                .iter()
                .map(|r| r.eval.iter().map(|e| (e.0, e.1)).collect())
                .collect::<Vec<_>>(),
        ),
        rates: runs.first().map(|r| r.rates.clone()).unwrap_or_default(),
        tokens_per_sec: stat(runs.iter().filter_map(|r| r.tokens_per_sec).collect()).map(|s| s.0),
    }
}

fn pm(v: Option<(f64, f64)>, digits: usize) -> String {
    match v {
        Some((m, s)) if m.is_finite() => format!("{m:.digits$} ± {s:.digits$}"),
        _ => "–".into(),
    }
}

fn paper(schedule: &str) -> Option<(f64, Option<f64>)> {
    PAPER
        .iter()
        .find(|(s, _, _)| *s == schedule)
        .map(|(_, g, x)| (*g, *x))
}

/// Compares one difference with the paper's: same sign or not, and against seed noise.
fn verdict(ours: f64, noise: f64, paper: f64) -> String {
    let within = ours.abs() <= noise;
    let sign = if ours.signum() == paper.signum() {
        "same direction as the paper"
    } else {
        "opposite direction to the paper"
    };
    if within {
        format!("{sign}, but within seed noise (±{noise:.2})")
    } else {
        format!("{sign}, larger than seed noise (±{noise:.2})")
    }
}

/// Renders the report from summaries (`plots` = relative paths of the PNGs).
pub fn render(
    cfg: &SweepConfig,
    experiment: &Path,
    sums: &[ScheduleSummary],
    plots: &[String],
) -> String {
    let report = Report::new(cfg, sums);
    let mut s = String::new();
    report.setup(&mut s, experiment);
    report.results_table(&mut s);
    for p in plots {
        let _ = writeln!(s, "![{p}]({p})\n");
    }
    report.agreement(&mut s);
    report.caveats(&mut s);
    s
}

/// What the report's sections share: the sweep, its per-schedule summaries and the baseline.
struct Report<'a> {
    cfg: &'a SweepConfig,
    sums: &'a [ScheduleSummary],
    /// Steps per run.
    steps: u64,
    /// GLUE tasks any run scored, sorted.
    tasks: Vec<String>,
    /// The baseline schedule's summary.
    base: Option<&'a ScheduleSummary>,
    /// The baseline's mean final eval loss: the loss other schedules race to.
    target: f64,
    /// The baseline's last evaluated step.
    base_steps: u64,
}

impl<'a> Report<'a> {
    fn new(cfg: &'a SweepConfig, sums: &'a [ScheduleSummary]) -> Self {
        let steps = cfg.steps().unwrap_or(0);
        let mut tasks: Vec<String> = sums.iter().flat_map(|x| x.glue.keys().cloned()).collect();
        tasks.sort();
        tasks.dedup();
        let base = sums.iter().find(|x| x.schedule == cfg.baseline);
        Report {
            cfg,
            sums,
            steps,
            tasks,
            base,
            target: base.map(|b| b.eval_loss.0).unwrap_or(f64::NAN),
            base_steps: base
                .and_then(|b| b.curve.last().map(|c| c.0))
                .unwrap_or(steps),
        }
    }

    /// A training flag of the sweep as written in its config, or "default".
    fn train_flag(&self, k: &str) -> String {
        self.cfg
            .train
            .get(k)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "default".into())
    }

    /// The corpora (files, and source names with a mixture), the mix, and whether the bundled
    /// sample stood in for an absent corpus.
    fn corpus_text(&self) -> String {
        let corpora = self.cfg.corpora();
        let fallback = corpora.iter().any(|c| c.fallback);
        let corpus_text: Vec<String> = corpora
            .iter()
            .map(|c| {
                let files: Vec<String> = c
                    .inputs
                    .iter()
                    .map(|p| format!("`{}`", p.display()))
                    .collect();
                match &c.name {
                    None => files.join(" + "),
                    Some(n) => format!("{n}: {}", files.join(" + ")),
                }
            })
            .collect();
        let mix = self
            .cfg
            .train
            .get("mix")
            .and_then(|m| m.as_str())
            .map(|m| format!(", mixed as `{m}`"))
            .unwrap_or_default();
        let absent = if fallback {
            " (the bundled sample: the full corpus was absent)"
        } else {
            ""
        };
        corpus_text.join("; ") + &mix + absent
    }

    /// Title, provenance, and the setup of the runs, BLiMP and GLUE.
    fn setup(&self, s: &mut String, experiment: &Path) {
        let (cfg, steps, get) = (self.cfg, self.steps, |k: &str| self.train_flag(k));
        let _ = writeln!(s, "# Masking-rate schedules: {}\n", cfg.name);
        let _ = writeln!(
            s,
            "Generated from the run directories under `{}`; do not edit by hand. Produced by \
             `cargo build --release && target/release/trainer sweep {exp}` (preprocess, train, evaluate, report); \
             `target/release/trainer sweep {exp} --phase report` regenerates this file.\n",
            cfg.out.display(),
            exp = experiment.display()
        );
        let _ = writeln!(
            s,
            "Setup: model `{}{}`, {} steps × batch {} × sequence length {} ({} tokens of budget per run), peak lr {}, \
             layout {}, seeds {:?} (a seed fixes model init, data order and masks, so runs of one seed differ only in the schedule). \
             Corpus: {}. Held-out MLM loss/accuracy at a constant 15% with a fixed mask seed.\n",
            cfg.train
                .get("arch")
                .and_then(|a| a.as_str())
                .map(|a| format!("{a} "))
                .unwrap_or_default(),
            get("model").trim_matches('"'),
            steps,
            get("batch_size"),
            get("seq_len"),
            cfg.train
                .get("batch_size")
                .and_then(|b| b.as_integer())
                .zip(cfg.train.get("seq_len").and_then(|l| l.as_integer()))
                .map(|(b, l)| format!("{:.1}M", (b * l) as f64 * steps as f64 / 1e6))
                .unwrap_or_else(|| "?".into()),
            get("lr"),
            get("layout").trim_matches('"'),
            cfg.seeds,
            self.corpus_text(),
        );
        if let Some(b) = &cfg.blimp {
            let _ = writeln!(
                s,
                "BLiMP: pseudo-log-likelihood accuracy over {} pairs per paradigm.",
                b.max_pairs
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "all".into())
            );
        }
        if let Some(g) = &cfg.glue {
            let _ = writeln!(
                s,
                "GLUE: dev-set scores (tasks with two metrics: their mean), {} training examples per task, {} dev examples per task, epochs {}, {} fine-tuning seed(s), learning rate {}, the paper's batch sizes.",
                g.max_train.map(|m| format!("at most {m}")).unwrap_or_else(|| "all".into()),
                g.max_eval.map(|m| format!("at most {m}")).unwrap_or_else(|| "all".into()),
                g.epochs.map(|e| e.to_string()).unwrap_or_else(|| "as in the paper".into()),
                g.seeds,
                g.lr.map(|l| l.to_string()).unwrap_or_else(|| "the paper's per task".into())
            );
        }
    }

    /// Whether any schedule's runs scored the held-out ELBO (a column then).
    fn has_elbo(&self) -> bool {
        self.sums.iter().any(|x| x.elbo.is_some())
    }

    /// One row per schedule: eval loss and accuracy, BLiMP, GLUE, steps to the baseline's loss.
    fn results_table(&self, s: &mut String) {
        let _ = writeln!(s, "\n## Results (mean ± std over seeds)\n");
        let mut header = String::from("| schedule | runs | eval loss | eval acc |");
        if self.has_elbo() {
            header.push_str(" ELBO (nats/token) |");
        }
        header.push_str(" BLiMP |");
        for t in &self.tasks {
            let _ = write!(header, " {t} |");
        }
        header.push_str(
            " GLUE avg | steps to baseline loss | speed-up | paper GLUE avg | paper speed-up |",
        );
        let _ = writeln!(s, "{header}");
        let _ = writeln!(s, "|{}", "---|".repeat(header.matches('|').count() - 1));
        for x in self.sums {
            let _ = writeln!(s, "{}", self.results_row(x));
        }
        let _ = writeln!(
            s,
            "\n\"Steps to baseline loss\": the first evaluation step at which the schedule's mean eval-loss curve reaches the \
             `{}` baseline's mean final eval loss ({:.4}); speed-up = baseline steps / that step (the paper's measure). \
             Evaluations are every {} steps, so the step is rounded up to that grid.\n",
            self.cfg.baseline,
            self.target,
            self.train_flag("eval_every")
        );
    }

    /// One schedule's row of the results table.
    fn results_row(&self, x: &ScheduleSummary) -> String {
        let reach = steps_to_reach(&x.curve, self.target);
        let (p_glue, p_speed) = paper(&x.schedule).unzip();
        let mut row = format!(
            "| `{}` | {} | {} | {} |",
            x.schedule,
            x.runs,
            pm(Some(x.eval_loss), 4),
            pm(Some(x.eval_acc), 4),
        );
        if self.has_elbo() {
            let _ = write!(row, " {} |", pm(x.elbo, 4));
        }
        let _ = write!(row, " {} |", pm(x.blimp, 2));
        for t in &self.tasks {
            let _ = write!(row, " {} |", pm(x.glue.get(t).copied(), 2));
        }
        let dash = || "–".to_string();
        let _ = write!(
            row,
            " {} | {} | {} | {} | {} |",
            pm(x.glue_avg, 2),
            reach
                .map(|r| r.to_string())
                .unwrap_or_else(|| "not reached".into()),
            reach
                .map(|r| format!("{:.2}x", self.base_steps as f64 / r as f64))
                .unwrap_or_else(dash),
            p_glue.map(|g| format!("{g:.2}")).unwrap_or_else(dash),
            p_speed
                .flatten()
                .map(|v| format!("{v:.2}x"))
                .unwrap_or_else(dash)
        );
        row
    }

    /// Each schedule against the baseline and against the paper's numbers.
    fn agreement(&self, s: &mut String) {
        let (cfg, sums, base) = (self.cfg, self.sums, self.base);
        let _ = writeln!(s, "## Agreement with the paper\n");
        let mut by_loss: Vec<&ScheduleSummary> = sums.iter().collect();
        by_loss.sort_by(|a, b| a.eval_loss.0.total_cmp(&b.eval_loss.0));
        let mut by_paper: Vec<(&str, f64)> = PAPER.iter().map(|(s, g, _)| (*s, *g)).collect();
        by_paper.sort_by(|a, b| b.1.total_cmp(&a.1));
        let _ = writeln!(
            s,
            "- Ranking here by final eval loss (best first): {}. The paper's ranking by GLUE average: {}.",
            by_loss
                .iter()
                .map(|x| format!("`{}`", x.schedule))
                .collect::<Vec<_>>()
                .join(" < "),
            by_paper
                .iter()
                .map(|(s, g)| format!("`{s}` ({g:.2})"))
                .collect::<Vec<_>>()
                .join(" > ")
        );
        let Some(b) = base else { return };
        for x in sums.iter().filter(|x| x.schedule != cfg.baseline) {
            if let Some(paper_numbers) = paper(&x.schedule) {
                self.compare_with_baseline(s, x, b, paper_numbers);
            }
        }
    }

    /// `- x vs baseline: eval loss, speed-up, GLUE and BLiMP differences` against seed noise and
    /// the paper's `(GLUE average, speed-up)` for `x`.
    fn compare_with_baseline(
        &self,
        s: &mut String,
        x: &ScheduleSummary,
        b: &ScheduleSummary,
        (p_glue, p_speed): (f64, Option<f64>),
    ) {
        let (cfg, target, base_steps) = (self.cfg, self.target, self.base_steps);
        let p_base = paper(&cfg.baseline).map(|p| p.0).unwrap_or(f64::NAN);
        let _ = write!(s, "- `{}` vs `{}`: ", x.schedule, cfg.baseline);
        let dl = x.eval_loss.0 - b.eval_loss.0;
        let noise_l = (x.eval_loss.1.powi(2) + b.eval_loss.1.powi(2)).sqrt();
        let _ = write!(
            s,
            "eval loss {dl:+.4} ({} seed noise ±{noise_l:.4})",
            if dl.abs() > noise_l {
                "beyond"
            } else {
                "within"
            }
        );
        if let Some(r) = steps_to_reach(&x.curve, target) {
            let _ = write!(
                s,
                "; reaches the baseline's final loss {:.2}x sooner{}",
                base_steps as f64 / r as f64,
                p_speed
                    .map(|v| format!(" (paper: {v:.2}x)"))
                    .unwrap_or_default()
            );
        }
        if let (Some(g), Some(gb)) = (x.glue_avg, b.glue_avg) {
            let d = g.0 - gb.0;
            let noise = (g.1.powi(2) + gb.1.powi(2)).sqrt();
            let _ = write!(
                s,
                "; GLUE avg {d:+.2} vs the paper's {:+.2}: {}",
                p_glue - p_base,
                verdict(d, noise, p_glue - p_base)
            );
        }
        if let (Some(bl), Some(bb)) = (x.blimp, b.blimp) {
            let noise = (bl.1.powi(2) + bb.1.powi(2)).sqrt();
            let _ = write!(s, "; BLiMP {:+.2} (seed noise ±{noise:.2})", bl.0 - bb.0);
        }
        let _ = writeln!(s, ".");
    }

    /// Why a small run may disagree, uninformative GLUE columns, and the training speed.
    fn caveats(&self, s: &mut String) {
        let (sums, tasks) = (self.sums, &self.tasks);
        let _ = writeln!(
            s,
            "\nWhy a small run may disagree: the paper trains BERT-base for 70k steps of 4,096 × 128 tokens (≈ 36.7B tokens); \
             this sweep trains a far smaller model on a far smaller budget, where the model is still early in learning and a \
             higher masking rate mostly changes how much signal each step carries. Differences of a few tenths of a GLUE point \
             are within seed noise at this scale (compare each ± above), and GLUE here is fine-tuned on capped training sets. \
             The eval-loss comparison is the most sensitive measure at this size; the downstream scores are reported for completeness."
        );
        let flat: Vec<&String> = tasks
            .iter()
            .filter(|t| {
                let vals: Vec<(f64, f64)> = sums
                    .iter()
                    .filter_map(|x| x.glue.get(*t).copied())
                    .collect();
                vals.len() > 1 && vals.iter().all(|v| v.1 == 0.0 && v.0 == vals[0].0)
            })
            .collect();
        if !flat.is_empty() {
            let _ = writeln!(
                s,
                "\nEvery run scored exactly the same on {} (zero spread over seeds and schedules): the fine-tuned \
                 model predicts one class there, so those columns carry no information about the schedules at this scale.",
                flat.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        let speeds: Vec<f64> = sums.iter().filter_map(|x| x.tokens_per_sec).collect();
        if !speeds.is_empty() {
            let _ = writeln!(
                s,
                "\nTraining ran at {:.0} tokens/s on average over the runs (wall clock, including evaluations).",
                speeds.iter().sum::<f64>() / speeds.len() as f64
            );
        }
    }
}

/// A sweep chart: file name, title, y label and the points of one schedule.
type Chart = (
    &'static str,
    &'static str,
    &'static str,
    Box<dyn Fn(&ScheduleSummary) -> Vec<(f64, f64)>>,
);

/// Collects the finished runs, draws the plots beside the report and writes it; returns its text.
pub fn write(cfg: &SweepConfig, experiment: &Path) -> Result<String> {
    let steps = cfg.steps()?;
    let mut sums = Vec::new();
    for sched in &cfg.schedules {
        let mut runs = Vec::new();
        for &seed in &cfg.seeds {
            let dir = cfg.run_dir(sched, seed);
            if run_state(&dir, steps)? == RunState::Complete {
                runs.push(read_run(&dir)?);
            }
        }
        if !runs.is_empty() {
            sums.push(summarise(sched, &runs));
        }
    }
    let report_dir = cfg
        .report
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&report_dir)?;
    let mut plots = Vec::new();
    let charts: [Chart; 2] = [
        (
            "sweep-eval-loss.png",
            "held-out MLM loss at 15% (mean over seeds)",
            "loss",
            Box::new(|x| x.curve.iter().map(|(s, l)| (*s as f64, *l)).collect()),
        ),
        (
            "sweep-mask-rate.png",
            "masking rate",
            "rate",
            Box::new(|x| x.rates.iter().map(|(s, r)| (*s as f64, *r)).collect()),
        ),
    ];
    for (file, title, y, pick) in &charts {
        let series: Vec<Series> = sums
            .iter()
            .map(|x| Series {
                label: x.schedule.clone(),
                points: pick(x),
            })
            .collect();
        if series.iter().any(|s| !s.points.is_empty()) {
            line_chart(&report_dir.join(file), title, "step", y, &series)?;
            plots.push(file.to_string());
        }
    }
    let text = render(cfg, experiment, &sums, &plots);
    shared::atomic::write_file(&cfg.report, text.as_bytes())?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's last evaluation's ELBO reaches the schedule's summary (mean, std over seeds);
    /// runs without one leave it out.
    #[test]
    fn the_elbo_of_each_seed_reaches_the_summary() {
        let run = |elbo: Option<f64>| RunResult {
            eval: vec![(10, 5.0, 0.1)],
            elbo,
            ..Default::default()
        };
        let s = summarise(
            "constant:0.15",
            &[run(Some(6.0)), run(Some(8.0)), run(None)],
        );
        let (mean, std) = s.elbo.unwrap();
        assert_eq!(mean, 7.0);
        assert!(
            (std - 2f64.sqrt()).abs() < 1e-12,
            "sample std of 6 and 8: {std}"
        );
        assert_eq!(summarise("x", &[run(None)]).elbo, None);
    }
}
