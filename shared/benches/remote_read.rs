//! Reading shards from a bucket against a real S3 server on 127.0.0.1 (s3s-fs, in this process):
//! batch build rate from local mmap, from the bucket with a cold cache and with a warm one, and
//! with `--order shard-blocks:K` through a small cache; bytes fetched per step against the bytes
//! of the documents the batches use; peak resident memory; and what the block order costs in
//! shuffle quality (distinct shards per batch, and the variance of the per-batch mean document
//! length relative to the global order's: 1.0 = as well mixed).
//!
//! Run (shards made by `preprocess`, e.g. of ../shared/data/wiki/en with --shard-size 1MiB):
//! `cargo bench -p maskrate-shared --bench remote_read -- SHARD_DIR [BATCH] [STEPS]`

use s3_test_server::S3Server;
use shared::sampler::{Data, DataConfig, Order};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn config(shards: PathBuf, order: Order, batch: usize, cache: &Path, bytes: u64) -> DataConfig {
    DataConfig {
        shards: vec![shards.into()],
        steps: 1_000_000,
        batch_size: batch,
        seq_len: 128,
        order,
        eval_sequences: 0,
        cache_dir: Some(cache.to_path_buf()),
        cache_bytes: Some(bytes),
        ..DataConfig::default()
    }
}

/// Peak resident memory of this process (`VmHWM`), MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// Builds `steps` batches; returns (steps/s, token bytes of the documents used per step).
fn run(data: &Data, steps: u64) -> (f64, f64) {
    let start = Instant::now();
    let mut used = 0u64;
    for step in 0..steps {
        let b = data.sampler.global_batch(step).unwrap();
        used += b.attention_mask.iter().filter(|&&m| m == 1).count() as u64 - 2 * b.rows() as u64;
    }
    let dtype = data.shards.manifests()[0].token_dtype.size() as f64;
    (
        steps as f64 / start.elapsed().as_secs_f64(),
        used as f64 * dtype / steps as f64,
    )
}

/// Distinct shards per batch, and the variance of the per-batch mean document length.
fn mixing(data: &Data, steps: u64) -> (f64, f64) {
    let set = &data.shards;
    let (mut distinct, mut means) = (0usize, Vec::new());
    for step in 0..steps {
        let b = data.sampler.global_batch(step).unwrap();
        let mut shards: Vec<usize> = b.sequence_ids.iter().map(|&d| set.shard_of(d)).collect();
        shards.sort();
        shards.dedup();
        distinct += shards.len();
        let total: usize = b.sequence_ids.iter().map(|&d| set.doc_len(d)).sum();
        means.push(total as f64 / b.rows() as f64);
    }
    let mean = means.iter().sum::<f64>() / means.len() as f64;
    let var = means.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / means.len() as f64;
    (distinct as f64 / steps as f64, var)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(local) = args.first().map(PathBuf::from) else {
        eprintln!("usage: cargo bench -p maskrate-shared --bench remote_read -- SHARD_DIR [BATCH] [STEPS]");
        return;
    };
    let batch: usize = args.get(1).map_or(256, |s| s.parse().unwrap());
    let steps: u64 = args.get(2).map_or(200, |s| s.parse().unwrap());
    let root = tempfile::tempdir().unwrap();
    let server = S3Server::start(root.path()).unwrap();
    server.create_bucket("data").unwrap();
    let dest = server.bucket_dir("data").join("shards");
    std::fs::create_dir_all(&dest).unwrap();
    let mut bin_bytes = Vec::new();
    for e in std::fs::read_dir(&local).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().ends_with(".bin") {
            bin_bytes.push(e.metadata().unwrap().len());
        }
        std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
    }
    for (k, v) in server.env() {
        std::env::set_var(k, v);
    }
    let url = PathBuf::from("s3://data/shards");
    let total: u64 = bin_bytes.iter().sum();
    let largest = *bin_bytes.iter().max().unwrap();
    println!(
        "shards: {} files, {:.1} MB of tokens (largest {:.1} MB); batch {batch}x128, {steps} steps",
        bin_bytes.len(),
        total as f64 / 1e6,
        largest as f64 / 1e6
    );
    let big = 64 << 30;
    let cache = tempfile::tempdir().unwrap();
    let report = |name: &str, data: &Data, (rate, used): (f64, f64), t0: f64| {
        let s = data.shards.cache().map(|c| c.stats()).unwrap_or_default();
        println!(
            "{name:<34} {rate:>8.1} steps/s  open {t0:>6.3} s  fetched/step {:>9.0} B  used/step {used:>9.0} B  downloads {:>4}  waits {:>4}  peak cache {:>7.1} MB  peak RSS {:>7.1} MB",
            s.bytes_downloaded as f64 / steps as f64,
            s.downloads,
            s.waits,
            s.peak_bytes as f64 / 1e6,
            peak_rss_mb()
        );
    };
    let open = |cfg: DataConfig| {
        let t = Instant::now();
        let d = cfg.open().unwrap();
        (d, t.elapsed().as_secs_f64())
    };
    let (d, t) = open(config(
        local.clone(),
        Order::Global,
        batch,
        cache.path(),
        big,
    ));
    report("local mmap, global", &d, run(&d, steps), t);
    let (d, t) = open(config(url.clone(), Order::Global, batch, cache.path(), big));
    report("bucket cold cache, global", &d, run(&d, steps), t);
    drop(d);
    let (d, t) = open(config(url.clone(), Order::Global, batch, cache.path(), big));
    report("bucket warm cache, global", &d, run(&d, steps), t);
    drop(d);
    for k in [1u32, 4] {
        let small = tempfile::tempdir().unwrap();
        let idx: u64 = std::fs::read_dir(&local)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".idx"))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        // Room for the indexes, the block being read, the next one, and a spare shard per block.
        let bound = idx + (4 * k as u64 + 2) * largest;
        let order = Order::ShardBlocks(k);
        let (d, t) = open(config(url.clone(), order, batch, small.path(), bound));
        report(
            &format!("bucket, {order}, cache {:.0} MB", bound as f64 / 1e6),
            &d,
            run(&d, steps),
            t,
        );
        drop(d);
        let (d, t) = open(config(local.clone(), order, batch, small.path(), bound));
        report(&format!("local mmap, {order}"), &d, run(&d, steps), t);
    }
    println!("shuffle quality over {steps} steps (local):");
    let (d, _) = open(config(
        local.clone(),
        Order::Global,
        batch,
        cache.path(),
        big,
    ));
    let (g_distinct, g_var) = mixing(&d, steps);
    println!("  global            distinct shards/batch {g_distinct:>7.1}  var(batch mean doc length) ratio 1.00");
    for k in [1u32, 4, 16] {
        let (d, _) = open(config(
            local.clone(),
            Order::ShardBlocks(k),
            batch,
            cache.path(),
            big,
        ));
        let (distinct, var) = mixing(&d, steps);
        println!(
            "  shard-blocks:{k:<3}  distinct shards/batch {distinct:>7.1}  var(batch mean doc length) ratio {:.2}",
            var / g_var
        );
    }
}
