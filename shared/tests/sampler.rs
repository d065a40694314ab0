//! The step-aware masking sampler: statistics, invariants and determinism.

use shared::sampler::{
    BatchPlan, Layout, Loader, LoaderConfig, MaskVocab, MaskingConfig, MaskingSampler,
    SamplerConfig, Sequences, IGNORE_LABEL,
};
use shared::schedule::MaskSchedule;
use std::sync::Arc;

use shared::fixtures::SampleSet as Fixture;

fn fixture() -> Fixture {
    Fixture::new(64)
}

fn sampler(
    f: &Fixture,
    layout: Layout,
    seq_len: usize,
    batch: usize,
    steps: u64,
    schedule: &str,
    masking: MaskingConfig,
) -> MaskingSampler {
    let seqs = Sequences::new(f.set.clone(), &f.tok.info, layout, seq_len, 1).unwrap();
    let cfg = SamplerConfig {
        seed: 1234,
        global_batch: batch,
        total_steps: steps,
        schedule: schedule.parse().unwrap(),
        masking,
        order: Default::default(),
        rate_dist: Default::default(),
        rate_per_document: false,
    };
    MaskingSampler::new(seqs, MaskVocab::from_tokenizer(&f.tok), cfg).unwrap()
}

/// |observed - expected| within `z` standard deviations of a binomial(n, p).
fn within_binomial(observed: u64, n: u64, p: f64, z: f64) -> bool {
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (observed as f64 - n as f64 * p).abs() <= z * sd
}

#[test]
fn realised_rate_and_split_match_the_configuration_within_binomial_bounds() {
    let f = fixture();
    let s = sampler(
        &f,
        Layout::Truncate,
        128,
        256,
        10,
        "constant:0.3",
        MaskingConfig::default(),
    );
    let mut counts = shared::sampler::MaskCounts::default();
    for step in 0..8 {
        counts.add(&s.global_batch(step).unwrap().counts);
    }
    // Bernoulli choice; the at-least-one rule only adds to sequences with no draw (p = 0.7^n, negligible here).
    assert!(
        within_binomial(counts.chosen, counts.maskable, 0.3, 5.0),
        "{counts:?}"
    );
    assert!(
        within_binomial(counts.as_mask, counts.chosen, 0.8, 5.0),
        "{counts:?}"
    );
    assert!(
        within_binomial(counts.as_random, counts.chosen, 0.1, 5.0),
        "{counts:?}"
    );
    assert_eq!(
        counts.as_mask + counts.as_random + counts.as_kept,
        counts.chosen
    );
    // A deliberately wrong expectation must fail the same check (the bound is not vacuous).
    assert!(!within_binomial(counts.chosen, counts.maskable, 0.28, 5.0));
}

#[test]
fn configurable_split_all_mask_and_random_only() {
    let f = fixture();
    let all_mask = MaskingConfig {
        mask_fraction: 1.0,
        random_fraction: 0.0,
        ..Default::default()
    };
    let b = sampler(&f, Layout::Truncate, 64, 64, 10, "constant:0.2", all_mask)
        .global_batch(0)
        .unwrap();
    assert_eq!(b.counts.as_mask, b.counts.chosen);
    let random = MaskingConfig {
        mask_fraction: 0.0,
        random_fraction: 1.0,
        ..Default::default()
    };
    let b = sampler(&f, Layout::Truncate, 64, 64, 10, "constant:0.2", random)
        .global_batch(0)
        .unwrap();
    assert_eq!(b.counts.as_random, b.counts.chosen);
    let bad = MaskingConfig {
        mask_fraction: 0.8,
        random_fraction: 0.3,
        ..Default::default()
    };
    assert!(bad.validate().is_err());
}

#[test]
fn specials_and_padding_are_never_masked_and_labels_hold_originals() {
    let f = fixture();
    for layout in [Layout::Truncate, Layout::Pack] {
        let s = sampler(
            &f,
            layout,
            64,
            128,
            10,
            "constant:0.5",
            MaskingConfig::default(),
        );
        let vocab = MaskVocab::from_tokenizer(&f.tok);
        let b = s.global_batch(3).unwrap();
        let mut original = vec![0u32; 64];
        for r in 0..b.rows() {
            s.sequences()
                .fill(b.sequence_ids[r], &mut original)
                .unwrap();
            let row = r * 64..(r + 1) * 64;
            let (ids, labels, attn) = (
                &b.input_ids[row.clone()],
                &b.labels[row.clone()],
                &b.attention_mask[row],
            );
            let mut chosen = 0;
            for p in 0..64 {
                if labels[p] == IGNORE_LABEL {
                    assert_eq!(ids[p], original[p], "unchosen positions are untouched");
                } else {
                    chosen += 1;
                    assert_eq!(labels[p] as u32, original[p]);
                    assert!(
                        !vocab.is_special[original[p] as usize],
                        "special token {} masked",
                        original[p]
                    );
                    assert_eq!(attn[p], 1);
                    assert!(
                        !vocab.is_special[ids[p] as usize] || ids[p] == vocab.mask_id,
                        "random replacement is special"
                    );
                }
                assert_eq!(
                    attn[p] == 0,
                    original[p] == f.tok.info.pad_id,
                    "attention mask = not padding"
                );
            }
            assert!(chosen >= 1, "every sequence has a prediction");
        }
        // Flat positions agree with labels.
        let from_labels: Vec<u32> = b
            .labels
            .iter()
            .enumerate()
            .filter(|(_, &l)| l != IGNORE_LABEL)
            .map(|(i, _)| i as u32)
            .collect();
        assert_eq!(b.masked_positions, from_labels);
        assert!(b
            .masked_positions
            .iter()
            .zip(&b.masked_labels)
            .all(|(&p, &l)| b.labels[p as usize] as u32 == l));
    }
}

#[test]
fn exact_mode_masks_round_rate_times_n_and_at_least_one() {
    let f = fixture();
    let exact = MaskingConfig {
        exact: true,
        ..Default::default()
    };
    let s = sampler(&f, Layout::Truncate, 128, 64, 10, "constant:0.15", exact);
    let b = s.global_batch(0).unwrap();
    let vocab = MaskVocab::from_tokenizer(&f.tok);
    for r in 0..b.rows() {
        let row = r * 128..(r + 1) * 128;
        let n = b.input_ids[row.clone()]
            .iter()
            .zip(&b.labels[row.clone()])
            .filter(|(&id, &l)| l != IGNORE_LABEL || !vocab.is_special[id as usize])
            .count();
        let chosen = b.labels[row].iter().filter(|&&l| l != IGNORE_LABEL).count();
        assert_eq!(
            chosen,
            ((0.15 * n as f64).round() as usize).max(1),
            "row {r}, {n} maskable"
        );
    }
    // Tiny rate: still one per sequence.
    let s = sampler(
        &f,
        Layout::Truncate,
        16,
        64,
        10,
        "constant:0.001",
        MaskingConfig::default(),
    );
    let b = s.global_batch(0).unwrap();
    for r in 0..b.rows() {
        assert!(b.labels[r * 16..(r + 1) * 16]
            .iter()
            .any(|&l| l != IGNORE_LABEL));
    }
}

#[test]
fn whole_word_masking_takes_every_piece_of_a_word() {
    let f = fixture();
    let wwm = MaskingConfig {
        whole_word: true,
        ..Default::default()
    };
    let s = sampler(&f, Layout::Truncate, 128, 128, 10, "constant:0.3", wwm);
    let vocab = MaskVocab::from_tokenizer(&f.tok);
    let b = s.global_batch(0).unwrap();
    let mut continuation_masked = 0;
    for r in 0..b.rows() {
        let row = r * 128..(r + 1) * 128;
        let labels = &b.labels[row.clone()];
        let mut original = vec![0u32; 128];
        s.sequences()
            .fill(b.sequence_ids[r], &mut original)
            .unwrap();
        for p in 1..128 {
            if vocab.is_continuation[original[p] as usize]
                && !vocab.is_special[original[p - 1] as usize]
            {
                // A piece and the piece it continues are chosen together.
                assert_eq!(
                    labels[p] == IGNORE_LABEL,
                    labels[p - 1] == IGNORE_LABEL,
                    "row {r} pos {p}"
                );
                continuation_masked += (labels[p] != IGNORE_LABEL) as usize;
            }
        }
    }
    assert!(
        continuation_masked > 10,
        "the sample has many ## pieces; some must be masked"
    );
}

#[test]
fn same_seed_and_step_give_the_same_batch_whatever_the_loader() {
    let f = fixture();
    let s = Arc::new(sampler(
        &f,
        Layout::Truncate,
        128,
        64,
        20,
        "linear:0.3:0.15",
        MaskingConfig::default(),
    ));
    let plan = BatchPlan {
        global_batch: 64,
        world_size: 1,
        rank: 0,
        micro_batch: 16,
    };
    let collect = |threads, prefetch, start| -> Vec<_> {
        Loader::start(
            s.clone(),
            plan,
            start,
            20,
            LoaderConfig { threads, prefetch },
        )
        .unwrap()
        .map(|m| m.unwrap().batch)
        .collect()
    };
    let one = collect(1, 1, 0);
    let four = collect(4, 8, 0);
    assert_eq!(one.len(), 20 * 4);
    assert_eq!(one, four);
    let resumed = collect(2, 3, 13);
    assert_eq!(&one[13 * 4..], &resumed[..]);
    // Different steps differ; the rate follows the schedule at each step.
    assert_ne!(one[0].input_ids, one[4].input_ids);
    assert_eq!(one[0].rate, 0.3);
    assert!((one[19 * 4].rate - 0.15).abs() < 1e-12);
    // A different seed gives a different batch.
    let mut cfg = s.config().clone();
    cfg.seed += 1;
    let other = MaskingSampler::new(
        Sequences::new(f.set.clone(), &f.tok.info, Layout::Truncate, 128, 1).unwrap(),
        MaskVocab::from_tokenizer(&f.tok),
        cfg,
    )
    .unwrap();
    assert_ne!(
        other.global_batch(0).unwrap().input_ids,
        s.global_batch(0).unwrap().input_ids
    );
}

#[test]
fn ranks_and_micro_batches_union_to_the_global_batch() {
    let f = fixture();
    let s = sampler(
        &f,
        Layout::Pack,
        64,
        48,
        10,
        "constant:0.15",
        MaskingConfig::default(),
    );
    let global = s.global_batch(5).unwrap();
    for world_size in [1usize, 2, 3, 4] {
        let mut rows: Vec<u32> = Vec::new();
        let mut labels: Vec<i32> = Vec::new();
        for rank in 0..world_size {
            let plan = BatchPlan {
                global_batch: 48,
                world_size,
                rank,
                micro_batch: 4,
            };
            plan.validate().unwrap();
            for m in 0..plan.accumulation_steps() {
                let b = s.batch(5, plan.slots(m)).unwrap();
                rows.extend(&b.input_ids);
                labels.extend(&b.labels);
            }
        }
        assert_eq!(rows, global.input_ids, "world size {world_size}");
        assert_eq!(labels, global.labels);
    }
    assert!(BatchPlan {
        global_batch: 48,
        world_size: 5,
        rank: 0,
        micro_batch: 4
    }
    .validate()
    .is_err());
}

#[test]
fn every_sequence_is_seen_once_per_epoch_and_epochs_reshuffle() {
    let f = fixture();
    let n = f.docs.len(); // 300 documents, truncate layout: 300 sequences
    let s = sampler(
        &f,
        Layout::Truncate,
        32,
        60,
        100,
        "constant:0.15",
        MaskingConfig::default(),
    );
    let epoch = |e: u64| -> Vec<u64> {
        (e * 5..(e + 1) * 5)
            .flat_map(|step| s.global_batch(step).unwrap().sequence_ids)
            .collect()
    };
    let (e0, e1) = (epoch(0), epoch(1));
    let mut sorted = e0.clone();
    sorted.sort();
    assert_eq!(sorted, (0..n as u64).collect::<Vec<_>>());
    assert_ne!(e0, e1, "a new epoch has a new order");
    assert_eq!(s.epoch_at(5), 1);
    // A batch straddling the boundary (batch 70 does not divide 300).
    let s = sampler(
        &f,
        Layout::Truncate,
        32,
        70,
        100,
        "constant:0.15",
        MaskingConfig::default(),
    );
    let seen: Vec<u64> = (0..5)
        .flat_map(|step| s.global_batch(step).unwrap().sequence_ids)
        .collect();
    let mut first: Vec<u64> = seen[..300].to_vec();
    first.sort();
    assert_eq!(first, (0..300).collect::<Vec<_>>());
}

#[test]
fn truncate_and_pack_layouts() {
    let f = fixture();
    let info = &f.tok.info;
    let t = Sequences::new(f.set.clone(), info, Layout::Truncate, 16, 1).unwrap();
    let mut row = vec![0u32; 16];
    for (j, doc) in f.docs.iter().enumerate().take(50) {
        let used = t.fill(j as u64, &mut row).unwrap();
        let n = doc.len().min(14);
        assert_eq!(used, n + 2);
        assert_eq!(row[0], info.cls_id);
        assert_eq!(&row[1..1 + n], &doc[..n]);
        assert_eq!(row[1 + n], info.sep_id);
        assert!(row[2 + n..].iter().all(|&x| x == info.pad_id));
    }
    // Pack: bodies of consecutive sequences re-form the stream doc0 [SEP] doc1 [SEP] ...
    let p = Sequences::new(f.set.clone(), info, Layout::Pack, 16, 1).unwrap();
    let stream: Vec<u32> = f
        .docs
        .iter()
        .flat_map(|d| d.iter().copied().chain([info.sep_id]))
        .collect();
    assert_eq!(p.len(), stream.len() as u64 / 14);
    let mut rebuilt = Vec::new();
    for j in 0..p.len() {
        assert_eq!(p.fill(j, &mut row).unwrap(), 16);
        assert_eq!((row[0], row[15]), (info.cls_id, info.sep_id));
        rebuilt.extend_from_slice(&row[1..15]);
    }
    assert_eq!(rebuilt, stream[..rebuilt.len()]);
    // Length floor (truncate only).
    let floor = Sequences::new(f.set.clone(), info, Layout::Truncate, 16, 200).unwrap();
    assert_eq!(
        floor.len(),
        f.docs.iter().filter(|d| d.len() >= 200).count() as u64
    );
    assert!(Sequences::new(f.set.clone(), info, Layout::Pack, 16, 200).is_err());
}

#[test]
fn schedule_is_read_at_the_batchs_own_step() {
    let f = fixture();
    let s = sampler(
        &f,
        Layout::Truncate,
        128,
        256,
        101,
        "linear:0.3:0.15",
        MaskingConfig::default(),
    );
    let sched: MaskSchedule = "linear:0.3:0.15".parse().unwrap();
    for step in [0u64, 50, 100] {
        let b = s.global_batch(step).unwrap();
        assert_eq!(b.rate, sched.rate(step, 101));
        assert!(
            within_binomial(b.counts.chosen, b.counts.maskable, b.rate, 5.0),
            "step {step}: {:?}",
            b.counts
        );
    }
}

/// SHA-256 of steps 0..3 of a 16x64 run: ids, labels and attention mask, little-endian.
fn batch_digest(s: &MaskingSampler) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for step in 0..3 {
        let b = s.global_batch(step).unwrap();
        for &i in &b.input_ids {
            h.update(i.to_le_bytes());
        }
        for &l in &b.labels {
            h.update(l.to_le_bytes());
        }
        h.update(&b.attention_mask);
    }
    hex::encode(h.finalize())
}

/// Batches are the run's identity: a change to the sampler's speed must not change a bit. The
/// digests were recorded from the sampler before its branch-free selection and direct writes.
#[test]
fn batches_are_bit_for_bit_those_of_earlier_versions() {
    let f = fixture();
    let plain = MaskingConfig::default();
    let exact = MaskingConfig {
        exact: true,
        ..plain
    };
    let whole = MaskingConfig {
        whole_word: true,
        ..plain
    };
    let cases = [
        (
            "truncate bernoulli",
            Layout::Truncate,
            plain,
            "linear:0.3:0.15",
        ),
        ("pack bernoulli", Layout::Pack, plain, "constant:0.15"),
        ("truncate exact", Layout::Truncate, exact, "constant:0.3"),
        ("pack whole-word", Layout::Pack, whole, "cosine:0.3:0.15"),
    ];
    let got: Vec<(&str, String)> = cases
        .iter()
        .map(|&(name, layout, masking, schedule)| {
            let s = sampler(&f, layout, 64, 16, 10, schedule, masking);
            (name, batch_digest(&s))
        })
        .collect();
    let expected = [
        (
            "truncate bernoulli",
            "5072266e4213445c6bcbf3e96717c23a010f1ee96aba914dbfec52aae74b7878",
        ),
        (
            "pack bernoulli",
            "c34a41365e5ef46ea9df030b46ffaa0a70c843d5f38fc65bf310d6f47203f2a1",
        ),
        (
            "truncate exact",
            "e194f011b7b2ed361f4f12e1f38620572577bbe1013266d6ec27da1df4b5f169",
        ),
        (
            "pack whole-word",
            "f2778dfb1012b036ae6d1b53a6149018969f1b97faf20597ee45f06f4615f14c",
        ),
    ];
    for ((name, digest), (_, want)) in got.iter().zip(expected) {
        assert_eq!(digest, want, "{name}");
    }
}

#[test]
fn batch_into_caller_arrays_equals_the_batch_widened() {
    use shared::sampler::{BatchOut, IdsOut};
    let f = fixture();
    for layout in [Layout::Truncate, Layout::Pack] {
        let s = sampler(
            &f,
            layout,
            64,
            40,
            10,
            "linear:0.3:0.15",
            MaskingConfig::default(),
        );
        // 40 rows: one full task of 32 rows and a partial one; a slot range that is not at 0.
        for slots in [0..40, 5..38] {
            let b = s.batch(3, slots.clone()).unwrap();
            let n = slots.len() * 64;
            // Dirty buffers: every value must be written.
            let (mut ids64, mut ids32) = (vec![7i64; n], vec![7i32; n]);
            let (mut att, mut labels, mut types) = (vec![7i64; n], vec![7i64; n], vec![7i64; n]);
            let written = s
                .batch_into(
                    3,
                    slots.clone(),
                    BatchOut {
                        input_ids: Some(IdsOut::I64(&mut ids64)),
                        attention_mask: Some(&mut att),
                        labels: Some(&mut labels),
                        token_type_ids: Some(&mut types),
                    },
                )
                .unwrap();
            assert_eq!(written.counts, b.counts);
            assert_eq!(written.sources, b.sources);
            assert_eq!(written.sequence_ids, b.sequence_ids);
            assert_eq!(written.rate, b.rate);
            assert_eq!(
                ids64,
                b.input_ids.iter().map(|&i| i as i64).collect::<Vec<_>>()
            );
            assert_eq!(
                att,
                b.attention_mask
                    .iter()
                    .map(|&a| a as i64)
                    .collect::<Vec<_>>()
            );
            assert_eq!(
                labels,
                b.labels.iter().map(|&l| l as i64).collect::<Vec<_>>()
            );
            assert!(types.iter().all(|&t| t == 0));
            s.batch_into(
                3,
                slots.clone(),
                BatchOut {
                    input_ids: Some(IdsOut::I32(&mut ids32)),
                    ..Default::default()
                },
            )
            .unwrap();
            let expected: Vec<i32> = b.input_ids.iter().map(|&i| i as i32).collect();
            assert_eq!(ids32, expected);
        }
        let mut short = vec![0i64; 10];
        let err = s
            .batch_into(
                0,
                0..40,
                BatchOut {
                    labels: Some(&mut short),
                    ..Default::default()
                },
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("labels") && err.contains("10"), "{err}");
    }
}
