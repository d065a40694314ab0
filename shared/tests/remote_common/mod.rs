//! The S3 test server and shard sets in it, for the `remote*` test binaries. Each binary (a
//! process of its own, whose environment the client reads) starts its own server.
#![allow(dead_code)]

use s3_test_server::S3Server;
use shared::sampler::{DataConfig, Layout, Order};
use shared::store::Store;
use std::path::PathBuf;
use std::sync::OnceLock;

/// One server for this test binary (the client reads its endpoint and keys from the
/// environment, which is the process's); each test uses its own bucket prefix.
pub fn server() -> &'static S3Server {
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
pub fn uploaded(prefix: &str, per_shard: usize) -> (tempfile::TempDir, PathBuf, String) {
    server();
    let dir = tempfile::tempdir().unwrap();
    shared::fixtures::write_set(dir.path(), &shared::fixtures::sample_docs(), per_shard);
    let url = format!("s3://data/{prefix}");
    shared::shard::upload_shard_dir(dir.path(), &Store::open(&url).unwrap(), |_| {}).unwrap();
    let path = dir.path().to_path_buf();
    (dir, path, url)
}

pub fn config(
    shards: PathBuf,
    order: Order,
    layout: Layout,
    cache: &std::path::Path,
    bytes: u64,
) -> DataConfig {
    DataConfig {
        shards: vec![shards.into()],
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
