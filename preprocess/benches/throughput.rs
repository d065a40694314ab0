//! End-to-end preprocessing throughput against the bare tokenizer, in one run.
//!
//! For 1 and 2 threads: (a) the bare `tokenizers` `encode_batch` on the corpus texts held in
//! memory (no I/O, no JSON), (b) the release `preprocess` binary on the same files, with wall
//! time and peak RSS of the child process. Corpus: `../shared/data/wiki/en` when present, else
//! the bundled `data/c4-sample`.
//!
//! Run: `cargo bench -p preprocess --bench throughput` (optionally `-- PATH` for another corpus).

use preprocess::encode::extract_text;
use preprocess::input::discover;
use preprocess::records::{Payload, RecordReader};
use shared::tokenizer::LoadedTokenizer;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

fn corpus() -> PathBuf {
    if let Some(p) = std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wiki = root.join("../shared/data/wiki/en");
    if wiki.exists() {
        wiki
    } else {
        root.join("data/c4-sample")
    }
}

/// Runs `preprocess` on the corpus; returns (wall seconds, peak RSS in MB of that child alone).
///
/// Run before the bench loads any text: a forked child's peak RSS starts at its parent's size.
fn run_preprocess(corpus: &Path, threads: usize) -> (f64, f64) {
    let out = tempfile::tempdir().unwrap();
    let t = Instant::now();
    #[allow(clippy::zombie_processes)] // reaped by wait4, which also reports its peak RSS
    let child = Command::new(env!("CARGO_BIN_EXE_preprocess"))
        .arg(corpus)
        .args([
            "--out".as_ref(),
            out.path().as_os_str(),
            "--threads".as_ref(),
            threads.to_string().as_ref(),
            "--quiet".as_ref(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: wait4 writes only into `status` and the zeroed rusage it is given; the child is ours.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    drop(child); // reaped by wait4 above
    let wall = t.elapsed().as_secs_f64();
    assert!(
        pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "preprocess failed"
    );
    (wall, usage.ru_maxrss as f64 / 1024.0)
}

fn main() {
    let corpus = corpus();
    let runs: Vec<(f64, f64)> = [1usize, 2]
        .iter()
        .map(|&t| run_preprocess(&corpus, t))
        .collect();
    let files = discover(std::slice::from_ref(&corpus)).expect("corpus");
    let mut texts = Vec::new();
    for f in &files {
        let mut r = RecordReader::open(f, "text", 1 << 30, Arc::new(AtomicU64::new(0))).unwrap();
        while let Some(rec) = r.next_record(&f.path).unwrap() {
            if let Payload::Json(b) = rec.payload {
                texts.push(extract_text(&b, "text").unwrap());
            }
        }
    }
    let text_mb = texts.iter().map(|t| t.len()).sum::<usize>() as f64 / 1e6;
    let input_mb = files.iter().map(|f| f.size).sum::<u64>() as f64 / 1e6;
    println!(
        "corpus {}: {} files, {} documents, {text_mb:.1} MB of text ({input_mb:.1} MB on disk)",
        corpus.display(),
        files.len(),
        texts.len()
    );
    let tok = LoadedTokenizer::load(None).unwrap();
    println!("| threads | bare encode_batch MB/s | end-to-end MB/s (text) | end-to-end tokens/s | end-to-end / bare | wall s | peak RSS MB |");
    println!("|---|---|---|---|---|---|---|");
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let t = Instant::now();
        let encodings = pool.install(|| tok.tokenizer.encode_batch(refs.clone(), false).unwrap());
        let bare = t.elapsed().as_secs_f64();
        let tokens: usize = encodings.iter().map(|e| e.len()).sum();
        drop(encodings);

        let (wall, rss) = runs[threads - 1];
        println!(
            "| {threads} | {:.2} | {:.2} | {:.0} | {:.0}% | {wall:.2} | {rss:.0} |",
            text_mb / bare,
            text_mb / wall,
            tokens as f64 / wall,
            100.0 * bare / wall
        );
    }
}
