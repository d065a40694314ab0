//! Mixtures of named sources (`--shards NAME=DIR --mix ...`): exact per-step composition,
//! determinism across threads and ranks, per-source epochs, and the refusals before any training.

use shared::fixtures::{sample_docs, write_documents, write_set};
use shared::sampler::mixture::largest_remainder;
use shared::sampler::{Batch, DataConfig, MaskingSampler, ShardSource};
use shared::schedule::MaskSchedule;
use shared::tokenizer::LoadedTokenizer;
use std::path::{Path, PathBuf};

/// Three sources from the sample: `c4` (documents 0..150), `wiki` (150..270), `tiny` (12 docs).
struct Sources {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn sources() -> Sources {
    let dir = tempfile::tempdir().unwrap();
    let docs = sample_docs();
    for (name, range) in [("c4", 0..150), ("wiki", 150..270), ("tiny", 270..282)] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        write_set(&d, &docs[range], 40);
    }
    let root = dir.path().to_path_buf();
    Sources { _dir: dir, root }
}

fn named(root: &Path, names: &[&str]) -> Vec<ShardSource> {
    names
        .iter()
        .map(|n| ShardSource::named(n, root.join(n)).unwrap())
        .collect()
}

fn config(root: &Path, names: &[&str], mix: &str, steps: u64, batch: usize) -> DataConfig {
    DataConfig {
        shards: named(root, names),
        mix: Some(mix.parse().unwrap()),
        steps,
        batch_size: batch,
        seq_len: 32,
        eval_sequences: 4,
        schedule: "linear:0.3:0.15".parse().unwrap(),
        ..DataConfig::default()
    }
}

fn per_source(b: &Batch, sources: usize) -> Vec<usize> {
    let mut counts = vec![0; sources];
    for &s in &b.sources {
        counts[s as usize] += 1;
    }
    counts
}

#[test]
fn realised_counts_follow_the_rounding_rule_at_every_step() {
    let s = sources();
    let (steps, batch) = (120u64, 16usize);
    let cfg = config(
        &s.root,
        &["wiki", "c4", "tiny"],
        "c4=0.5,wiki=linear:0.5:0.1,tiny=0.05",
        steps,
        batch,
    );
    let data = cfg.open().unwrap();
    let sampler = &data.sampler;
    // Sources are indexed in name order, whatever order --shards gave them in.
    assert_eq!(sampler.source_names(), ["c4", "tiny", "wiki"]);
    let wiki: MaskSchedule = "linear:0.5:0.1".parse().unwrap();
    for step in 0..steps {
        let b = sampler.global_batch(step).unwrap();
        // Independent reference: the formula with hand-written weights in name order.
        let expected = largest_remainder(batch, &[0.5, 0.05, wiki.rate(step, steps)]);
        assert_eq!(per_source(&b, 3), expected, "step {step}");
    }
    // Constant weights: the same split every step (10 x 0.7 = 7, 10 x 0.3 = 3).
    let cfg = config(&s.root, &["c4", "wiki"], "c4=0.7,wiki=0.3", 30, 10);
    let data = cfg.open().unwrap();
    for step in 0..30 {
        assert_eq!(
            per_source(&data.sampler.global_batch(step).unwrap(), 2),
            [7, 3]
        );
    }
}

#[test]
fn batches_are_the_same_for_any_thread_count_and_rank_split() {
    let s = sources();
    let cfg = config(
        &s.root,
        &["c4", "wiki", "tiny"],
        "c4=0.6,wiki=0.3,tiny=0.1",
        50,
        24,
    );
    let data = cfg.open().unwrap();
    let sampler: &MaskingSampler = &data.sampler;
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    for step in [0, 7, 49] {
        let one = pool(1).install(|| sampler.global_batch(step).unwrap());
        let two = pool(2).install(|| sampler.global_batch(step).unwrap());
        assert_eq!(one, two);
        // Two ranks' halves (and four micro-batches) make the global batch, row for row.
        let halves = [
            sampler.batch(step, 0..12).unwrap(),
            sampler.batch(step, 12..24).unwrap(),
        ];
        let rows = |b: &Batch| (b.input_ids.clone(), b.labels.clone(), b.sources.clone());
        let joined: (Vec<u32>, Vec<i32>, Vec<u16>) = halves.iter().map(rows).fold(
            (Vec::new(), Vec::new(), Vec::new()),
            |mut acc, (i, l, s)| {
                acc.0.extend(i);
                acc.1.extend(l);
                acc.2.extend(s);
                acc
            },
        );
        assert_eq!(joined, rows(&one));
        // A rank's rows come from several sources (slots are shuffled before assignment).
        let first_half_sources: std::collections::BTreeSet<u16> =
            halves[0].sources.iter().copied().collect();
        assert!(first_half_sources.len() > 1, "{first_half_sources:?}");
    }
    // A fresh sampler (a resumed run, at any world size) rebuilds the same batch.
    let again = cfg.open().unwrap();
    assert_eq!(
        again.sampler.global_batch(33).unwrap(),
        sampler.global_batch(33).unwrap()
    );
}

#[test]
fn a_small_source_wraps_with_a_fresh_permutation_and_no_repeat_within_an_epoch() {
    let s = sources();
    // tiny has 12 documents, 4 held out: 8 in training. 2 of 8 rows per step: an epoch every 4 steps.
    let cfg = config(&s.root, &["c4", "tiny"], "c4=0.75,tiny=0.25", 40, 8);
    let data = cfg.open().unwrap();
    let tiny = data
        .sampler
        .source_names()
        .iter()
        .position(|n| *n == "tiny")
        .unwrap() as u16;
    let n = data.sampler.source_sequences(tiny as usize).len();
    assert_eq!(n, 8);
    let ids_of = |step: u64| -> Vec<u64> {
        let b = data.sampler.global_batch(step).unwrap();
        b.sources
            .iter()
            .zip(&b.sequence_ids)
            .filter(|(s, _)| **s == tiny)
            .map(|(_, id)| *id)
            .collect()
    };
    let mut epochs = Vec::new();
    for epoch in 0..10u64 {
        let mut ids: Vec<u64> = (epoch * 4..epoch * 4 + 4).flat_map(ids_of).collect();
        let in_order = ids.clone();
        ids.sort();
        assert_eq!(
            ids,
            (0..8).collect::<Vec<_>>(),
            "epoch {epoch}: a repeat or a gap"
        );
        epochs.push(in_order);
    }
    epochs.dedup();
    assert!(epochs.len() > 5, "epochs should be read in fresh orders");
    let e = data.sampler.source_epochs_at(40);
    assert_eq!(e[tiny as usize], 10.0);
}

#[test]
fn one_unnamed_source_reads_as_before_and_names_need_mix() {
    let s = sources();
    let plain = DataConfig {
        shards: vec![s.root.join("c4").into()],
        steps: 10,
        batch_size: 8,
        seq_len: 32,
        eval_sequences: 4,
        ..DataConfig::default()
    };
    let data = plain.open().unwrap();
    assert_eq!(data.sampler.source_names(), [""]);
    assert_eq!(data.fingerprint(), data.shards.fingerprint());
    let b = data.sampler.global_batch(3).unwrap();
    assert!(b.sources.iter().all(|&s| s == 0));
    // Two named sources without --mix, names mixed with plain paths, or --mix without names.
    let err = |cfg: DataConfig| cfg.open().err().expect("refused").to_string();
    let mut two = config(&s.root, &["c4", "wiki"], "c4=1,wiki=1", 10, 8);
    two.mix = None;
    assert!(err(two).contains("need --mix"));
    let mut mixed = config(&s.root, &["c4"], "c4=1", 10, 8);
    mixed.shards.push(s.root.join("wiki").into());
    assert!(err(mixed).contains("name every source"));
    let mut unnamed_mix = plain.clone();
    unnamed_mix.mix = Some("c4=1".parse().unwrap());
    assert!(err(unnamed_mix).contains("named sources"));
}

#[test]
fn bad_mixtures_are_refused_before_any_batch() {
    let s = sources();
    let err = |mix: &str| {
        config(&s.root, &["c4", "wiki"], mix, 20, 8)
            .open()
            .err()
            .expect("refused")
            .to_string()
    };
    assert!(err("c4=1,wiki=1,books=1").contains("unknown source \"books\""));
    assert!(err("c4=0,wiki=0").contains("every weight is zero at step 0"));
    assert!("c4=-1,wiki=1".parse::<shared::sampler::MixSpec>().is_err());
    assert!(err("c4=1").contains("\"wiki\" has no weight"));
}

#[test]
fn sources_with_different_tokenizers_are_refused_naming_both() {
    let s = sources();
    let tok = LoadedTokenizer::load(None).unwrap();
    let mut json = tok.json.clone();
    json.push(b'\n'); // the same vocabulary, another file: another tokenizer identity
    let other = LoadedTokenizer::from_bytes(json, "edited").unwrap();
    let odd = s.root.join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    write_documents(&odd, &other, &sample_docs()[..20], 10).unwrap();
    let e = config(&s.root, &["c4", "odd"], "c4=1,odd=1", 10, 8)
        .open()
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("sources \"c4\" and \"odd\" must share a tokenizer"),
        "{e}"
    );
    assert!(e.contains(&s.root.join("c4").display().to_string()), "{e}");
    assert!(e.contains(&odd.display().to_string()), "{e}");
}

/// `--mix-by-size`: every step's rows per source are the largest-remainder counts of
/// `tokens_i ^ alpha(t)` (tokens read here from the manifests, independently of the sampler),
/// with a stairs exponent and a source joining at 40% of the run.
#[test]
fn mix_by_size_counts_follow_the_size_exponent_and_the_join() {
    let s = sources();
    // 24 rows: at 16, exponents 0.7 and 0.5 both gave [8, 1, 7] and the stairs were invisible.
    let (steps, batch) = (100u64, 24usize);
    let cfg = DataConfig {
        shards: named(&s.root, &["c4", "wiki", "tiny"]),
        mix_by_size: Some("stairs:0.7:0.5@0.6:0.3@0.9".parse().unwrap()),
        join: vec!["tiny@0.4".parse().unwrap()],
        steps,
        batch_size: batch,
        seq_len: 32,
        eval_sequences: 4,
        ..DataConfig::default()
    };
    let data = cfg.open().unwrap();
    assert_eq!(data.sampler.source_names(), ["c4", "tiny", "wiki"]);
    let tokens: Vec<f64> = ["c4", "tiny", "wiki"]
        .iter()
        .map(|n| {
            let text = std::fs::read_to_string(s.root.join(n).join("manifest.json")).unwrap();
            let m: serde_json::Value = serde_json::from_str(&text).unwrap();
            m["shards"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["tokens"].as_u64().unwrap())
                .sum::<u64>() as f64
        })
        .collect();
    let largest = tokens.iter().cloned().fold(0.0, f64::max);
    let mut seen_tiny = false;
    let mut by_stair = std::collections::BTreeMap::<u64, Vec<usize>>::new();
    for step in 0..steps {
        // Hand-written schedule: 0.7 before step 60, 0.5 before 90, then 0.3; tiny from step 40.
        let alpha = if step < 60 {
            0.7
        } else if step < 90 {
            0.5
        } else {
            0.3
        };
        let weights: Vec<f64> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if i == 1 && step < 40 {
                    0.0
                } else {
                    (t / largest).powf(alpha)
                }
            })
            .collect();
        let expected = largest_remainder(batch, &weights);
        let b = data.sampler.global_batch(step).unwrap();
        assert_eq!(per_source(&b, 3), expected, "step {step}");
        if [50, 70, 95].contains(&step) {
            by_stair.insert(step, expected.clone());
        }
        seen_tiny |= step >= 40 && expected[1] > 0;
        assert!(step >= 40 || expected[1] == 0);
    }
    assert!(seen_tiny, "tiny must get rows once it joins");
    // Each stair of the exponent gives its own counts, so a swapped or ignored stair fails.
    let distinct: std::collections::BTreeSet<_> = by_stair.values().collect();
    assert_eq!(distinct.len(), 3, "{by_stair:?}");
    // Refusals: both rules, a join for an unknown source, a join without by-size mixing.
    let refuse = |edit: &dyn Fn(&mut DataConfig)| {
        let mut c = cfg.clone();
        edit(&mut c);
        c.open().err().expect("refused").to_string()
    };
    assert!(refuse(&|c| c.mix = Some("c4=1".parse().unwrap())).contains("give one"));
    assert!(refuse(&|c| c.join = vec!["books@0.5".parse().unwrap()]).contains("\"books\""));
    assert!(refuse(&|c| {
        c.mix_by_size = None;
        c.mix = Some("c4=1,wiki=1,tiny=1".parse().unwrap());
    })
    .contains("--join applies to --mix-by-size"));
}
