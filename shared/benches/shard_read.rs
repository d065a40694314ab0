//! Random document reads per second from a memory-mapped shard set.
//!
//! Run: `cargo bench -p maskrate-shared --bench shard_read`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shared::shard::ShardSet;
use shared::tokenizer::LoadedTokenizer;
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let tok = LoadedTokenizer::load(None).unwrap();
    // 64 shards of 2,000 synthetic documents (50..250 tokens).
    let docs: Vec<Vec<u32>> = (0..64 * 2000u32)
        .map(|k| {
            let (s, d) = (k / 2000, k % 2000);
            let len = 50 + (d * 7919 + s) % 200;
            (0..len).map(|i| (i * 31 + d) % 30000 + 500).collect()
        })
        .collect();
    shared::fixtures::write_documents(dir.path(), &tok, &docs, 2000).unwrap();
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
