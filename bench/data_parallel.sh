#!/usr/bin/env bash
# Data-parallel training on one CPU machine: 1 process × all cores against N MPI ranks sharing the
# cores (each rank gets cores/N threads), same global batch, for mini and base; tokens/s and the
# time per step spent in collectives (gradient all-reduce + the step's sums).
#
#   cargo build --release -p trainer --features mpi && bench/data_parallel.sh [RANKS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
ranks="${1:-2}"; steps="${2:-6}"
trainer=target/release/trainer
work="$(mktemp -d)"
target/release/preprocess data/c4-sample --out "$work/shards" --quiet
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "| model | global batch | processes × threads | tokens/s | collectives ms/step | share of step |"
echo "|---|---|---|---|---|---|"
for spec in "mini 64 32" "base 16 8"; do
    set -- $spec
    model=$1; batch=$2; micro=$3
    flags="--shards $work/shards --model $model --seq-len 128 --layout pack --batch-size $batch --micro-batch $micro --steps $((steps + 1)) --eval-every 0 --eval-sequences 8 --save-every 100000 --quiet --device cpu"
    "$trainer" $flags --out "$work/$model-1" > /dev/null 2>&1
    mpirun --oversubscribe -np "$ranks" "$trainer" $flags --out "$work/$model-$ranks" > /dev/null 2>&1
    for run in 1 "$ranks"; do
        python3 - "$work/$model-$run/metrics.jsonl" "$model" "$batch" "$run" "$(nproc)" <<'PY'
import json, sys
path, model, batch, run, cores = sys.argv[1:]
rs = [r for r in map(json.loads, open(path)) if r["kind"] == "train"][1:]  # step 0 warms up
tps = sum(r["tokens_per_sec"] for r in rs) / len(rs)
sync = [r.get("sync_sec") for r in rs if r.get("sync_sec") is not None]
threads = max(1, int(cores) // int(run))
if sync:
    ms = 1e3 * sum(sync) / len(sync)
    step_ms = 1e3 * sum(int(batch) * 128 / r["tokens_per_sec"] for r in rs) / len(rs)
    col = f"{ms:.1f} | {100 * ms / step_ms:.1f}%"
else:
    col = "– | –"
print(f"| {model} | {batch}×128 | {run} × {threads} | {tps:.0f} | {col} |")
PY
    done
done
