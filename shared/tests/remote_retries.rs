//! Retried 500s, against a server of this test binary alone: no other test can consume the
//! injected failures, so the count is exact.

mod remote_common;

use remote_common::{config, server, uploaded};
use shared::sampler::{Layout, Order};
use std::path::PathBuf;

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
    // Exactly the two injected 500s were answered, and the client retried past both (at most 3
    // retries: MASKRATE_STORE_RETRIES).
    assert_eq!(server().failed_requests() - failed, 2);
}
