#!/usr/bin/env bash
# Object storage against a real S3 server on 127.0.0.1 (maskrate-s3-server, s3s-fs):
#   1. preprocess throughput, local disk -> local disk vs bucket -> bucket (same corpus, same
#      flags; the shards are checked byte-identical);
#   2. the sampler from the bucket (cold/warm cache, shard-blocks through a small cache) vs local
#      mmap, bytes fetched per step, peak memory, shuffle quality (shared/benches/remote_read.rs).
# Usage: bench/object_storage.sh [CORPUS_DIR] [SHARD_SIZE]   (default ../shared/data/wiki/en, 1MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
corpus="$(realpath "${1:-../shared/data/wiki/en}")"
shard_size="${2:-1MiB}"
cargo build --release -q -p preprocess -p maskrate-s3-test-server
tmp="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null || true; rm -rf "$tmp"' EXIT
target/release/maskrate-s3-server "$tmp/s3" --bucket data > "$tmp/endpoint" 2>/dev/null &
server=$!
while [ ! -s "$tmp/endpoint" ]; do sleep 0.1; done
export AWS_ACCESS_KEY_ID=maskrate-test-key AWS_SECRET_ACCESS_KEY=maskrate-test-secret \
    AWS_REGION=us-east-1 AWS_ENDPOINT_URL="$(head -1 "$tmp/endpoint")"
cp -r "$corpus" "$tmp/s3/data/corpus"
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; corpus $(du -sh "$corpus" | cut -f1)"
timed() { local t0; t0=$(date +%s.%N); "$@"; echo "$(date +%s.%N) - $t0" | bc; }
bytes=$(du -sb "$corpus" | cut -f1)
for run in local bucket; do
    if [ $run = local ]; then
        s=$(timed target/release/preprocess "$corpus" --out "$tmp/local" --shard-size "$shard_size" --quiet 2>/dev/null | tail -1)
    else
        s=$(timed target/release/preprocess s3://data/corpus --out s3://data/shards --work-dir "$tmp/work" --shard-size "$shard_size" --quiet 2>/dev/null | tail -1)
    fi
    echo "preprocess $run -> $run: ${s}s, $(echo "$bytes / $s / 1000000" | bc -l | cut -c1-6) MB/s of compressed input"
done
for f in "$tmp"/local/shard-*; do cmp -s "$f" "$tmp/s3/data/shards/$(basename "$f")" || { echo "DIFFERENT: $f"; exit 1; }; done
echo "shards byte-identical: $(ls "$tmp"/local/shard-* | wc -l) files"
cargo bench -q -p maskrate-shared --bench remote_read -- "$tmp/local" "${BATCH:-256}" "${STEPS:-200}"
