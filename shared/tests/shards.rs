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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn arbitrary_documents_round_trip(docs in prop::collection::vec(prop::collection::vec(0u32..30522, 1..50), 1..40), per_shard in 1usize..10) {
        roundtrip(&docs, per_shard);
    }
}
