//! Rates per row: each distribution's draws against its CDF, stratified draws over the global
//! batch at any split, scheduled parameters, and masks that follow each row's (document's) rate.

use shared::fixtures::SampleSet;
use shared::rate_dist::RateDist;
use shared::sampler::{
    BatchPlan, Layout, MaskVocab, MaskingConfig, MaskingSampler, SamplerConfig, Sequences,
    IGNORE_LABEL,
};

fn sampler(
    f: &SampleSet,
    layout: Layout,
    (seq_len, batch, steps): (usize, usize, u64),
    dist: &str,
    per_document: bool,
    exact: bool,
) -> MaskingSampler {
    let seqs = Sequences::new(f.set.clone(), &f.tok.info, layout, seq_len, 1).unwrap();
    let cfg = SamplerConfig {
        seed: 41,
        global_batch: batch,
        total_steps: steps,
        schedule: "constant:0.15".parse().unwrap(),
        masking: MaskingConfig {
            exact,
            ..Default::default()
        },
        order: Default::default(),
        rate_dist: dist.parse().unwrap(),
        rate_per_document: per_document,
    };
    MaskingSampler::new(seqs, MaskVocab::from_tokenizer(&f.tok), cfg).unwrap()
}

/// The Kolmogorov-Smirnov statistic of `draws` against `cdf`.
fn ks(mut draws: Vec<f64>, cdf: impl Fn(f64) -> f64) -> f64 {
    draws.sort_by(f64::total_cmp);
    let n = draws.len() as f64;
    draws.iter().enumerate().fold(0.0, |d: f64, (i, &x)| {
        let f = cdf(x);
        d.max((f - i as f64 / n).abs())
            .max(((i + 1) as f64 / n - f).abs())
    })
}

/// The KS statistic's bound at significance `p` for `n` draws (the asymptotic Kolmogorov tail,
/// P(D > d) ≈ 2·exp(−2·n·d²)).
fn ks_bound(n: usize, p: f64) -> f64 {
    ((2.0 / p).ln() / (2.0 * n as f64)).sqrt()
}

/// 10^5 rows of a distribution: 100 steps of 1,000 rows.
fn rows_of(f: &SampleSet, dist: &str) -> Vec<f64> {
    let s = sampler(f, Layout::Truncate, (16, 1000, 100), dist, false, false);
    (0..100)
        .flat_map(|step| s.global_batch(step).unwrap().row_rates)
        .collect()
}

#[test]
fn each_distribution_draws_its_cdf_and_a_swapped_parameter_fails() {
    let f = SampleSet::new(64);
    let bound = ks_bound(100_000, 1e-6);
    for (spec, swapped) in [
        ("uniform:0.1:0.7", "uniform:0.1:0.6"),
        ("beta:2:5:0.05:0.6", "beta:5:2:0.05:0.6"),
        ("truncnorm:0.3:0.1:0.05:0.6", "truncnorm:0.1:0.3:0.05:0.6"),
        ("stratified:0.001:1", "stratified:0.001:0.9"),
    ] {
        let draws = rows_of(&f, spec);
        let dist: RateDist = spec.parse().unwrap();
        let at = dist.at(0, 100, 0.15);
        let d = ks(draws.clone(), |x| at.cdf(x));
        assert!(d < bound, "{spec}: KS {d} >= {bound}");
        let wrong = swapped.parse::<RateDist>().unwrap().at(0, 100, 0.15);
        let d = ks(draws, |x| wrong.cdf(x));
        assert!(d > bound, "{spec} against {swapped}: KS {d} <= {bound}");
    }
}

/// Every global batch holds one rate per stratum, and the rates of a step are the same set for
/// world sizes 1, 2 and 4 with micro-batches, slot for slot; a sampler built afresh (a resumed
/// run) gives the same rates and masks.
#[test]
fn stratified_rates_cover_every_stratum_at_any_split_and_resume() {
    let f = SampleSet::new(64);
    let (lo, hi, n) = (0.001, 1.0, 64usize);
    let s = sampler(
        &f,
        Layout::Truncate,
        (32, n, 20),
        "stratified:0.001:1",
        false,
        false,
    );
    for step in [0, 7, 19] {
        let whole = s.global_batch(step).unwrap();
        let mut strata: Vec<usize> = whole
            .row_rates
            .iter()
            .map(|r| ((r - lo) / (hi - lo) * n as f64).floor() as usize)
            .collect();
        strata.sort();
        assert_eq!(strata, (0..n).collect::<Vec<_>>(), "step {step}");
        for (world, micro) in [(1, 64), (2, 8), (4, 4)] {
            let mut pieces = Vec::new();
            for rank in 0..world {
                let plan = BatchPlan {
                    global_batch: n,
                    world_size: world,
                    rank,
                    micro_batch: micro,
                };
                for m in 0..plan.accumulation_steps() {
                    pieces.extend(s.batch(step, plan.slots(m)).unwrap().row_rates);
                }
            }
            assert_eq!(pieces, whole.row_rates, "world {world}, micro {micro}");
        }
    }
    let resumed = sampler(
        &f,
        Layout::Truncate,
        (32, n, 20),
        "stratified:0.001:1",
        false,
        false,
    );
    assert_eq!(resumed.global_batch(7).unwrap(), s.global_batch(7).unwrap());
    // Another step, another draw.
    assert_ne!(
        s.global_batch(8).unwrap().row_rates,
        s.global_batch(7).unwrap().row_rates
    );
}

/// HI rising 0.1 → 0.8 over 11 steps: at step 0 every rate is at most 0.1, at step 5 at most
/// 0.45 (hand-computed), and the largest of 1,000 rows comes within 1% of it.
#[test]
fn scheduled_parameters_take_their_value_at_each_step() {
    let f = SampleSet::new(64);
    let s = sampler(
        &f,
        Layout::Truncate,
        (16, 1000, 11),
        "uniform:0:[linear:0.1:0.8]",
        false,
        false,
    );
    for (step, hi) in [(0, 0.1), (5, 0.45), (10, 0.8)] {
        let rates = s.global_batch(step).unwrap().row_rates;
        let max = rates.iter().cloned().fold(0.0, f64::max);
        assert!(
            max <= hi + 1e-12 && max > 0.99 * hi,
            "step {step}: max {max}, HI {hi}"
        );
    }
}

/// The original token at flat index `i` of a batch.
fn original(b: &shared::sampler::Batch, i: usize) -> u32 {
    match b.labels[i] {
        IGNORE_LABEL => b.input_ids[i],
        l => l as u32,
    }
}

/// With exact counts, each row (or, per document, each segment) has round(rate × maskable)
/// predictions (at least one) at its own rate; the batch records each row's maskable tokens.
#[test]
fn exact_masks_follow_each_rows_and_each_documents_rate() {
    let f = SampleSet::new(64);
    let special = |id: u32| f.tok.info.special_ids.contains(&id);
    let want = |rate: f64, maskable: usize| ((rate * maskable as f64).round() as usize).max(1);
    // (maskable, predicted) tokens of a span of a batch.
    let count = |b: &shared::sampler::Batch, span: std::ops::Range<usize>| {
        let maskable = span.clone().filter(|&i| !special(original(b, i))).count();
        (
            maskable,
            span.filter(|&i| b.labels[i] != IGNORE_LABEL).count(),
        )
    };
    let rows = sampler(
        &f,
        Layout::Truncate,
        (64, 48, 10),
        "uniform:0.05:0.95",
        false,
        true,
    );
    let b = rows.global_batch(3).unwrap();
    let mut distinct = b.row_rates.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), b.rows(), "every row its own rate");
    for r in 0..b.rows() {
        let (maskable, chosen) = count(&b, r * b.seq_len..(r + 1) * b.seq_len);
        assert_eq!(b.row_maskable[r] as usize, maskable, "row {r}");
        if maskable > 0 {
            assert_eq!(chosen, want(b.row_rates[r], maskable), "row {r}");
        }
    }
    let docs = sampler(
        &f,
        Layout::PackDocs,
        (128, 24, 10),
        "uniform:0.05:0.95",
        true,
        true,
    );
    let b = docs.global_batch(3).unwrap();
    assert_eq!(b.segment_rates.len(), b.segment_starts.len());
    let n = b.input_ids.len();
    let mut checked = 0;
    for (k, &a) in b.segment_starts.iter().enumerate() {
        let span = a as usize..b.segment_starts.get(k + 1).map_or(n, |&e| e as usize);
        let (maskable, chosen) = count(&b, span.clone());
        if maskable > 0 {
            assert_eq!(chosen, want(b.segment_rates[k], maskable), "segment {k}");
            assert_eq!(b.rate_of(span.start as u32), b.segment_rates[k]);
            checked += 1;
        }
    }
    assert!(checked > b.rows(), "rows hold several documents: {checked}");
}

#[test]
fn a_rate_per_document_needs_packed_documents_and_a_distribution() {
    let f = SampleSet::new(64);
    let seqs = Sequences::new(f.set.clone(), &f.tok.info, Layout::Truncate, 32, 1).unwrap();
    let cfg = SamplerConfig {
        seed: 1,
        global_batch: 4,
        total_steps: 10,
        schedule: "constant:0.15".parse().unwrap(),
        masking: MaskingConfig::default(),
        order: Default::default(),
        rate_dist: "uniform:0.1:0.9".parse().unwrap(),
        rate_per_document: true,
    };
    let e = MaskingSampler::new(seqs, MaskVocab::from_tokenizer(&f.tok), cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("needs --layout pack-docs"), "{e}");
}

/// Each predicted token's loss coefficient is its own rate's weight over its row's share, token
/// by token (`Batch::rate_of`: the row's rate, or its document's under pack-docs), for every
/// normalisation: what `LossTerms::of` spreads by row and document.
#[test]
fn loss_coefficients_follow_each_tokens_rate() {
    use shared::sampler::{LossNorm, LossTerms, LossWeight};
    let f = SampleSet::new(64);
    for (layout, per_document) in [(Layout::Truncate, false), (Layout::PackDocs, true)] {
        let s = sampler(
            &f,
            layout,
            (64, 24, 10),
            "uniform:0.05:0.95",
            per_document,
            false,
        );
        let b = s.global_batch(2).unwrap();
        assert!(!b.masked_positions.is_empty());
        if per_document {
            assert!(b.segment_rates.len() > b.rows(), "documents share rows");
        }
        let weight = LossWeight::InverseRate { eps: 1e-3 };
        for norm in [
            LossNorm::Masked,
            LossNorm::Token,
            LossNorm::Sequence,
            LossNorm::Batch,
        ] {
            let got = LossTerms::of(&b, weight, norm).coefficients.unwrap();
            let want: Vec<f32> = b
                .masked_positions
                .iter()
                .map(|&p| {
                    let share = match norm {
                        LossNorm::Sequence => b.row_maskable[p as usize / b.seq_len].max(1) as f64,
                        _ => 1.0,
                    };
                    (weight.of(b.rate_of(p)) / share) as f32
                })
                .collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{layout:?} {norm:?}");
        }
    }
}
