//! Batch build time of the masking sampler: the paper's 4096×128 global batch and a 256×128
//! batch at rate 0.3, on 1 and 2 threads.
//!
//! Run: `cargo bench -p maskrate-shared --bench sampler`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shared::sampler::{Layout, MaskVocab, MaskingConfig, MaskingSampler, SamplerConfig, Sequences};
use shared::tokenizer::LoadedTokenizer;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let tok = LoadedTokenizer::load(None).unwrap();
    let set = shared::fixtures::write_set(dir.path(), &shared::fixtures::sample_docs(), 100);
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
                    pool.install(|| sampler.global_batch(step).unwrap())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
