//! Shards in a bucket, against a real S3 server (s3s-fs) on 127.0.0.1: batches byte-identical to
//! the same shards on local disk in every order and layout, a cache that never exceeds its bound
//! and is reused warm, retried 500s, and one-line errors naming the URL.

use s3_test_server::S3Server;
use shared::sampler::{DataConfig, Layout, Order};
use shared::store::{self, Store};
use std::path::PathBuf;
use std::sync::OnceLock;

/// One server for this test binary (the client reads its endpoint and keys from the
/// environment, which is the process's); each test uses its own bucket prefix.
fn server() -> &'static S3Server {
    static SERVER: OnceLock<(tempfile::TempDir, S3Server)> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let root = tempfile::tempdir().unwrap();
            let server = S3Server::start(root.path()).unwrap();
            server.create_bucket("data").unwrap();
            for (k, v) in server.env() {
                // SAFETY (edition 2021: safe): set once, before any client reads it.
                std::env::set_var(k, v);
            }
            std::env::set_var("MASKRATE_STORE_RETRIES", "3");
            (root, server)
        })
        .1
}

/// The bundled sample as a local shard set of `per_shard` documents per shard, uploaded under
/// `s3://data/PREFIX`; returns (guard, local dir, url).
fn uploaded(prefix: &str, per_shard: usize) -> (tempfile::TempDir, PathBuf, String) {
    server();
    let dir = tempfile::tempdir().unwrap();
    shared::fixtures::write_set(dir.path(), &shared::fixtures::sample_docs(), per_shard);
    let url = format!("s3://data/{prefix}");
    store::upload_shard_dir(dir.path(), &Store::open(&url).unwrap(), |_| {}).unwrap();
    let path = dir.path().to_path_buf();
    (dir, path, url)
}

fn config(
    shards: PathBuf,
    order: Order,
    layout: Layout,
    cache: &std::path::Path,
    bytes: u64,
) -> DataConfig {
    DataConfig {
        shards: vec![shards],
        steps: 40,
        batch_size: 16,
        seq_len: 64,
        layout,
        order,
        eval_sequences: 8,
        cache_dir: Some(cache.to_path_buf()),
        cache_bytes: Some(bytes),
        ..DataConfig::default()
    }
}

#[test]
fn batches_from_a_bucket_equal_batches_from_local_disk() {
    let (_guard, local, url) = uploaded("identical", 37);
    for order in [Order::Global, Order::ShardBlocks(2)] {
        for layout in [Layout::Truncate, Layout::Pack] {
            let cache = tempfile::tempdir().unwrap();
            let here = config(local.clone(), order, layout, cache.path(), 1 << 30)
                .open()
                .unwrap();
            let there = config(PathBuf::from(&url), order, layout, cache.path(), 1 << 30)
                .open()
                .unwrap();
            assert!(there.shards.is_remote() && !here.shards.is_remote());
            assert_eq!(here.fingerprint(), there.fingerprint());
            for step in [0, 1, 7, 25, 39] {
                assert_eq!(
                    here.sampler.global_batch(step).unwrap(),
                    there.sampler.global_batch(step).unwrap(),
                    "{order} {layout:?} step {step}"
                );
            }
            let (h, t) = (&here.held_out[0].1, &there.held_out[0].1);
            let (mut a, mut b) = (vec![0; 64], vec![0; 64]);
            for j in 0..h.len() {
                assert_eq!(h.fill(j, &mut a).unwrap(), t.fill(j, &mut b).unwrap());
                assert_eq!(a, b);
            }
        }
    }
}

#[test]
fn the_cache_stays_within_its_bound_and_a_warm_cache_downloads_nothing() {
    // 300 documents in 15 shards of 20; a bound of a few shards (indexes included).
    let (_guard, local, url) = uploaded("bounded", 20);
    let shard_bytes: Vec<u64> = std::fs::read_dir(&local)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".bin"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    let idx_bytes: u64 = std::fs::read_dir(&local)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".idx"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let largest = *shard_bytes.iter().max().unwrap();
    let total: u64 = shard_bytes.iter().sum();
    let bound = idx_bytes + 6 * largest;
    assert!(bound < idx_bytes + total, "the bound must force evictions");
    let cache = tempfile::tempdir().unwrap();
    let order = Order::ShardBlocks(1);
    let here = config(local.clone(), order, Layout::Truncate, cache.path(), bound)
        .open()
        .unwrap();
    {
        let there = config(
            PathBuf::from(&url),
            order,
            Layout::Truncate,
            cache.path(),
            bound,
        )
        .open()
        .unwrap();
        let c = there.shards.cache().unwrap().clone();
        for step in 0..40 {
            assert_eq!(
                here.sampler.global_batch(step).unwrap(),
                there.sampler.global_batch(step).unwrap()
            );
            assert!(
                c.used_bytes() <= bound,
                "step {step}: {} > {bound}",
                c.used_bytes()
            );
        }
        // Files stop changing once the background downloads are done (a download renames its
        // temporary file into place, an eviction deletes one).
        c.wait_idle();
        let stats = c.stats();
        assert!(stats.peak_bytes <= bound);
        assert!(stats.evictions > 0, "{stats:?}");
        let on_disk: u64 = std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert!(on_disk <= bound, "{on_disk} bytes on disk > {bound}");
    }
    // A second run over a cache that holds everything: the first fills it, the second fetches
    // only the manifest.
    let big = 1 << 30;
    let warm = tempfile::tempdir().unwrap();
    let run = || {
        let d = config(
            PathBuf::from(&url),
            Order::Global,
            Layout::Truncate,
            warm.path(),
            big,
        )
        .open()
        .unwrap();
        for step in 0..40 {
            d.sampler.global_batch(step).unwrap();
        }
        // Done downloading before the next run (which would share this cache, counters
        // included, were a prefetch thread still holding it).
        let cache = d.shards.cache().unwrap();
        cache.wait_idle();
        cache.stats()
    };
    let first = run();
    assert!(first.downloads > 0);
    let gets = server().gets_under("/data/bounded/");
    let second = run();
    assert_eq!(second.downloads, 0, "{second:?}");
    assert_eq!(
        server().gets_under("/data/bounded/") - gets,
        1,
        "only the manifest is fetched again"
    );
}

#[test]
fn server_errors_are_retried() {
    let (_guard, local, url) = uploaded("retried", 50);
    let cache = tempfile::tempdir().unwrap();
    let failed = server().failed_requests();
    server().fail_next(2);
    let there = config(
        PathBuf::from(&url),
        Order::Global,
        Layout::Truncate,
        cache.path(),
        1 << 30,
    )
    .open()
    .unwrap();
    let here = config(
        local,
        Order::Global,
        Layout::Truncate,
        cache.path(),
        1 << 30,
    )
    .open()
    .unwrap();
    assert_eq!(
        here.sampler.global_batch(3).unwrap(),
        there.sampler.global_batch(3).unwrap()
    );
    assert!(server().failed_requests() - failed >= 1);
}

#[test]
fn a_missing_bucket_or_prefix_is_one_line_naming_the_url() {
    server();
    let cache = tempfile::tempdir().unwrap();
    for url in ["s3://no-such-bucket/shards", "s3://data/no-such-prefix"] {
        let err = config(
            PathBuf::from(url),
            Order::Global,
            Layout::Truncate,
            cache.path(),
            1 << 30,
        )
        .open()
        .err()
        .expect("refused")
        .to_string();
        assert!(
            err.starts_with(&format!("{url}/manifest.json: not found")),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!err.contains(s3_test_server::SECRET_KEY), "{err}");
    }
}
