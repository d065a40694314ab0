//! Phases (`[[phases]]`): batch shapes and rates follow the plan at the boundaries, each source's
//! stream continues across phases, a phase's mixture by size is exact, and batches stay the same
//! for any thread count or rank split.

use shared::fixtures::{sample_docs, write_set};
use shared::sampler::batch::MIX_TAG;
use shared::sampler::mixture::largest_remainder;
use shared::sampler::order::Permutation;
use shared::sampler::{Batch, DataConfig, Phase, ShardSource};
use shared::schedule::MaskSchedule;
use shared::seed::seed_of;
use std::path::{Path, PathBuf};

struct Sources {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

/// `web` (documents 0..200) and `late` (200..260) from the sample.
fn sources() -> Sources {
    let dir = tempfile::tempdir().unwrap();
    let docs = sample_docs();
    for (name, range) in [("web", 0..200), ("late", 200..260)] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        write_set(&d, &docs[range], 40);
    }
    let root = dir.path().to_path_buf();
    Sources { _dir: dir, root }
}

fn source(root: &Path, name: &str) -> ShardSource {
    ShardSource::named(name, root.join(name)).unwrap()
}

fn phases(json: serde_json::Value) -> Vec<Phase> {
    serde_json::from_value(json).unwrap()
}

/// A 20-step run of 8 x 32 over `web` alone.
fn base(root: &Path) -> DataConfig {
    DataConfig {
        shards: vec![source(root, "web")],
        steps: 20,
        batch_size: 8,
        seq_len: 32,
        eval_sequences: 4,
        schedule: "linear:0.3:0.1".parse().unwrap(),
        ..DataConfig::default()
    }
}

fn shape(b: &Batch) -> (usize, usize) {
    (b.rows(), b.seq_len)
}

#[test]
fn one_phase_covering_the_run_gives_the_batches_of_no_phases() {
    let s = sources();
    let plain = base(&s.root).open().unwrap();
    let one = DataConfig {
        phases: phases(serde_json::json!([{}])),
        ..base(&s.root)
    }
    .open()
    .unwrap();
    for step in [0, 7, 19] {
        assert_eq!(
            plain.sampler.global_batch(step).unwrap(),
            one.sampler.global_batch(step).unwrap()
        );
    }
}

#[test]
fn shapes_rates_and_streams_follow_the_plan_at_the_boundary() {
    let s = sources();
    let cfg = DataConfig {
        phases: phases(serde_json::json!([
            {"steps": 10},
            {"seq_len": 64, "batch_size": 16, "schedule": "linear:0.2:0.04"},
        ])),
        ..base(&s.root)
    };
    let data = cfg.open().unwrap();
    let sampler = &data.sampler;
    let (b9, b10, b19) = (
        sampler.global_batch(9).unwrap(),
        sampler.global_batch(10).unwrap(),
        sampler.global_batch(19).unwrap(),
    );
    assert_eq!(
        (shape(&b9), shape(&b10), shape(&b19)),
        ((8, 32), (16, 64), (16, 64))
    );
    assert_eq!(
        (sampler.global_batch_at(9), sampler.seq_len_at(10)),
        (8, 64)
    );
    // The run's schedule over the run in phase 1; the phase's own over the phase in phase 2
    // (hand-computed: linear from 0.3 at step 0 to 0.1 at step 19 of 20; from 0.2 at the
    // phase's first step to 0.04 at its last, 10 steps).
    let run: MaskSchedule = "linear:0.3:0.1".parse().unwrap();
    assert_eq!(b9.rate, run.rate(9, 20));
    assert!((b10.rate - 0.2).abs() < 1e-12, "{}", b10.rate);
    assert!((b19.rate - 0.04).abs() < 1e-12, "{}", b19.rate);
    assert!((sampler.rate_at(14) - (0.2 - 0.16 * 4.0 / 9.0)).abs() < 1e-12);
    // The stream continues: phase 2's first step holds positions 80..96 of the document order,
    // which a run of 8 per step (no phases) reads at its steps 10 and 11 (truncate: a sequence
    // is a document whatever the length).
    let plain = base(&s.root).open().unwrap();
    let mut expected = plain.sampler.global_batch(10).unwrap().sequence_ids;
    expected.extend(plain.sampler.global_batch(11).unwrap().sequence_ids);
    assert_eq!(b10.sequence_ids, expected);
    // Tokens so far count each phase's shape.
    assert_eq!(sampler.tokens_before(12), 10 * 8 * 32 + 2 * 16 * 64);
}

#[test]
fn a_source_joining_in_a_phase_mixes_by_size_exactly_and_continues_its_stream() {
    let s = sources();
    let late = s.root.join("late").display().to_string();
    let web = s.root.join("web").display().to_string();
    let cfg = DataConfig {
        phases: phases(serde_json::json!([
            {"steps": 8},
            // 64 rows: at 8 the counts were [3, 5] for every exponent, hiding the schedule.
            {"shards": [format!("web={web}"), format!("late={late}")], "mix_by_size": "linear:0.7:0.3", "batch_size": 64},
        ])),
        ..base(&s.root)
    };
    let data = cfg.open().unwrap();
    let sampler = &data.sampler;
    assert_eq!(sampler.source_names(), ["late", "web"]);
    // Sizes from the manifests, read independently of the sampler.
    let tokens = |name: &str| -> f64 {
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(s.root.join(name).join("manifest.json")).unwrap(),
        )
        .unwrap();
        manifest["totals"]["tokens"].as_u64().unwrap() as f64
    };
    let (t_late, t_web) = (tokens("late"), tokens("web"));
    let alpha: MaskSchedule = "linear:0.7:0.3".parse().unwrap();
    let mut phase_counts = std::collections::BTreeSet::new();
    for step in 0..20u64 {
        let b = sampler.global_batch(step).unwrap();
        let mut counts = vec![0usize; 2];
        for &x in &b.sources {
            counts[x as usize] += 1;
        }
        let expected = if step < 8 {
            vec![0, 8]
        } else {
            // The phase's exponent runs over the phase (steps 8..20: 12 steps).
            let a = alpha.rate(step - 8, 12);
            let max = t_late.max(t_web);
            let c = largest_remainder(64, &[(t_late / max).powf(a), (t_web / max).powf(a)]);
            phase_counts.insert(c.clone());
            c
        };
        assert_eq!(counts, expected, "step {step}");
        assert_eq!(sampler.counts_at(step), expected, "step {step}");
    }
    // The exponent's schedule shows in the counts (a constant exponent would give one pair).
    assert!(phase_counts.len() >= 3, "{phase_counts:?}");
    // `web` continues where phase 1 left it: after its 64 rows, its next rows are the run
    // without phases' positions 64.., in the order the slots draw them: slot `s` holds source
    // rows in its shuffled place (`MIX_TAG` permutation of the step), `late`'s first.
    let plain = base(&s.root).open().unwrap();
    let order: Vec<u64> = (8..16)
        .flat_map(|step| plain.sampler.global_batch(step).unwrap().sequence_ids)
        .collect();
    let b8 = sampler.global_batch(8).unwrap();
    let shuffle = Permutation::new(64, seed_of(&[0, MIX_TAG, 8]));
    let late_rows = sampler.counts_at(8)[0];
    let mut web_rows = 0;
    for (slot, (&src, &seq)) in b8.sources.iter().zip(&b8.sequence_ids).enumerate() {
        let place = shuffle.apply(slot as u64) as usize;
        assert_eq!(src == 1, place >= late_rows, "slot {slot}");
        if src == 1 {
            assert_eq!(seq, order[place - late_rows], "slot {slot}");
            web_rows += 1;
        }
    }
    assert_eq!(web_rows, 64 - late_rows);
}

#[test]
fn batches_are_the_same_for_any_thread_count_and_rank_split() {
    let s = sources();
    let cfg = DataConfig {
        phases: phases(serde_json::json!([
            {"steps": 6, "batch_size": 4},
            {"steps": 6},
            {"seq_len": 48, "schedule": "constant:0.05"},
        ])),
        ..base(&s.root)
    };
    let data = cfg.open().unwrap();
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    for step in [0, 5, 6, 11, 12, 19] {
        let one = pool(1).install(|| data.sampler.global_batch(step).unwrap());
        let two = pool(2).install(|| data.sampler.global_batch(step).unwrap());
        assert_eq!(one, two, "step {step}");
        let n = data.sampler.global_batch_at(step);
        let halves = [
            data.sampler.batch(step, 0..n / 2).unwrap(),
            data.sampler.batch(step, n / 2..n).unwrap(),
        ];
        let mut joined = halves[0].input_ids.clone();
        joined.extend(&halves[1].input_ids);
        assert_eq!(joined, one.input_ids, "step {step}");
        let mut labels = halves[0].labels.clone();
        labels.extend(&halves[1].labels);
        assert_eq!(labels, one.labels, "step {step}");
    }
}

#[test]
fn phases_are_refused_before_any_batch_when_they_cannot_run() {
    let s = sources();
    let err = |json: serde_json::Value| {
        DataConfig {
            phases: phases(json),
            ..base(&s.root)
        }
        .open()
        .err()
        .expect("refused")
        .to_string()
    };
    let e = err(serde_json::json!([{"steps": 10}, {"steps": 5}]));
    assert!(e.contains("10 + 5") && e.contains("20"), "{e}");
    let e = err(serde_json::json!([{"steps": 10}, {"mix": "nowhere=1"}]));
    assert!(e.contains("phase 2"), "{e}");
    // A setting no phase may change is refused by the phase's type, naming it.
    let e = serde_json::from_value::<Vec<Phase>>(
        serde_json::json!([{"steps": 10}, {"layout": "pack"}]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `layout`"), "{e}");
}
