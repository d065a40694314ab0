//! `--profile`: where each step's time goes and what it moves between host and device.
//!
//! Each step's phases (data wait, forward, backward, all-reduce, optimizer) are timed with a
//! device sync at each boundary ([`PhaseTimes`], measured by [`crate::step::TrainStep`]), and the
//! [`model::transfer`] ledger is read at each step's start, so a row counts every crossing from
//! one step's start to the next: the step itself plus its logging read, evaluation or checkpoint
//! (flagged in the row), and, where `scripts/launch-counter.c` is preloaded, the CUDA kernel
//! launches over the same span ([`kernel_launches`]). Rows go to `profile.jsonl` (rewritten whole, atomically, at each
//! checkpoint and at the end); [`ProfileSummary`] goes into `summary.json` and is printed.

use anyhow::Result;
use model::transfer::{ledger, Ledger};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Seconds of one step's phases, each ended by a device sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseTimes {
    /// Forward passes (data waits excluded).
    pub forward_sec: f64,
    /// Backward passes and gradient accumulation.
    pub backward_sec: f64,
    /// Summing gradients across ranks.
    pub all_reduce_sec: f64,
    /// Clipping and the optimizer update.
    pub optimizer_sec: f64,
}

/// One step of `profile.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileRow {
    /// The step.
    pub step: u64,
    /// Seconds waiting for the data loader.
    pub data_wait_sec: f64,
    /// The phases.
    #[serde(flatten)]
    pub phases: PhaseTimes,
    /// Host↔device crossings from this step's start to the next one's.
    #[serde(flatten)]
    pub transfers: Ledger,
    /// Whether the metrics of pending steps were read back after this step (`--log-every`).
    pub read_back: bool,
    /// Whether a held-out evaluation ran after this step.
    pub evaluated: bool,
    /// Whether a checkpoint was saved after this step.
    pub checkpointed: bool,
    /// CUDA kernel launches from this step's start to the next one's, where a launch counter is
    /// preloaded (`scripts/launch-counter.c`); `None` without one.
    pub launches: Option<u64>,
}

impl ProfileRow {
    /// Whether the row is a steady step: no read-back, evaluation or checkpoint after it.
    pub fn steady(&self) -> bool {
        !(self.read_back || self.evaluated || self.checkpointed)
    }
}

/// What the profile found, in `summary.json`: means over the steps after the first (whose
/// cached tables and lazily loaded kernels make it unlike the rest).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileSummary {
    /// Steps profiled (the first excluded).
    pub steps: u64,
    /// Mean seconds per step waiting for data.
    pub data_wait_sec: f64,
    /// Mean phase seconds per step.
    #[serde(flatten)]
    pub phases: PhaseTimes,
    /// Mean uploads per steady step.
    pub steady_uploads: f64,
    /// Mean bytes uploaded per steady step.
    pub steady_upload_bytes: f64,
    /// Reads in steady steps, in all.
    pub steady_reads: u64,
    /// Reads in all profiled steps (logging, evaluation, checkpoints).
    pub reads: u64,
    /// Mean CUDA kernel launches per steady step, where a launch counter is preloaded.
    pub steady_launches: Option<f64>,
}

/// A run's profiler: rows in memory, written at checkpoints and at the end.
pub struct Profiler {
    path: Option<PathBuf>,
    rows: Vec<ProfileRow>,
    at_step_start: Ledger,
    launches_at_step_start: Option<u64>,
}

/// The preloaded launch counter's total (`maskrate_kernel_launches`), if one is loaded.
pub fn kernel_launches() -> Option<u64> {
    static COUNTER: std::sync::OnceLock<Option<extern "C" fn() -> u64>> =
        std::sync::OnceLock::new();
    let counter = COUNTER.get_or_init(|| {
        let name = c"maskrate_kernel_launches";
        // SAFETY: dlsym with a NUL-terminated name; the symbol, when present, is the counter's
        // `uint64_t (void)` function.
        let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        (!f.is_null())
            .then(|| unsafe { std::mem::transmute::<*mut libc::c_void, extern "C" fn() -> u64>(f) })
    });
    counter.map(|f| f())
}

/// Something that happened after a step.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    /// Pending metrics were read back.
    ReadBack,
    /// A held-out evaluation ran.
    Evaluated,
    /// A checkpoint was saved.
    Checkpointed,
}

impl Profiler {
    /// A profiler writing `path` (`None`: a rank that writes no files).
    pub fn new(path: Option<PathBuf>) -> Self {
        Profiler {
            path,
            rows: Vec::new(),
            at_step_start: ledger(),
            launches_at_step_start: kernel_launches(),
        }
    }

    /// Starts `step`'s row (closing the previous row's transfers).
    pub fn begin(&mut self, step: u64) {
        self.close();
        self.rows.push(ProfileRow {
            step,
            ..Default::default()
        });
    }

    /// The current step's timings.
    pub fn phases(&mut self, data_wait_sec: f64, phases: PhaseTimes) {
        if let Some(r) = self.rows.last_mut() {
            r.data_wait_sec = data_wait_sec;
            r.phases = phases;
        }
    }

    /// Marks `event` on the current step.
    pub fn mark(&mut self, event: Event) {
        if let Some(r) = self.rows.last_mut() {
            match event {
                Event::ReadBack => r.read_back = true,
                Event::Evaluated => r.evaluated = true,
                Event::Checkpointed => r.checkpointed = true,
            }
        }
    }

    fn close(&mut self) {
        let now = ledger();
        if let Some(r) = self.rows.last_mut() {
            let d = now.since(&self.at_step_start);
            let t = &mut r.transfers;
            t.uploads += d.uploads;
            t.upload_bytes += d.upload_bytes;
            t.reads += d.reads;
            t.read_bytes += d.read_bytes;
        }
        self.at_step_start = now;
        let launches = kernel_launches();
        if let (Some(r), Some(now), Some(then)) =
            (self.rows.last_mut(), launches, self.launches_at_step_start)
        {
            r.launches = Some(r.launches.unwrap_or(0) + now - then);
        }
        self.launches_at_step_start = launches;
    }

    /// Writes `profile.jsonl` as it stands (all rows, the current one's transfers so far).
    pub fn save(&mut self) -> Result<()> {
        self.close();
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut text = String::new();
        for r in &self.rows {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        shared::atomic::write_file(path, text.as_bytes())?;
        Ok(())
    }

    /// Saves the rows and summarises them.
    pub fn finish(mut self) -> Result<ProfileSummary> {
        self.save()?;
        Ok(summarise(&self.rows))
    }
}

/// Means over `rows` after the first.
pub fn summarise(rows: &[ProfileRow]) -> ProfileSummary {
    let rows = rows.get(1..).unwrap_or(&[]);
    let n = rows.len().max(1) as f64;
    let steady: Vec<&ProfileRow> = rows.iter().filter(|r| r.steady()).collect();
    let m = steady.len().max(1) as f64;
    let mean = |f: fn(&ProfileRow) -> f64| rows.iter().map(f).sum::<f64>() / n;
    ProfileSummary {
        steps: rows.len() as u64,
        data_wait_sec: mean(|r| r.data_wait_sec),
        phases: PhaseTimes {
            forward_sec: mean(|r| r.phases.forward_sec),
            backward_sec: mean(|r| r.phases.backward_sec),
            all_reduce_sec: mean(|r| r.phases.all_reduce_sec),
            optimizer_sec: mean(|r| r.phases.optimizer_sec),
        },
        steady_uploads: steady
            .iter()
            .map(|r| r.transfers.uploads as f64)
            .sum::<f64>()
            / m,
        steady_upload_bytes: steady
            .iter()
            .map(|r| r.transfers.upload_bytes as f64)
            .sum::<f64>()
            / m,
        steady_reads: steady.iter().map(|r| r.transfers.reads).sum(),
        reads: rows.iter().map(|r| r.transfers.reads).sum(),
        steady_launches: steady
            .iter()
            .map(|r| r.launches.map(|l| l as f64))
            .sum::<Option<f64>>()
            .map(|l| l / m),
    }
}

impl std::fmt::Display for ProfileSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.phases;
        write!(
            f,
            "profile over {} steps (ms per step): data wait {:.1}, forward {:.1}, backward {:.1}, \
             all-reduce {:.1}, optimizer {:.1}; steady step: {:.1} uploads ({:.0} bytes), {} reads{}",
            self.steps,
            1e3 * self.data_wait_sec,
            1e3 * p.forward_sec,
            1e3 * p.backward_sec,
            1e3 * p.all_reduce_sec,
            1e3 * p.optimizer_sec,
            self.steady_uploads,
            self.steady_upload_bytes,
            self.steady_reads,
            match self.steady_launches {
                Some(l) => format!(", {l:.0} kernel launches"),
                None => String::new(),
            }
        )
    }
}
