//! Shards in a bucket, against a real S3 server (s3s-fs) on 127.0.0.1: batches byte-identical to
//! the same shards on local disk in every order and layout, a cache that never exceeds its bound
//! and is reused warm, and one-line errors naming the URL (retried 500s: `remote_retries.rs`,
//! whose server no other test shares).

use shared::sampler::{Layout, Order};
use std::path::PathBuf;

mod remote_common;

use remote_common::{config, server, uploaded};

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
