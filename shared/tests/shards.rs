//! Shard round trips through the public writer and reader.

use proptest::prelude::*;
use shared::shard::ShardSet;

fn roundtrip(docs: &[Vec<u32>], per_shard: usize) {
    let dir = tempfile::tempdir().unwrap();
    let set = shared::fixtures::write_set(dir.path(), docs, per_shard);
    assert_eq!(set.len(), docs.len() as u64);
    assert_eq!(
        set.num_tokens(),
        docs.iter().map(|d| d.len() as u64).sum::<u64>()
    );
    let mut start = 0u64;
    for (i, d) in docs.iter().enumerate() {
        assert_eq!(&set.doc(i as u64).to_vec(), d, "document {i}");
        assert_eq!(set.doc_len(i as u64), d.len());
        assert_eq!(set.doc_token_start(i as u64), start);
        start += d.len() as u64;
    }
    assert_eq!(set.verify_checksums().unwrap(), 2 * set.num_shards());
}

#[test]
fn real_documents_round_trip_across_shards() {
    let docs = shared::fixtures::sample_docs();
    roundtrip(&docs, 37);
}

#[test]
fn numpy_style_flat_read_matches() {
    // What numpy.memmap(bin, dtype=uint16) sees: the concatenation of all documents.
    let docs = shared::fixtures::sample_docs();
    let dir = tempfile::tempdir().unwrap();
    shared::fixtures::write_set(dir.path(), &docs[..20], 100);
    let bin = std::fs::read(dir.path().join("shard-00000.bin")).unwrap();
    let flat: Vec<u32> = bin
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
        .collect();
    assert_eq!(flat, docs[..20].concat());
}

#[test]
fn a_truncated_bin_is_refused_with_its_path() {
    let docs = shared::fixtures::sample_docs();
    let dir = tempfile::tempdir().unwrap();
    shared::fixtures::write_set(dir.path(), &docs[..10], 100);
    let bin = dir.path().join("shard-00000.bin");
    let len = std::fs::metadata(&bin).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&bin)
        .unwrap()
        .set_len(len - 2)
        .unwrap();
    let err = ShardSet::open(dir.path())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("shard-00000.bin") && err.contains("truncated"),
        "{err}"
    );
}

/// Overwrites the little-endian `u16` token `index` of shard 0 of the set in `dir`.
fn poke_token(dir: &std::path::Path, index: usize, value: u16) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("shard-00000.bin"))
        .unwrap();
    f.seek(SeekFrom::Start(2 * index as u64)).unwrap();
    f.write_all(&value.to_le_bytes()).unwrap();
}

#[test]
fn a_flipped_byte_is_found_by_verification_naming_the_file() {
    let docs = shared::fixtures::sample_docs();
    let dir = tempfile::tempdir().unwrap();
    shared::fixtures::write_set(dir.path(), &docs[..10], 4);
    // Still a valid id (so only the checksum can tell), in the second document of shard 0.
    let at = docs[0].len() + 3;
    poke_token(dir.path(), at, (docs[1][3] ^ 1) as u16);
    let set = ShardSet::open(dir.path()).unwrap();
    let mut seen = 0;
    let err = set
        .verify_checksums_with(|done| seen = done)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("shard-00000.bin") && err.contains("manifest says"),
        "{err}"
    );
    assert!(seen > 0, "progress reported");
    assert_ne!(set.fingerprint(), "", "fingerprint of the manifests");
}

#[test]
fn a_token_id_outside_the_vocabulary_is_refused_at_read() {
    use shared::sampler::{
        Layout, MaskVocab, MaskingConfig, MaskingSampler, SamplerConfig, Sequences,
    };
    let docs = shared::fixtures::sample_docs();
    let dir = tempfile::tempdir().unwrap();
    shared::fixtures::write_set(dir.path(), &docs[..10], 100);
    poke_token(dir.path(), docs[0].len() + docs[1].len() + 5, 40_000);
    let set = std::sync::Arc::new(ShardSet::open(dir.path()).unwrap());
    assert!(set.doc_checked(1).is_ok());
    let err = set.doc_checked(2).unwrap_err().to_string();
    assert!(
        err.contains("shard-00000.bin")
            && err.contains("document 2")
            && err.contains("token id 40000 at position 5")
            && err.contains("outside the vocabulary of 30522"),
        "{err}"
    );
    // Through the sampler: the batch holding document 2 is an error, not an out-of-range id.
    let tok = shared::tokenizer::LoadedTokenizer::load(None).unwrap();
    let seqs = Sequences::new(set, &tok.info, Layout::Truncate, 32, 1).unwrap();
    let cfg = SamplerConfig {
        seed: 0,
        global_batch: 10,
        total_steps: 1,
        schedule: shared::schedule::MaskSchedule::constant(0.15),
        masking: MaskingConfig::default(),
        order: Default::default(),
        rate_dist: Default::default(),
        rate_per_document: false,
    };
    let sampler = MaskingSampler::new(seqs, MaskVocab::from_tokenizer(&tok), cfg).unwrap();
    let err = sampler.global_batch(0).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn arbitrary_documents_round_trip(docs in prop::collection::vec(prop::collection::vec(0u32..30522, 1..50), 1..40), per_shard in 1usize..10) {
        roundtrip(&docs, per_shard);
    }
}
