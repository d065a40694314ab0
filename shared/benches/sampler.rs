//! Batch build time of the masking sampler: the paper's 4096×128 global batch and a 256×128
//! batch at rate 0.3, on 1 and 2 threads.
//!
//! Run: `cargo bench -p maskrate-shared --bench sampler`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shared::sampler::{Layout, MaskVocab, MaskingConfig, MaskingSampler, SamplerConfig, Sequences};
use shared::shard::{InputFile, Manifest, ShardSet, ShardWriter, TokenDtype, Totals};
use shared::tokenizer::LoadedTokenizer;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

fn sample_set(dir: &Path, tok: &LoadedTokenizer) -> Arc<ShardSet> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/reference/c4-sample-ids.jsonl.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let dtype = TokenDtype::for_vocab(tok.info.vocab_size);
    let mut w = ShardWriter::create(dir, 0, dtype).unwrap();
    let mut totals = Totals::default();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let ids: Vec<u32> = v["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        w.push(&ids).unwrap();
        totals.documents += 1;
        totals.tokens += ids.len() as u64;
    }
    let shards = vec![w.finish().unwrap()];
    std::fs::write(dir.join("tokenizer.json"), &tok.json).unwrap();
    Manifest {
        format: shared::shard::manifest::FORMAT_NAME.into(),
        format_version: shared::shard::manifest::FORMAT_VERSION,
        tokenizer: tok.info.clone(),
        token_dtype: dtype,
        totals,
        shards,
        inputs: vec![InputFile {
            path: "bench".into(),
            size: 0,
        }],
        options: serde_json::json!({}),
    }
    .save(dir)
    .unwrap();
    Arc::new(ShardSet::open(dir).unwrap())
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let tok = LoadedTokenizer::load(None).unwrap();
    let set = sample_set(dir.path(), &tok);
    let mut group = c.benchmark_group("masking_sampler");
    for (rows, layout) in [
        (4096usize, Layout::Truncate),
        (256, Layout::Truncate),
        (4096, Layout::Pack),
    ] {
        let seqs = Sequences::new(set.clone(), &tok.info, layout, 128, 1).unwrap();
        let cfg = SamplerConfig {
            seed: 0,
            global_batch: rows,
            total_steps: 1000,
            schedule: "constant:0.3".parse().unwrap(),
            masking: MaskingConfig::default(),
        };
        let sampler = MaskingSampler::new(seqs, MaskVocab::from_tokenizer(&tok), cfg).unwrap();
        group.throughput(Throughput::Elements((rows * 128) as u64));
        for threads in [1usize, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let id = BenchmarkId::new(
                format!("{rows}x128_{layout:?}"),
                format!("{threads}_threads"),
            );
            let mut step = 0u64;
            group.bench_function(id, |b| {
                b.iter(|| {
                    step += 1;
                    pool.install(|| sampler.global_batch(step))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
