//! The progress bar (input bytes, with docs/s, MB/s, tokens/s and ETA) and the final summary.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shared::shard::Totals;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Live progress of a run.
pub struct Progress {
    bar: ProgressBar,
    bytes: Arc<AtomicU64>,
    start: Instant,
    start_totals: Totals,
}

impl Progress {
    /// A bar over `total_bytes` of input; hidden when `visible` is false or stderr is not a terminal.
    pub fn new(total_bytes: u64, visible: bool, resumed_from: &Totals) -> Self {
        let bar = ProgressBar::with_draw_target(
            Some(total_bytes),
            if visible {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}")
                .expect("valid template"),
        );
        Progress {
            bar,
            bytes: Arc::new(AtomicU64::new(0)),
            start: Instant::now(),
            start_totals: resumed_from.clone(),
        }
    }

    /// Counter of input bytes read, shared with the reader.
    pub fn bytes_counter(&self) -> Arc<AtomicU64> {
        self.bytes.clone()
    }

    /// Refreshes position and rates.
    pub fn update(&self, totals: &Totals) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let docs = totals.documents - self.start_totals.documents;
        let tokens = totals.tokens - self.start_totals.tokens;
        self.bar.set_position(self.bytes.load(Ordering::Relaxed));
        self.bar.set_message(format!(
            "{} docs {:.0} docs/s {:.0} tok/s",
            totals.documents,
            docs as f64 / secs,
            tokens as f64 / secs
        ));
    }

    /// Prints a line above the bar.
    pub fn println(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Seconds since the run (or resumed run) started.
    pub fn elapsed_secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// The end-of-run report.
pub fn summary(
    totals: &Totals,
    shards: usize,
    bytes_out: u64,
    elapsed_secs: f64,
    resumed: bool,
) -> String {
    let secs = elapsed_secs.max(1e-9);
    let per_doc = totals.tokens as f64 / totals.documents.max(1) as f64;
    let mut s = String::new();
    s += &format!("documents      {}\n", totals.documents);
    s += &format!(
        "tokens         {} ({per_doc:.1} per document)\n",
        totals.tokens
    );
    s += &format!("shards         {shards}\n");
    s += &format!("input          {:.1} MB\n", totals.input_bytes as f64 / 1e6);
    s += &format!("output         {:.1} MB\n", bytes_out as f64 / 1e6);
    s += &format!(
        "skipped        {} empty, {} bad records; {} documents truncated\n",
        totals.empty_documents, totals.bad_records, totals.truncated_documents
    );
    s += &format!(
        "elapsed        {secs:.1} s{}: {:.2} MB/s, {:.0} docs/s, {:.0} tokens/s",
        if resumed {
            " (this invocation; resumed)"
        } else {
            ""
        },
        totals.input_bytes as f64 / 1e6 / secs,
        totals.documents as f64 / secs,
        totals.tokens as f64 / secs
    );
    s
}
