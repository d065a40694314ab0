//! The `pack-docs` layout: rows re-form the stream of framed documents, segment starts are the
//! documents' (and continuations') boundaries, exact-count masking works per document, and batches
//! do not depend on the thread count.

use rand_core::SeedableRng;
use shared::sampler::batch::MASK_TAG;
use shared::sampler::mask::mask_sequence;
use shared::sampler::{
    Layout, MaskVocab, MaskingConfig, MaskingSampler, SamplerConfig, Sequences, IGNORE_LABEL,
};
use shared::seed::seed_of;

use shared::fixtures::SampleSet as Fixture;

fn fixture() -> Fixture {
    Fixture::new(64)
}

/// Built independently: the stream [CLS] doc0 [SEP] [CLS] doc1 [SEP] …, cut into rows of `len`;
/// a segment starts at each [CLS] and at each row's first token.
#[test]
fn rows_reform_the_framed_stream_and_starts_mark_documents() {
    let f = fixture();
    let info = &f.tok.info;
    for len in [16usize, 64, 300] {
        let p = Sequences::new(f.set.clone(), info, Layout::PackDocs, len, 1).unwrap();
        let mut stream = Vec::new();
        let mut doc_starts = std::collections::BTreeSet::new();
        for d in &f.docs {
            doc_starts.insert(stream.len());
            stream.push(info.cls_id);
            stream.extend_from_slice(d);
            stream.push(info.sep_id);
        }
        assert_eq!(p.len(), (stream.len() / len) as u64, "len {len}");
        let (mut row, mut starts) = (vec![0u32; len], Vec::new());
        let mut long_doc_continues = false;
        for j in 0..p.len() {
            assert_eq!(p.fill_segments(j, &mut row, &mut starts).unwrap(), len);
            let at = j as usize * len;
            assert_eq!(row, stream[at..at + len], "len {len}, row {j}");
            let want: Vec<u32> = (0..len)
                .filter(|&c| c == 0 || doc_starts.contains(&(at + c)))
                .map(|c| c as u32)
                .collect();
            assert_eq!(starts, want, "len {len}, row {j}");
            long_doc_continues |= row[0] != info.cls_id;
        }
        assert!(long_doc_continues, "some document runs into the next row");
    }
    let err = Sequences::new(f.set.clone(), info, Layout::PackDocs, 16, 5)
        .err()
        .unwrap();
    assert!(err.to_string().contains("truncate layout only"), "{err}");
    assert_eq!("pack-docs".parse::<Layout>().unwrap(), Layout::PackDocs);
    assert!("pack_docs"
        .parse::<Layout>()
        .unwrap_err()
        .to_string()
        .contains("pack-docs"));
}

fn sampler(f: &Fixture, exact: bool, seq_len: usize) -> MaskingSampler {
    let seqs = Sequences::new(f.set.clone(), &f.tok.info, Layout::PackDocs, seq_len, 1).unwrap();
    let cfg = SamplerConfig {
        seed: 99,
        global_batch: 96,
        total_steps: 10,
        schedule: "constant:0.3".parse().unwrap(),
        masking: MaskingConfig {
            exact,
            ..Default::default()
        },
        order: Default::default(),
        rate_dist: Default::default(),
        rate_per_document: false,
    };
    MaskingSampler::new(seqs, MaskVocab::from_tokenizer(&f.tok), cfg).unwrap()
}

/// With exact-count masking each segment gets round(0.3 × its maskable tokens) (at least one),
/// counted here from the batch's own labels and the segment starts.
#[test]
fn exact_masking_counts_per_document() {
    let f = fixture();
    let b = sampler(&f, true, 128).global_batch(3).unwrap();
    let special = |id: u32| f.tok.info.special_ids.contains(&id);
    let n = b.input_ids.len();
    assert!(
        b.segment_starts.len() > b.rows(),
        "rows hold several documents"
    );
    let mut checked = 0;
    for (k, &a) in b.segment_starts.iter().enumerate() {
        let end = b.segment_starts.get(k + 1).map_or(n, |&e| e as usize);
        let a = a as usize;
        // The original tokens: the label where one was chosen, else the input.
        let original = |i: usize| match b.labels[i] {
            IGNORE_LABEL => b.input_ids[i],
            l => l as u32,
        };
        let maskable = (a..end).filter(|&i| !special(original(i))).count();
        let chosen = (a..end).filter(|&i| b.labels[i] != IGNORE_LABEL).count();
        if maskable > 0 {
            let want = ((0.3 * maskable as f64).round() as usize).max(1);
            assert_eq!(chosen, want, "segment {k}: {maskable} maskable");
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked}");
    // The segment starts are the rows' starts and the [CLS] of each framed document.
    let len = b.seq_len;
    for i in 0..n {
        let starts = b.segment_starts.binary_search(&(i as u32)).is_ok();
        let first = i % len == 0;
        let cls = b.input_ids[i] == f.tok.info.cls_id && b.labels[i] == IGNORE_LABEL;
        assert_eq!(starts, first || cls, "token {i}");
    }
}

/// Same bytes with 1 and 3 threads; independent draws give the same masks as if the row were one
/// document (the boundaries only matter for exact and whole-word masking): each row is its
/// framed tokens masked in one pass of the row's stream.
#[test]
fn batches_do_not_depend_on_threads() {
    let f = fixture();
    let vocab = MaskVocab::from_tokenizer(&f.tok);
    for exact in [false, true] {
        let s = sampler(&f, exact, 128);
        if !exact {
            let batch = s.global_batch(5).unwrap();
            let (mut ids, mut starts) = (vec![0u32; 128], Vec::new());
            let (mut labels, mut scratch, mut chosen) = (vec![0i32; 128], vec![], vec![]);
            let mut several_documents = 0;
            for (slot, &seq) in batch.sequence_ids.iter().enumerate() {
                s.sequences()
                    .fill_segments(seq, &mut ids, &mut starts)
                    .unwrap();
                several_documents += (starts.len() > 1) as usize;
                let key = seed_of(&[99, MASK_TAG, 5, slot as u64]);
                let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(key);
                let masking = &s.config().masking;
                let (ids, labels) = (&mut ids[..], &mut labels[..]);
                mask_sequence(
                    &mut rng,
                    ids,
                    labels,
                    0.3,
                    masking,
                    &vocab,
                    &mut scratch,
                    &mut chosen,
                );
                let row = slot * 128..(slot + 1) * 128;
                assert_eq!(batch.input_ids[row.clone()], ids[..], "slot {slot}");
                assert_eq!(batch.labels[row], labels[..], "slot {slot}");
            }
            assert!(
                several_documents > 10,
                "{several_documents} rows of several documents"
            );
        }
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| s.global_batch(5).unwrap())
        };
        let (a, b) = (run(1), run(3));
        assert_eq!(a.input_ids, b.input_ids);
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.segment_starts, b.segment_starts);
        assert_eq!(a.masked_positions, b.masked_positions);
        // A sub-range of slots is the same rows as in the global batch.
        let part = s.batch(5, 32..64).unwrap();
        assert_eq!(part.input_ids[..], a.input_ids[32 * 128..64 * 128]);
        let shifted: Vec<u32> = a
            .segment_starts
            .iter()
            .filter(|&&p| (32 * 128..64 * 128).contains(&(p as usize)))
            .map(|&p| p - 32 * 128)
            .collect();
        assert_eq!(part.segment_starts, shifted);
    }
}
