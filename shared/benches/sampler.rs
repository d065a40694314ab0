//! Batch build time of the masking sampler: the paper's 4096×128 global batch and a 256×128
//! batch at rate 0.3, on 1 and 2 threads; and the 4096×128 batch drawn from a mixture of three
//! sources (one of them with a scheduled weight) against one source of the same documents.
//!
//! The `rate_dist` group: the 4096×128 batch with a rate per row (`stratified`) and its
//! inverse-rate loss coefficients, against one rate per batch (`point`) at the same mean rate.
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
            order: Default::default(),
            rate_dist: Default::default(),
            rate_per_document: false,
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
    mixture(c, &tok);
    rates_per_row(c, &tok);
}

/// 4096×128 on 2 threads at rate 0.3: `point` (the batch alone, as before rates per row)
/// against `stratified:0.2:0.4` (the same mean rate) with each predicted token's `inverse-rate`
/// coefficient, and `stratified:0.001:1` (mean 0.5: more tokens to mask) for scale.
fn rates_per_row(c: &mut Criterion, tok: &LoadedTokenizer) {
    use shared::sampler::{LossNorm, LossTerms, LossWeight};
    let dir = tempfile::tempdir().unwrap();
    let set = shared::fixtures::write_set(dir.path(), &shared::fixtures::sample_docs(), 100);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let mut group = c.benchmark_group("rate_dist");
    group.throughput(Throughput::Elements(4096 * 128));
    for (label, dist, weight) in [
        ("point", "point", "none"),
        (
            "stratified_0.2_0.4_unweighted",
            "stratified:0.2:0.4",
            "none",
        ),
        ("stratified_0.2_0.4", "stratified:0.2:0.4", "inverse-rate"),
        ("stratified_0.001_1", "stratified:0.001:1", "inverse-rate"),
    ] {
        let seqs = Sequences::new(set.clone(), &tok.info, Layout::Truncate, 128, 1).unwrap();
        let cfg = SamplerConfig {
            seed: 0,
            global_batch: 4096,
            total_steps: 1000,
            schedule: "constant:0.3".parse().unwrap(),
            masking: MaskingConfig::default(),
            order: Default::default(),
            rate_dist: dist.parse().unwrap(),
            rate_per_document: false,
        };
        let sampler = MaskingSampler::new(seqs, MaskVocab::from_tokenizer(tok), cfg).unwrap();
        let weight: LossWeight = weight.parse().unwrap();
        let mut step = 0u64;
        group.bench_function(BenchmarkId::new("4096x128_2_threads", label), |b| {
            b.iter(|| {
                step += 1;
                pool.install(|| {
                    let batch = sampler.global_batch(step).unwrap();
                    let terms = LossTerms::of(&batch, weight, LossNorm::Masked);
                    (batch, terms)
                })
            })
        });
    }
    group.finish();
}

/// 4096×128 from three named sources (the sample split in three) vs the same documents as one.
fn mixture(c: &mut Criterion, tok: &LoadedTokenizer) {
    let dir = tempfile::tempdir().unwrap();
    let docs = shared::fixtures::sample_docs();
    let mut named = Vec::new();
    for (name, range) in [("c4", 0..100), ("books", 100..200), ("wiki", 200..300)] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        shared::fixtures::write_set(&d, &docs[range], 100);
        named.push(shared::sampler::ShardSource::named(name, d).unwrap());
    }
    let one = dir.path().join("one");
    std::fs::create_dir_all(&one).unwrap();
    shared::fixtures::write_set(&one, &docs, 100);
    let config = |shards: Vec<shared::sampler::ShardSource>, mix: Option<&str>| {
        shared::sampler::DataConfig {
            shards,
            mix: mix.map(|m| m.parse().unwrap()),
            steps: 70_000,
            batch_size: 4096,
            eval_sequences: 0,
            schedule: "constant:0.3".parse().unwrap(),
            ..Default::default()
        }
    };
    let _ = tok;
    let mut group = c.benchmark_group("mixture");
    group.throughput(Throughput::Elements(4096 * 128));
    for (label, cfg) in [
        ("1_source", config(vec![one.into()], None)),
        (
            "3_sources",
            config(named.clone(), Some("c4=0.5,books=0.2,wiki=linear:0.5:0.1")),
        ),
        // A recipe's pieces: stairs masking, stair weights with a source joining at 50%.
        (
            "3_sources_stairs",
            shared::sampler::DataConfig {
                schedule: "stairs:0.3:0.15@0.6:0.05@0.9".parse().unwrap(),
                ..config(
                    named.clone(),
                    Some("c4=0.5,books=stairs:0.3:0.1@0.5,wiki=stairs:0:0.3@0.5"),
                )
            },
        ),
        // Mixed by size with an annealed exponent and a late source.
        (
            "3_sources_by_size",
            shared::sampler::DataConfig {
                mix_by_size: Some("stairs:0.7:0.5@0.6:0.3@0.9".parse().unwrap()),
                join: vec!["wiki@0.5".parse().unwrap()],
                ..config(named, None)
            },
        ),
    ] {
        let data = cfg.open().unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        // Steps spread over the run: the mixture's prefix sums are looked up, not replayed.
        let mut step = 0u64;
        group.bench_function(BenchmarkId::new("4096x128_2_threads", label), |b| {
            b.iter(|| {
                step = (step + 7919) % 70_000;
                pool.install(|| data.sampler.global_batch(step).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
