//! `trainer sweep EXPERIMENT.toml`: the paper's comparison as one resumable experiment.
//!
//! Reads top to bottom: preprocess the corpus once → train every (schedule, seed) with identical
//! model, data order and budget → evaluate each final checkpoint (held-out MLM loss comes from the
//! run itself; BLiMP; GLUE) → write the report ([`report`]). Every step is a child process of the
//! `preprocess`/`trainer` binaries and is skipped when its output is complete, so a killed sweep
//! continues where it stopped; `--phase` runs one part.

pub mod report;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the corpus comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataSection {
    /// The corpus (files or directories), when the runs train on one.
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
    /// Used when an input is missing (the bundled sample).
    #[serde(default)]
    pub fallback: PathBuf,
    /// Extra `preprocess` flags (every corpus).
    #[serde(default)]
    pub preprocess_args: Vec<String>,
    /// Named corpora for a mixture (`[data.sources.wiki]`), weighted by `[train] mix`; instead of
    /// `inputs`.
    #[serde(default)]
    pub sources: std::collections::BTreeMap<String, SourceSection>,
}

/// One named corpus of a mixture sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceSection {
    /// Its files or directories.
    pub inputs: Vec<PathBuf>,
    /// Used when an input is missing.
    pub fallback: PathBuf,
}

/// A corpus the sweep preprocesses once, and where its shards go.
#[derive(Debug, Clone, PartialEq)]
pub struct Corpus {
    /// The source name (`None`: the one unnamed corpus).
    pub name: Option<String>,
    /// The inputs used: the configured ones, or the fallback when one is missing.
    pub inputs: Vec<PathBuf>,
    /// Whether the fallback is used.
    pub fallback: bool,
    /// Its shard directory under the sweep's output.
    pub shards: PathBuf,
}

impl Corpus {
    /// The `--shards` value: `DIR` or `NAME=DIR`.
    pub fn shards_arg(&self) -> std::ffi::OsString {
        match &self.name {
            None => self.shards.clone().into_os_string(),
            Some(n) => format!("{n}={}", self.shards.display()).into(),
        }
    }
}

/// BLiMP evaluation of every run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlimpSection {
    /// BLiMP directory.
    pub data: PathBuf,
    /// Used when `data` is missing.
    pub fallback: PathBuf,
    /// Pairs per paradigm (all when absent).
    pub max_pairs: Option<usize>,
}

/// GLUE evaluation of every run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GlueSection {
    /// GLUE directory.
    pub data: PathBuf,
    /// Used when `data` is missing.
    pub fallback: PathBuf,
    /// Tasks (all present when empty).
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Training examples per task (all when absent).
    pub max_train: Option<usize>,
    /// Dev examples per dev file (all when absent).
    pub max_eval: Option<usize>,
    /// Epochs for every task (the paper's per task when absent).
    pub epochs: Option<usize>,
    /// Learning rate for every task (the paper's per task when absent).
    pub lr: Option<f64>,
    /// Fine-tuning seeds per task.
    #[serde(default = "one")]
    pub seeds: u64,
}

fn one() -> u64 {
    1
}

/// An experiment description (`experiments/*.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepConfig {
    /// Name shown in the report.
    pub name: String,
    /// Directory for shards, runs and the report's plots.
    pub out: PathBuf,
    /// Path of the generated report.
    pub report: PathBuf,
    /// The corpus.
    pub data: DataSection,
    /// Masking-rate schedules compared.
    pub schedules: Vec<String>,
    /// The schedule the others are measured against (steps to its final eval loss).
    pub baseline: String,
    /// Seeds (model init, data order, masks): each schedule is trained once per seed.
    pub seeds: Vec<u64>,
    /// Training settings shared by every run (any `trainer` flag, as in `--config` files).
    pub train: toml::Table,
    /// BLiMP, if evaluated.
    pub blimp: Option<BlimpSection>,
    /// GLUE, if evaluated.
    pub glue: Option<GlueSection>,
}

impl SweepConfig {
    /// Reads and checks an experiment file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: SweepConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        for s in cfg.schedules.iter().chain([&cfg.baseline]) {
            s.parse::<shared::schedule::MaskSchedule>()
                .map_err(|e| anyhow::anyhow!("{}: schedule {s:?}: {e}", path.display()))?;
        }
        if !cfg.schedules.contains(&cfg.baseline) {
            bail!(
                "{}: baseline {:?} is not among the schedules",
                path.display(),
                cfg.baseline
            );
        }
        if cfg.seeds.is_empty() {
            bail!("{}: no seeds", path.display());
        }
        let d = &cfg.data;
        if d.sources.is_empty() == (d.inputs.is_empty() && d.fallback.as_os_str().is_empty()) {
            bail!(
                "{}: [data] needs either inputs and fallback (one corpus) or [data.sources.NAME] \
                 tables (a mixture), not both",
                path.display()
            );
        }
        if d.sources.len() > 1 && !cfg.train.contains_key("mix") {
            bail!(
                "{}: a mixture of {} sources needs [train] mix = \"NAME=WEIGHT,...\"",
                path.display(),
                d.sources.len()
            );
        }
        let text_of = |key: &str| cfg.train.get(key).and_then(|v| v.as_str());
        if let Some(arch) = text_of("arch") {
            model::Arch::parse(arch)
                .map_err(|e| anyhow::anyhow!("{}: [train] arch: {e}", path.display()))?;
        }
        if let Some(layout) = text_of("layout") {
            layout
                .parse::<shared::sampler::Layout>()
                .map_err(|e| anyhow::anyhow!("{}: [train] layout: {e}", path.display()))?;
        }
        for key in ["shards", "schedule", "seed", "out", "resume", "config"] {
            if cfg.train.contains_key(key) {
                bail!(
                    "{}: [train] must not set {key:?}; the sweep sets it per run",
                    path.display()
                );
            }
        }
        Ok(cfg)
    }

    /// Steps of every run.
    pub fn steps(&self) -> Result<u64> {
        self.train
            .get("steps")
            .and_then(|v| v.as_integer())
            .map(|v| v as u64)
            .context("[train] needs steps")
    }

    /// The shard directory.
    pub fn shards(&self) -> PathBuf {
        self.out.join("shards")
    }

    /// The run directory of (schedule, seed).
    pub fn run_dir(&self, schedule: &str, seed: u64) -> PathBuf {
        self.out.join("runs").join(run_name(schedule, seed))
    }

    /// The corpus actually used: the inputs when all exist, else the fallback.
    /// Every corpus to preprocess: the one unnamed corpus, or each named source.
    pub fn corpora(&self) -> Vec<Corpus> {
        let pick = |inputs: &[PathBuf], fallback: &Path| {
            if !inputs.is_empty() && inputs.iter().all(|p| available(p)) {
                (inputs.to_vec(), false)
            } else {
                (vec![fallback.to_path_buf()], true)
            }
        };
        if self.data.sources.is_empty() {
            let (inputs, fallback) = self.corpus();
            return vec![Corpus {
                name: None,
                inputs,
                fallback,
                shards: self.shards(),
            }];
        }
        self.data
            .sources
            .iter()
            .map(|(name, src)| {
                let (inputs, fallback) = pick(&src.inputs, &src.fallback);
                Corpus {
                    name: Some(name.clone()),
                    inputs,
                    fallback,
                    shards: self.shards().join(name),
                }
            })
            .collect()
    }

    pub fn corpus(&self) -> (Vec<PathBuf>, bool) {
        if !self.data.inputs.is_empty() && self.data.inputs.iter().all(|p| available(p)) {
            (self.data.inputs.clone(), false)
        } else {
            (vec![self.data.fallback.clone()], true)
        }
    }
}

/// An input that exists locally, or a bucket URL (`preprocess` reads it; a missing one fails there
/// with the URL, rather than silently falling back to the sample).
fn available(input: &Path) -> bool {
    shared::store::is_remote(input) || input.exists()
}

/// A run's directory name: `linear-0.3-0.15-seed0` for `linear:0.3:0.15`, seed 0.
pub fn run_name(schedule: &str, seed: u64) -> String {
    let slug: String = schedule
        .chars()
        .map(|c| match c {
            ':' | '@' | '/' => '-',
            c => c,
        })
        .collect();
    format!("{slug}-seed{seed}")
}

/// How far a run has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// No checkpoint.
    New,
    /// Has checkpoints but not the last step: continue with `--resume`.
    Partial(u64),
    /// Its last checkpoint is the final step.
    Complete,
}

/// The state of the run in `dir` with a budget of `steps`.
pub fn run_state(dir: &Path, steps: u64) -> Result<RunState> {
    Ok(match training::checkpoint::list(dir)?.last() {
        None => RunState::New,
        Some((s, _)) if *s >= steps => RunState::Complete,
        Some((s, _)) => RunState::Partial(*s),
    })
}

/// Which parts to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Everything, in order.
    All,
    /// Preprocess the corpus.
    Preprocess,
    /// Train the runs.
    Train,
    /// BLiMP and GLUE of finished runs.
    Eval,
    /// Write the report from whatever is finished.
    Report,
}

/// `trainer sweep` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SweepArgs {
    /// Experiment file (see experiments/).
    pub experiment: PathBuf,
    /// Run only this part (each part skips what is already complete).
    #[arg(long, value_enum, default_value_t = Phase::All)]
    pub phase: Phase,
    /// Print what would run and the state of each run, without running anything.
    #[arg(long)]
    pub dry_run: bool,
}

fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        bail!(
            "{} not found beside {}; build both binaries (cargo build --release)",
            path.display(),
            exe.display()
        );
    }
    Ok(path)
}

fn run_child(cmd: &mut Command, what: &str) -> Result<()> {
    eprintln!("sweep: {what}\n  $ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status}); re-run the sweep to continue from here");
    }
    Ok(())
}

fn existing(primary: &Path, fallback: &Path) -> PathBuf {
    if primary.exists() {
        primary.to_path_buf()
    } else {
        fallback.to_path_buf()
    }
}

/// Runs the sweep (or one phase of it): preprocess the corpus once, train every schedule × seed,
/// evaluate each finished run, write the report. Each phase skips what is already done.
pub fn run_experiment(args: &SweepArgs) -> Result<()> {
    let cfg = SweepConfig::load(&args.experiment)?;
    let steps = cfg.steps()?;
    if args.dry_run {
        return print_plan(&cfg, steps);
    }
    let want = |p: Phase| args.phase == Phase::All || args.phase == p;
    std::fs::create_dir_all(&cfg.out)?;
    let _lock = shared::lock::DirLock::acquire(&cfg.out, "trainer sweep")?;
    for corpus in cfg.corpora() {
        if want(Phase::Preprocess) && !corpus.shards.join("manifest.json").exists() {
            let mut cmd = Command::new(sibling_binary("preprocess")?);
            cmd.args(&corpus.inputs).arg("--out").arg(&corpus.shards);
            cmd.args(&cfg.data.preprocess_args);
            let what = match &corpus.name {
                None => "preprocessing the corpus once".to_string(),
                Some(n) => format!("preprocessing source {n} once"),
            };
            run_child(&mut cmd, &what)?;
        }
    }
    let train_toml = cfg.out.join("train.toml");
    shared::atomic::write_file(&train_toml, toml::to_string(&cfg.train)?.as_bytes())?;
    let me = std::env::current_exe()?;
    // Every run is trained before any is evaluated: evaluation never holds up training.
    if want(Phase::Train) {
        for &seed in &cfg.seeds {
            for s in &cfg.schedules {
                train_run(&cfg, &me, &train_toml, s, seed, steps)?;
            }
        }
    }
    if want(Phase::Eval) {
        for &seed in &cfg.seeds {
            for s in &cfg.schedules {
                let dir = cfg.run_dir(s, seed);
                if run_state(&dir, steps)? != RunState::Complete {
                    eprintln!("sweep: {} not trained yet, not evaluated", dir.display());
                    continue;
                }
                evaluate_run(&cfg, &me, s, seed)?;
            }
        }
    }
    if want(Phase::Report) {
        let text = report::write(&cfg, &args.experiment)?;
        eprintln!(
            "sweep: wrote {} ({} lines)",
            cfg.report.display(),
            text.lines().count()
        );
    }
    Ok(())
}

/// `--dry-run`: the corpus, the shards and each run's state, without doing anything.
fn print_plan(cfg: &SweepConfig, steps: u64) -> Result<()> {
    for corpus in cfg.corpora() {
        let inputs: Vec<String> = corpus
            .inputs
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        println!(
            "corpus{}: {}{}",
            corpus.name.map(|n| format!(" {n}")).unwrap_or_default(),
            inputs.join(", "),
            if corpus.fallback { " (fallback)" } else { "" }
        );
        println!(
            "shards: {} ({})",
            corpus.shards.display(),
            if corpus.shards.join("manifest.json").exists() {
                "done"
            } else {
                "to do"
            }
        );
    }
    for s in &cfg.schedules {
        for &seed in &cfg.seeds {
            let dir = cfg.run_dir(s, seed);
            let state = run_state(&dir, steps)?;
            let evals = [("blimp", "blimp/blimp.json"), ("glue", "glue/glue.json")]
                .iter()
                .map(|(n, f)| {
                    format!(
                        "{n} {}",
                        if dir.join(f).exists() {
                            "done"
                        } else {
                            "to do"
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            println!("{}: {state:?}; {evals}", dir.display());
        }
    }
    Ok(())
}

/// Trains (or resumes) one schedule × seed unless it is complete.
fn train_run(
    cfg: &SweepConfig,
    me: &Path,
    train_toml: &Path,
    s: &str,
    seed: u64,
    steps: u64,
) -> Result<()> {
    let dir = cfg.run_dir(s, seed);
    let state = run_state(&dir, steps)?;
    if state == RunState::Complete {
        eprintln!("sweep: {} complete, skipped", dir.display());
        return Ok(());
    }
    let mut cmd = Command::new(me);
    cmd.arg("--config").arg(train_toml);
    for corpus in cfg.corpora() {
        cmd.arg("--shards").arg(corpus.shards_arg());
    }
    cmd.arg("--schedule")
        .arg(s)
        .arg("--seed")
        .arg(seed.to_string())
        .arg("--out")
        .arg(&dir);
    if matches!(state, RunState::Partial(_)) {
        cmd.arg("--resume");
    }
    run_child(&mut cmd, &format!("training {}", run_name(s, seed)))?;
    Ok(())
}

/// BLiMP and GLUE of one trained run, each unless its results exist.
fn evaluate_run(cfg: &SweepConfig, me: &Path, s: &str, seed: u64) -> Result<()> {
    let dir = cfg.run_dir(s, seed);
    if let Some(b) = &cfg.blimp {
        if !dir.join("blimp/blimp.json").exists() {
            let mut cmd = Command::new(me);
            cmd.arg("blimp")
                .arg("--checkpoint")
                .arg(&dir)
                .arg("--data")
                .arg(existing(&b.data, &b.fallback))
                .arg("--quiet");
            if let Some(m) = b.max_pairs {
                cmd.arg("--max-pairs").arg(m.to_string());
            }
            run_child(&mut cmd, &format!("BLiMP of {}", run_name(s, seed)))?;
        }
    }
    if let Some(g) = &cfg.glue {
        if !dir.join("glue/glue.json").exists() {
            let mut cmd = Command::new(me);
            cmd.arg("glue")
                .arg("--checkpoint")
                .arg(&dir)
                .arg("--data")
                .arg(existing(&g.data, &g.fallback))
                .arg("--seeds")
                .arg(g.seeds.to_string())
                .arg("--quiet");
            if !g.tasks.is_empty() {
                cmd.arg("--tasks").arg(g.tasks.join(","));
            }
            for (flag, v) in [
                ("--max-train", g.max_train),
                ("--max-eval", g.max_eval),
                ("--epochs", g.epochs),
            ] {
                if let Some(v) = v {
                    cmd.arg(flag).arg(v.to_string());
                }
            }
            if let Some(lr) = g.lr {
                cmd.arg("--lr").arg(lr.to_string());
            }
            run_child(&mut cmd, &format!("GLUE of {}", run_name(s, seed)))?;
        }
    }
    Ok(())
}
