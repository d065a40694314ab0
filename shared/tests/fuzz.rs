//! Fuzzing of the shard readers (see `shared::fuzz`): the `.idx` header and arrays on their own,
//! and a whole shard directory with a fuzzed `.idx`, `.bin` or `manifest.json` opened and read
//! document by document.

use shared::fuzz::{fuzz, CountingAlloc};
use shared::shard::idx::IndexView;
use shared::shard::ShardSet;
use std::path::Path;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// A valid shard directory of two shards; returns its directory.
fn valid_set() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let docs = shared::fixtures::sample_docs();
    shared::fixtures::write_set(dir.path(), &docs[..30], 15);
    dir
}

/// Opens the set in `path`'s directory and reads every document through the checked path.
fn open_and_read(path: &Path) -> Result<(), String> {
    let set = ShardSet::open(path.parent().unwrap()).map_err(|e| e.to_string())?;
    for d in 0..set.len() {
        let t = set.doc_checked(d).map_err(|e| e.to_string())?;
        std::hint::black_box(t.len());
    }
    Ok(())
}

#[test]
fn fuzz_idx_header_and_arrays() {
    let set = valid_set();
    let seeds = vec![
        std::fs::read(set.path().join("shard-00000.idx")).unwrap(),
        std::fs::read(set.path().join("shard-00001.idx")).unwrap(),
    ];
    fuzz("idx", "shard-00000.idx", &seeds, &|_| {}, &|path| {
        let bytes = std::fs::read(path).unwrap();
        let view = IndexView::parse(&bytes, path).map_err(|e| e.to_string())?;
        for i in 0..view.len().min(10_000) {
            std::hint::black_box((view.length(i), view.pointer(i), view.document_index(i)));
        }
        Ok(())
    });
}

#[test]
fn fuzz_shard_set_with_a_damaged_idx() {
    let set = valid_set();
    let seeds = vec![std::fs::read(set.path().join("shard-00000.idx")).unwrap()];
    let prepare =
        |dir: &Path| shared::fixtures::copy_dir_except(set.path(), dir, "shard-00000.idx");
    fuzz(
        "set-idx",
        "shard-00000.idx",
        &seeds,
        &prepare,
        &open_and_read,
    );
}

#[test]
fn fuzz_shard_set_with_a_damaged_bin() {
    let set = valid_set();
    let seeds = vec![std::fs::read(set.path().join("shard-00000.bin")).unwrap()];
    let prepare =
        |dir: &Path| shared::fixtures::copy_dir_except(set.path(), dir, "shard-00000.bin");
    fuzz(
        "set-bin",
        "shard-00000.bin",
        &seeds,
        &prepare,
        &open_and_read,
    );
}

#[test]
fn fuzz_manifest() {
    let set = valid_set();
    let seeds = vec![std::fs::read(set.path().join("manifest.json")).unwrap()];
    let prepare = |dir: &Path| shared::fixtures::copy_dir_except(set.path(), dir, "manifest.json");
    fuzz(
        "manifest",
        "manifest.json",
        &seeds,
        &prepare,
        &open_and_read,
    );
}

/// Inputs that once crashed a reader (`data/fuzz/`), replayed on every run.
#[test]
fn fuzz_regressions_stay_fixed() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fuzz");
    let set = valid_set();
    // An `.idx` whose counts overflowed the size arithmetic.
    let bytes = std::fs::read(fixtures.join("idx-add-overflow.idx")).unwrap();
    let path = Path::new("shard-00000.idx");
    let err = IndexView::parse(&bytes, path).unwrap_err().to_string();
    assert!(err.contains("shard-00000.idx"), "{err}");
    // An `.idx` whose pointers lead outside the `.bin`, inside an otherwise valid set.
    let dir = tempfile::tempdir().unwrap();
    shared::fixtures::copy_dir_except(set.path(), dir.path(), "shard-00000.idx");
    std::fs::copy(
        fixtures.join("set-idx-pointer-outside-bin.idx"),
        dir.path().join("shard-00000.idx"),
    )
    .unwrap();
    let err = open_and_read(&dir.path().join("shard-00000.idx")).unwrap_err();
    assert!(err.contains("shard-00000"), "{err}");
}
