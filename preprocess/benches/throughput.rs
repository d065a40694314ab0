//! End-to-end preprocessing throughput against the bare tokenizer, in one run.
//!
//! First the cost of each stage alone on one thread (read, JSON, tokenize, write), then for 1 and 2
//! threads: the bare `tokenizers` 0.23 `encode_fast` and 1.0 pipeline `encode_into` on the corpus
//! texts held in memory (no I/O, no JSON), and the release `preprocess` binary on the same files,
//! with wall time and peak RSS of the child process. Corpus: `../shared/data/wiki/en` when present, else
//! the bundled `data/c4-sample`.
//!
//! Run: `cargo bench -p preprocess --bench throughput` (optionally `-- PATH` for another corpus).

use preprocess::input::discover;
use preprocess::record_encoder::extract_text;
use preprocess::records::{Payload, RecordReader};
use preprocess::text_encoder::TextEncoder;
use rayon::prelude::*;
use shared::shard::{ShardWriter, TokenDtype};
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

/// Seconds `f` takes.
fn time<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let out = f();
    (t.elapsed().as_secs_f64(), out)
}

fn main() {
    let corpus = corpus();
    let runs: Vec<(f64, f64)> = [1usize, 2]
        .iter()
        .map(|&t| run_preprocess(&corpus, t))
        .collect();
    let files = discover(std::slice::from_ref(&corpus)).expect("corpus");

    // Stage costs on one thread, each on its own: read (decompress, split), JSON, tokenize, write.
    let (read_s, lines) = time(|| {
        let mut lines = Vec::new();
        for f in &files {
            let mut r =
                RecordReader::open(f, "text", 1 << 30, Arc::new(AtomicU64::new(0))).unwrap();
            while let Some(rec) = r.next_record(&f.path).unwrap() {
                lines.push(rec.payload);
            }
        }
        lines
    });
    let (json_s, texts) = time(|| {
        lines
            .iter()
            .map(|p| match p {
                Payload::Json(b) => extract_text(b, "text").unwrap().into_owned(),
                Payload::Text(t) => t.clone(),
                Payload::Bad(m) => panic!("{m}"),
            })
            .collect::<Vec<String>>()
    });
    drop(lines);
    let text_mb = texts.iter().map(|t| t.len()).sum::<usize>() as f64 / 1e6;
    let input_mb = files.iter().map(|f| f.size).sum::<u64>() as f64 / 1e6;
    println!(
        "corpus {}: {} files, {} documents, {text_mb:.1} MB of text ({input_mb:.1} MB on disk)",
        corpus.display(),
        files.len(),
        texts.len()
    );
    let tok = LoadedTokenizer::load(None).unwrap();
    let (fast, notice) = TextEncoder::new(&tok);
    assert!(notice.is_none(), "{notice:?}");
    let oracle = TextEncoder::legacy(&tok);
    let encode_all = |encoder: &TextEncoder, threads: usize| -> (f64, Vec<Vec<u32>>) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        time(|| {
            pool.install(|| {
                texts
                    .par_iter()
                    .map_init(Vec::new, |scratch, t| {
                        let mut ids = Vec::new();
                        encoder.encode_into(t, scratch, &mut ids).unwrap();
                        ids
                    })
                    .collect()
            })
        })
    };
    let (tokenize_s, docs) = encode_all(&fast, 1);
    let tokens: usize = docs.iter().map(|d| d.len()).sum();
    let out = tempfile::tempdir().unwrap();
    let (write_s, ()) = time(|| {
        let mut w =
            ShardWriter::create(out.path(), 0, TokenDtype::for_vocab(tok.info.vocab_size)).unwrap();
        for d in &docs {
            w.push(d).unwrap();
        }
        w.finish().unwrap();
    });
    drop(docs);
    println!("\nStage costs, one thread each, MB of text per second:\n");
    println!("| read (decompress, split lines) | JSON text field | tokenize (1.0 pipeline) | write (shard, fsync, sha256) |");
    println!("|---|---|---|---|");
    println!(
        "| {:.0} | {:.0} | {:.1} | {:.0} |",
        text_mb / read_s,
        text_mb / json_s,
        text_mb / tokenize_s,
        text_mb / write_s
    );

    println!("\n| threads | bare 0.23 encode_fast MB/s | bare 1.0 encode_into MB/s | end-to-end MB/s (text) | end-to-end tokens/s | end-to-end / bare 1.0 | wall s | peak RSS MB |");
    println!("|---|---|---|---|---|---|---|---|");
    for threads in [1usize, 2] {
        let (legacy_s, _) = encode_all(&oracle, threads);
        let (pipeline_s, _) = encode_all(&fast, threads);
        let (wall, rss) = runs[threads - 1];
        println!(
            "| {threads} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0}% | {wall:.2} | {rss:.0} |",
            text_mb / legacy_s,
            text_mb / pipeline_s,
            text_mb / wall,
            tokens as f64 / wall,
            100.0 * pipeline_s / wall
        );
    }
}
