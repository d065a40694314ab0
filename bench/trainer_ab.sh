#!/usr/bin/env bash
# A/B of two trainer binaries on the CPU, interleaved (old, new, old, new) to spread the machine's
# drift: the wall time of a whole run (start-up, steps, final evaluation) and the mean tokens/s of
# its second half of steps, per case.
#
#   OLD=/path/to/old/trainer NEW=target/debug/trainer SHARDS=sample-shards bench/trainer_ab.sh
#   CASES="bert mini 32 12;modernbert mini 32 12" ...   # arch, preset, rows, steps per case
set -u
: "${OLD:?the old trainer binary}" "${NEW:?the new trainer binary}" "${SHARDS:?a shard set}"
CASES="${CASES:-bert mini 32 12;modernbert mini 32 12;bert base 8 8;modernbert base 8 8}"
run() { # bin arch model rows steps
    local out
    out="$(mktemp -d)"
    local t0 t1
    t0=$(date +%s.%N)
    "$1" --shards "$SHARDS" --arch "$2" --model "$3" --seq-len 128 --batch-size "$4" --micro-batch "$4" \
        --steps "$5" --eval-every 0 --eval-sequences 8 --save-every 1000 --device cpu --quiet \
        --out "$out/run" > /dev/null 2>&1 || { echo "failed"; rm -rf "$out"; return; }
    t1=$(date +%s.%N)
    python3 - "$out/run/metrics.jsonl" "$t0" "$t1" <<'PY'
import json, statistics, sys
rows = [r for r in map(json.loads, open(sys.argv[1])) if r["kind"] == "train"]
half = rows[len(rows) // 2:]
print(f"{statistics.fmean(r['tokens_per_sec'] for r in half):.0f} tok/s, {float(sys.argv[3]) - float(sys.argv[2]):.1f} s")
PY
    rm -rf "$out"
}
echo "lscpu: $(lscpu | sed -n 's/^Model name: *//p')"
echo "| case | rows x 128, steps | old | new |"
echo "|---|---|---|---|"
IFS=';' read -ra cases <<< "$CASES"
for case in "${cases[@]}"; do
    # shellcheck disable=SC2086
    set -- $case
    o1=$(run "$OLD" "$@"); n1=$(run "$NEW" "$@"); o2=$(run "$OLD" "$@"); n2=$(run "$NEW" "$@")
    echo "| $1 $2 | $3 x 128, $4 steps | $o1; $o2 | $n1; $n2 |"
done
