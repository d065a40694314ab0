//! Batches recorded before rates per row existed: the default rate distribution (`point`) must
//! keep building them byte for byte, in every layout and masking mode.

use sha2::{Digest, Sha256};
use shared::fixtures::SampleSet;
use shared::sampler::{
    Batch, Layout, MaskVocab, MaskingConfig, MaskingSampler, SamplerConfig, Sequences,
};

/// SHA-256 of every array of `b` that a model or a framework reads.
fn digest(b: &Batch) -> String {
    let mut h = Sha256::new();
    for v in [
        &b.input_ids,
        &b.masked_positions,
        &b.masked_labels,
        &b.segment_starts,
    ] {
        h.update(bytemuck::cast_slice::<u32, u8>(v));
    }
    h.update(bytemuck::cast_slice::<i32, u8>(&b.labels));
    h.update(&b.attention_mask);
    h.update(bytemuck::cast_slice::<u64, u8>(&b.sequence_ids));
    h.update(b.rate.to_le_bytes());
    hex::encode(h.finalize())
}

fn digests(f: &SampleSet, layout: Layout, masking: MaskingConfig) -> Vec<String> {
    let seqs = Sequences::new(f.set.clone(), &f.tok.info, layout, 64, 1).unwrap();
    let cfg = SamplerConfig {
        seed: 2305,
        global_batch: 24,
        total_steps: 10,
        schedule: "linear:0.3:0.15".parse().unwrap(),
        masking,
        order: Default::default(),
        rate_dist: Default::default(),
        rate_per_document: false,
    };
    let s = MaskingSampler::new(seqs, MaskVocab::from_tokenizer(&f.tok), cfg).unwrap();
    [0, 4, 9]
        .iter()
        .map(|&step| digest(&s.global_batch(step).unwrap())[..16].to_string())
        .collect()
}

#[test]
fn point_rates_build_the_batches_recorded_before_rates_per_row() {
    let f = SampleSet::new(64);
    let modes = [
        ("bernoulli", MaskingConfig::default()),
        (
            "exact",
            MaskingConfig {
                exact: true,
                ..Default::default()
            },
        ),
        (
            "whole-word",
            MaskingConfig {
                whole_word: true,
                ..Default::default()
            },
        ),
    ];
    let mut got = Vec::new();
    for layout in [Layout::Truncate, Layout::PackDocs] {
        for (name, masking) in modes {
            got.push(format!(
                "{layout:?} {name} {}",
                digests(&f, layout, masking).join(" ")
            ));
        }
    }
    let recorded = RECORDED.lines().map(str::trim).filter(|l| !l.is_empty());
    assert_eq!(got, recorded.collect::<Vec<_>>());
}

/// Recorded at commit 23d9b06 (before rates per row).
const RECORDED: &str = "
Truncate bernoulli 136f8a238fbc6df5 842c83beee7e480a 4b7f09639cde0eb5
Truncate exact b0dfdf101076beff 71f26ac4cf8f8148 f4f069fc24c5df46
Truncate whole-word 96b552ba9fe44320 a3dd8faef240a4a4 b77ce141fad74ea5
PackDocs bernoulli b101d797312d1b0e 4d151576f7ef2a39 cfb6976bd3a167dd
PackDocs exact 4f9030dd4b2239ab 7353953eeafd71e6 a2229e539083d842
PackDocs whole-word b738162ed246b5b6 4fc9ca0da5ab1c92 455b708d9feb9202
";
