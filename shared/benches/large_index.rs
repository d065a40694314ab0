//! The sampler and reader under the largest realistic index: a synthetic shard set of 300M tiny
//! documents (`shared::fixtures::synthetic_set`), against a 100k-document set built the same way.
//! Reports the time and resident memory of opening it and of building the sampler in each layout,
//! and the time to build a 256 x 128 batch.
//!
//! Run: `cargo bench -p maskrate-shared --bench large_index -- [DOCUMENTS] [DIR]` (default 300M
//! documents in `target/large-index`, ~7.5 GB on disk, kept for re-runs; delete it afterwards).

use shared::fixtures::synthetic_set;
use shared::sampler::{Layout, MaskVocab, MaskingConfig, MaskingSampler, SamplerConfig, Sequences};
use shared::shard::ShardSet;
use shared::tokenizer::LoadedTokenizer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

fn rss_mb() -> f64 {
    shared::fixtures::resident_kb() as f64 / 1024.0
}

fn ensure(dir: &Path, docs: u64) {
    if dir.join("manifest.json").exists() {
        return;
    }
    std::fs::create_dir_all(dir).unwrap();
    let t = Instant::now();
    synthetic_set(dir, docs, (docs / 10_000_000).max(1) as usize).unwrap();
    println!(
        "generated {docs} documents in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// (open s, open RSS MB, [(layout, sampler s, sampler RSS MB, ms per batch)]).
fn measure(dir: &Path) {
    let tok = LoadedTokenizer::load(None).unwrap();
    let rss0 = rss_mb();
    let t = Instant::now();
    let set = Arc::new(ShardSet::open(dir).unwrap());
    let open_s = t.elapsed().as_secs_f64();
    println!(
        "| {} | {} | {:.3} s | +{:.1} MB |",
        set.len(),
        set.num_shards(),
        open_s,
        rss_mb() - rss0
    );
    for (name, layout, min_doc) in [
        ("truncate", Layout::Truncate, 1),
        ("pack", Layout::Pack, 1),
        ("truncate, --min-doc-tokens 2", Layout::Truncate, 2),
    ] {
        let rss1 = rss_mb();
        let t = Instant::now();
        let seqs = Sequences::new(set.clone(), &tok.info, layout, 128, min_doc).unwrap();
        let cfg = SamplerConfig {
            seed: 0,
            global_batch: 256,
            total_steps: 1_000_000,
            schedule: "linear:0.3:0.15".parse().unwrap(),
            masking: MaskingConfig::default(),
            order: Default::default(),
            rate_dist: Default::default(),
            rate_per_document: false,
        };
        let sampler = MaskingSampler::new(seqs, MaskVocab::from_tokenizer(&tok), cfg).unwrap();
        let build_s = t.elapsed().as_secs_f64();
        let build_rss = rss_mb() - rss1;
        // Steps spread over the run, so the documents touched are spread over the index.
        let steps = 20u64;
        let t = Instant::now();
        for s in 0..steps {
            std::hint::black_box(sampler.global_batch(s * 49_999).unwrap());
        }
        let per_batch = t.elapsed().as_secs_f64() * 1000.0 / steps as f64;
        println!("|   {name}: sampler | {build_s:.3} s | +{build_rss:.1} MB | {per_batch:.2} ms per 256x128 batch |");
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let docs: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(300_000_000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let big: PathBuf = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("large-index"));
    let small = root.join("large-index-baseline");
    ensure(&small, 100_000);
    ensure(&big, docs);
    println!("| documents | shards | open | resident memory after open |");
    println!("|---|---|---|---|");
    measure(&small);
    measure(&big);
}
