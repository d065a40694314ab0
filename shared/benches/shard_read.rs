//! Random document reads per second from a memory-mapped shard set.
//!
//! Run: `cargo bench -p maskrate-shared --bench shard_read`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shared::shard::{InputFile, Manifest, ShardSet, ShardWriter, TokenDtype, Totals};
use shared::tokenizer::LoadedTokenizer;
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let tok = LoadedTokenizer::load(None).unwrap();
    let dtype = TokenDtype::for_vocab(tok.info.vocab_size);
    // 64 shards of 2,000 synthetic documents (50..250 tokens).
    let mut shards = Vec::new();
    let mut totals = Totals::default();
    for s in 0..64 {
        let mut w = ShardWriter::create(dir.path(), s, dtype).unwrap();
        for d in 0..2000u32 {
            let len = 50 + (d * 7919 + s as u32) % 200;
            let ids: Vec<u32> = (0..len).map(|i| (i * 31 + d) % 30000 + 500).collect();
            w.push(&ids).unwrap();
            totals.documents += 1;
            totals.tokens += len as u64;
        }
        shards.push(w.finish().unwrap());
    }
    std::fs::write(dir.path().join("tokenizer.json"), &tok.json).unwrap();
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
    .save(dir.path())
    .unwrap();
    c.bench_function("open_64_shards", |b| {
        b.iter(|| ShardSet::open(dir.path()).unwrap())
    });
    let set = ShardSet::open(dir.path()).unwrap();
    let n = set.len();
    let mut group = c.benchmark_group("shard_read");
    group.throughput(Throughput::Elements(1024));
    let mut x = 1u64;
    group.bench_function("1024_random_docs_copied", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            for _ in 0..1024 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                out.clear();
                set.doc((x >> 33) % n).extend_into(&mut out);
                black_box(&out);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
