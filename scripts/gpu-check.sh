#!/usr/bin/env bash
# Validates maskrate's GPU path in one go (≤ 8 minutes on one H100-class GPU).
#
# Two halves, so the GPU machine needs no Rust toolchain and no network:
#
#   scripts/gpu-check.sh build [BUNDLE]   # where Rust is: builds `trainer --features nccl`
#                                         # (CUDA from scripts/cuda-toolkit.sh), packs it with the
#                                         # sample shards and this script into BUNDLE
#                                         # (default gpu-check.tar.zst, ~10 MB)
#   tar --zstd -xf gpu-check.tar.zst && gpu-check/gpu-check.sh check
#                                         # on the GPU machine (NVIDIA driver; PyTorch +
#                                         # transformers for the reference; mpirun for >1 GPU)
#   scripts/gpu-check.sh check --cpu-only # the parts that need no GPU, from a normal build
#
# The check prints one table and writes gpu-check.json:
#   1. tiny BERT, 20 steps, fp32, same seed on the CPU and on cuda:0: the loss curves agree
#      (max relative difference ≤ 2e-3: different kernels, same maths);
#   2. bf16 autocast on cuda:0: final loss within 2% of fp32's;
#   3. BERT-base, sequences of 128, bf16: tokens/s, MFU (6·N FLOPs per token plus attention,
#      against --peak-tflops, default from the GPU's name) and peak GPU memory;
#   4. transformers' BertForMaskedLM on the same GPU (bf16, SDPA): tokens/s, and the ratio;
#   5. with more than one GPU and mpirun: data-parallel tokens/s at 1, 2, …, N GPUs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

build() {
    local bundle="${1:-gpu-check.tar.zst}"
    local repo
    repo="$(cd "$here/.." && pwd)"
    eval "$("$repo/scripts/cuda-toolkit.sh")"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/maskrate/cuda-target}"
    (cd "$repo" && cargo build --release -p trainer --features nccl -p preprocess)
    local stage
    stage="$(mktemp -d)/gpu-check"
    mkdir -p "$stage/bin"
    cp "$CARGO_TARGET_DIR/release/trainer" "$stage/bin/trainer"
    strip "$stage/bin/trainer"
    "$CARGO_TARGET_DIR/release/preprocess" "$repo/data/c4-sample" --out "$stage/shards" --quiet
    cp "$repo/scripts/gpu-check.sh" "$repo/bench/hf_train_step.py" "$stage/"
    tar -C "$(dirname "$stage")" --zstd -cf "$bundle" gpu-check
    echo "wrote $bundle ($(du -h "$bundle" | cut -f1)); on the GPU machine:"
    echo "  tar --zstd -xf $(basename "$bundle") && gpu-check/gpu-check.sh check"
}

check() {
    local cpu_only=0 peak="" out="gpu-check.json"
    while [ $# -gt 0 ]; do
        case "$1" in
            --cpu-only) cpu_only=1 ;;
            --peak-tflops) peak="$2"; shift ;;
            --json) out="$2"; shift ;;
            *) echo "unknown option $1" >&2; exit 2 ;;
        esac
        shift
    done
    # The bundle's binary and shards, or a repository checkout's.
    local trainer shards hf work
    if [ -x "$here/bin/trainer" ]; then
        trainer="$here/bin/trainer"; shards="$here/shards"; hf="$here/hf_train_step.py"
    else
        local repo
        repo="$(cd "$here/.." && pwd)"
        trainer="${TRAINER:-$repo/target/release/trainer}"
        hf="$repo/bench/hf_train_step.py"
        shards="$(mktemp -d)/shards"
        "${PREPROCESS:-$repo/target/release/preprocess}" "$repo/data/c4-sample" --out "$shards" --quiet
    fi
    # The CUDA libraries the binary links (cuBLAS, cuRAND, NCCL…) may only exist inside PyTorch's
    # pip wheels: put those directories on the library path when the loader misses any.
    if ldd "$trainer" 2>/dev/null | grep -q 'not found'; then
        local wheels
        wheels="$(python3 -c 'import glob, os, site
dirs = {d for sp in site.getsitepackages() + [site.getusersitepackages()]
        for d in glob.glob(os.path.join(sp, "nvidia", "*", "lib"))}
print(":".join(sorted(dirs)))' 2>/dev/null || true)"
        export LD_LIBRARY_PATH="$wheels:${LD_LIBRARY_PATH:-}"
        if ldd "$trainer" | grep 'not found'; then
            echo "the libraries above are missing: install the NVIDIA driver and CUDA 13 runtime" >&2
            exit 1
        fi
    fi
    work="$(mktemp -d)"
    # Runs a command with its output in $work/NAME.log, shown if it fails.
    quietly() {
        local name="$1"; shift
        "$@" > "$work/$name.log" 2>&1 || { cat "$work/$name.log" >&2; return 1; }
    }
    local tiny="--shards $shards --model tiny --seq-len 64 --batch-size 32 --micro-batch 32 --steps 20 --eval-every 0 --eval-sequences 32 --save-every 1000 --quiet --seed 0"
    local gpus=0
    if [ "$cpu_only" = 0 ]; then
        gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
        [ "$gpus" -gt 0 ] || { echo "no GPU found by nvidia-smi (use --cpu-only)" >&2; exit 1; }
    fi
    echo "== 1. tiny fp32 on the CPU"
    quietly cpu "$trainer" $tiny --device cpu --precision fp32 --out "$work/cpu"
    if [ "$cpu_only" = 0 ]; then
        echo "== 1. tiny fp32 on cuda:0"
        quietly cuda "$trainer" $tiny --device cuda:0 --precision fp32 --out "$work/cuda"
        echo "== 2. tiny bf16 on cuda:0"
        quietly bf16 "$trainer" $tiny --device cuda:0 --precision bf16 --out "$work/bf16"
        echo "== 3. BERT-base bf16 on cuda:0"
        local mem="$work/mem.txt"
        (while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 >> "$mem"; sleep 0.5; done) &
        local sampler=$!
        quietly base "$trainer" --shards "$shards" --model base --seq-len 128 --layout pack --batch-size 64 \
            --micro-batch 64 --steps 12 --eval-every 0 --eval-sequences 8 --save-every 1000 \
            --quiet --device cuda:0 --precision bf16 --out "$work/base"
        kill "$sampler" 2>/dev/null || true
        echo "== 4. transformers BertForMaskedLM (bf16, SDPA) on cuda:0"
        quietly hf python3 "$hf" --device cuda --bf16 --models base --rows 64 --steps 10 \
            --json "$work/hf.json" || echo "(transformers reference failed: is PyTorch with CUDA installed?)"
        if [ "$gpus" -gt 1 ] && command -v mpirun > /dev/null; then
            for n in $(seq 1 "$gpus"); do
                echo "== 5. data-parallel BERT-base on $n GPU(s)"
                quietly "dp$n" mpirun --allow-run-as-root -np "$n" "$trainer" --shards "$shards" --model base \
                    --seq-len 128 --layout pack --batch-size $((64 * n)) --micro-batch 64 \
                    --steps 12 --eval-every 0 --eval-sequences 8 --save-every 1000 --quiet \
                    --device cuda --precision bf16 --out "$work/dp$n"
            done
        fi
    fi
    GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader -i 0 2>/dev/null || echo none)" \
        PEAK="$peak" WORK="$work" OUT="$out" GPUS="$gpus" python3 - <<'PY'
import json, os
work, gpus = os.environ["WORK"], int(os.environ["GPUS"])
def metrics(run):
    path = os.path.join(work, run, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    return [r for r in map(json.loads, open(path)) if r["kind"] == "train"]
rows, result = [], {"gpu": os.environ["GPU_NAME"]}
cpu, cuda, bf16 = metrics("cpu"), metrics("cuda"), metrics("bf16")
result["cpu_losses"] = [r["loss"] for r in cpu]
rows.append(("tiny fp32 CPU, final loss", f"{cpu[-1]['loss']:.5f}", ""))
if cuda:
    diff = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(cpu, cuda))
    result["cuda_vs_cpu_max_rel_loss_diff"] = diff
    rows.append(("tiny fp32 CUDA vs CPU, max rel. loss difference", f"{diff:.2e}", "PASS" if diff <= 2e-3 else "FAIL"))
if bf16:
    d = abs(bf16[-1]["loss"] - cuda[-1]["loss"]) / cuda[-1]["loss"]
    result["bf16_vs_fp32_final_rel_diff"] = d
    rows.append(("tiny bf16 vs fp32 CUDA, final loss rel. difference", f"{d:.2e}", "PASS" if d <= 0.02 else "FAIL"))
base = metrics("base")
if base:
    tps = sum(r["tokens_per_sec"] for r in base[2:]) / len(base[2:])
    layers, hidden, seq, vocab = 12, 768, 128, 30522
    n = layers * 12 * hidden * hidden + hidden * hidden + hidden * vocab  # matmul weights per token
    flops = 6 * n + 12 * layers * hidden * seq
    peaks = {"H100": 989, "H200": 989, "GH200": 989, "A100": 312, "L40S": 362, "A10": 125, "B200": 2250}
    peak = float(os.environ["PEAK"]) if os.environ["PEAK"] else next((v for k, v in peaks.items() if k in result["gpu"]), None)
    mem_path = os.path.join(work, "mem.txt")
    mem = [int(x) for x in open(mem_path).read().split()] if os.path.exists(mem_path) else []
    result.update(base_tokens_per_sec=tps, base_mfu=(tps * flops / (peak * 1e12)) if peak else None,
                  base_peak_memory_mib=max(mem) if mem else None)
    rows.append(("BERT-base bf16 tokens/s (64x128)", f"{tps:.0f}", ""))
    if peak:
        rows.append((f"BERT-base MFU (peak {peak:.0f} TFLOPS)", f"{100 * result['base_mfu']:.1f}%", ""))
    if mem:
        rows.append(("BERT-base peak GPU memory", f"{max(mem)} MiB", ""))
    hf = os.path.join(work, "hf.json")
    if os.path.exists(hf):
        ref = {r["head"]: r["tokens_per_sec"] for r in json.load(open(hf))}
        result["hf_tokens_per_sec"] = ref
        for head, v in ref.items():
            rows.append((f"transformers bf16 SDPA tokens/s ({head})", f"{v:.0f}", f"maskrate/HF {tps / v:.2f}x"))
dp = {}
for k in range(1, gpus + 1):
    m = metrics(f"dp{k}")
    if m:
        dp[k] = sum(r["tokens_per_sec"] for r in m[2:]) / len(m[2:])
        rows.append((f"data-parallel tokens/s on {k} GPU(s)", f"{dp[k]:.0f}", f"{dp[k] / dp[1]:.2f}x of 1 GPU" if 1 in dp else ""))
result["data_parallel_tokens_per_sec"] = dp
print("\n| check | value | verdict |\n|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
json.dump(result, open(os.environ["OUT"], "w"), indent=1)
print(f"\nwrote {os.environ['OUT']}")
PY
}

case "${1:-}" in
    build) shift; build "$@" ;;
    check) shift; check "$@" ;;
    *) sed -n '2,24p' "$0"; exit 2 ;;
esac
