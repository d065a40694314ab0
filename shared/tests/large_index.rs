//! A shard set with millions of documents (the bounded version of the 300M-document figure in
//! BENCHMARKS.md, `cargo bench -p maskrate-shared --bench large_index`): opening it touches only
//! headers, so resident memory barely moves, and batches in both layouts hold the right tokens.

use shared::fixtures::{synthetic_doc, synthetic_set};
use shared::sampler::{Layout, MaskVocab, MaskingConfig, MaskingSampler, SamplerConfig, Sequences};
use shared::shard::ShardSet;
use shared::tokenizer::LoadedTokenizer;
use std::sync::Arc;

#[test]
fn millions_of_documents_open_in_constant_memory_and_batch_correctly() {
    const DOCS: u64 = 3_000_000;
    let dir = tempfile::tempdir().unwrap();
    synthetic_set(dir.path(), DOCS, 3).unwrap();
    let before = shared::fixtures::resident_kb();
    let set = Arc::new(ShardSet::open(dir.path()).unwrap());
    let grown = shared::fixtures::resident_kb().saturating_sub(before);
    assert_eq!(set.len(), DOCS);
    // The index is ~60 MB; opening maps it and reads headers and one entry per shard.
    assert!(
        grown < 8 * 1024,
        "opening grew resident memory by {grown} kB"
    );

    let tok = LoadedTokenizer::load(None).unwrap();
    let mut want = Vec::new();
    for (layout, seq_len) in [(Layout::Truncate, 8), (Layout::Pack, 16)] {
        let seqs = Sequences::new(set.clone(), &tok.info, layout, seq_len, 1).unwrap();
        let cfg = SamplerConfig {
            seed: 3,
            global_batch: 64,
            total_steps: 10,
            schedule: shared::schedule::MaskSchedule::constant(0.0),
            masking: MaskingConfig::default(),
            order: Default::default(),
            rate_dist: Default::default(),
            rate_per_document: false,
        };
        let sampler = MaskingSampler::new(seqs, MaskVocab::from_tokenizer(&tok), cfg).unwrap();
        let batch = sampler.global_batch(7).unwrap();
        for r in 0..batch.rows() {
            // The original tokens: masked positions (at least one per row) hold their label.
            let row: Vec<u32> = (r * seq_len..(r + 1) * seq_len)
                .map(|i| {
                    if batch.labels[i] == shared::sampler::IGNORE_LABEL {
                        batch.input_ids[i]
                    } else {
                        batch.labels[i] as u32
                    }
                })
                .collect();
            let seq = batch.sequence_ids[r];
            match layout {
                Layout::Truncate => {
                    synthetic_doc(seq, &mut want);
                    assert_eq!(&row[1..1 + want.len()], &want[..], "sequence {seq}");
                }
                Layout::Pack => {
                    // The packed stream: doc 0, [SEP], doc 1, [SEP], ... with doc d starting at
                    // stream position S(d) = sum over i < d of (len_i + 1), len_i = 1 + i % 4.
                    let start_of = |d: u64| 14 * (d / 4) + (0..d % 4).map(|k| 2 + k).sum::<u64>();
                    let p = seq * (seq_len as u64 - 2);
                    let (mut lo, mut hi) = (0u64, DOCS);
                    while hi - lo > 1 {
                        let mid = (lo + hi) / 2;
                        if start_of(mid) <= p {
                            lo = mid
                        } else {
                            hi = mid
                        }
                    }
                    let mut stream = Vec::new();
                    let mut d = lo;
                    while stream.len() < (p - start_of(lo)) as usize + seq_len - 2 {
                        synthetic_doc(d, &mut want);
                        stream.extend_from_slice(&want);
                        stream.push(tok.info.sep_id);
                        d += 1;
                    }
                    let skip = (p - start_of(lo)) as usize;
                    assert_eq!(
                        &row[1..seq_len - 1],
                        &stream[skip..skip + seq_len - 2],
                        "sequence {seq}"
                    );
                    assert_eq!(
                        (row[0], row[seq_len - 1]),
                        (tok.info.cls_id, tok.info.sep_id)
                    );
                }
                // pack-docs shares pack's stream arithmetic (tests/pack_docs.rs checks its rows).
                Layout::PackDocs => unreachable!("not among this test's layouts"),
            }
        }
    }
}
