#!/usr/bin/env bash
# maskrate's GPU checks in one call (about 9 minutes on one H200), from a bundle that needs no Rust
# toolchain and no network on the GPU machine.
#
#   scripts/gpu-check.sh build [BUNDLE]   # where Rust is: the trainer (`--features nccl`, CUDA from
#                                         # scripts/cuda-toolkit.sh), the maskrate wheel
#                                         # (scripts/build-wheel.sh), the wiki shards (../shared/data
#                                         # when present, else the bundled C4 sample) and these
#                                         # scripts, packed into BUNDLE (default gpu-check.tar.gz;
#                                         # refused over 60 MiB, naming the largest files)
#   tar -xzf gpu-check.tar.gz && gpu-check/gpu-check.sh check --out DIR
#                                         # on the GPU machine: NVIDIA driver, python3 with PyTorch
#                                         # and transformers; the wheel goes in with --no-index
#   scripts/gpu-check.sh check --cpu-only --out DIR   # every step that needs no GPU, sizes cut to
#                                         # seconds, from a checkout (what CI runs)
#   scripts/gpu-check.sh pack STAGE BUNDLE # the packing step alone (with its size limit)
# check's options: --out DIR, --cpu-only, --wheel WHEEL, --budget-s SECONDS (the whole check,
# default 540: the sweep gets what the earlier steps leave), --steps A,B (only these steps).
#
# Each step runs under its own time limit; a step that fails or times out is reported in the table
# and the later steps still run. Steps:
#   env          GPU, driver, python, torch and transformers versions
#   wheel        pip install --no-index the maskrate wheel into a private directory, import it
#   shards       (checkout only) preprocess the bundled sample with the wheel's `maskrate preprocess`
#   device-check `trainer device-check`: Philox4x32-10's known answers on the device, the
#                device's dropout masks equal to the CPU kernel's bit for bit (f32, bf16, f16),
#                then the per-op table: each fused kernel (GELU, GeGLU, rotary, layer norm,
#                embedding, cross-entropy, attention so far) forward and backward against its CPU twin at BERT-base and ModernBERT-base
#                shapes. If a check fails, the candle throughput steps are skipped: fix the
#                kernel first.
#   candle-throughput  candle BERT-base and ModernBERT-base bf16 at 256 x 128 (BERT also with
#                --dropout 0, and with --kernels composed: the path without this project's CUDA
#                kernels) and pack-docs at 64 x 512, each with --profile: tokens/s, MFU on the
#                FLOPs executed (peak by the GPU's exact name), phases, transfers, peak memory
#   torch-route  transformers' BertForMaskedLM and ModernBertForMaskedLM (bf16, SDPA) fed by
#                maskrate.torch.MaskedDataset through a DataLoader, the same shapes: the yardstick
#   candle-cpu   tiny BERT, fp32, on the CPU (the reference curve)
#   candle-cuda  the same on cuda:0 (loss curves within 2e-3), then bf16 (final loss within 2%)
#   sweep        constant 0.15, constant 0.3, linear/cosine 0.3 -> 0.15, linear 0.15 -> 0.3 on BERT
#                `small`, several seeds, one token budget per run, held-out loss at 15% (PyTorch
#                route: scripts/gpu_check.py sweep), each model fine-tuned on the GLUE tasks
#                (`trainer glue` on the device), passes over the corpus, REPORT.md
# Results: DIR/gpu-check.json (every section: env, steps, device_check, candle, torch_route, sweep) and
# DIR/gpu-check.md, plus DIR/REPORT.md (the sweep) and DIR/logs.tar.gz (every step's log).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
BUNDLE_LIMIT_MIB="${MASKRATE_BUNDLE_LIMIT_MIB:-60}"

# Packs STAGE (a directory) into BUNDLE; refuses, naming the largest files, over the limit.
pack() {
    local stage="$1" bundle="$2"
    tar -C "$(dirname "$stage")" -I 'gzip -9' -cf "$bundle.tmp" "$(basename "$stage")" || return 1
    local bytes
    bytes=$(stat -c %s "$bundle.tmp")
    if [ "$bytes" -gt $((BUNDLE_LIMIT_MIB * 1024 * 1024)) ]; then
        rm -f "$bundle.tmp"
        echo "error: the bundle would be $((bytes / 1024 / 1024)) MiB, over the ${BUNDLE_LIMIT_MIB} MiB limit; largest files (uncompressed):" >&2
        (cd "$stage" && find . -type f -printf '%s %p\n' | sort -rn | head -5 |
            awk '{printf "  %s  %.1f MiB\n", $2, $1 / 1048576}') >&2
        return 1
    fi
    mv "$bundle.tmp" "$bundle"
    echo "wrote $bundle ($((bytes / 1024 / 1024)) MiB)"
}

build() {
    set -e
    local bundle="${1:-gpu-check.tar.gz}" repo
    repo="$(cd "$here/.." && pwd)"
    eval "$("$repo/scripts/cuda-toolkit.sh")"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/maskrate/cuda-target}"
    (cd "$repo" && cargo build --release -p trainer --features nccl -p preprocess)
    local wheel
    wheel="$("$repo/scripts/build-wheel.sh" | tail -1)"
    local stage
    stage="$(mktemp -d)/gpu-check"
    mkdir -p "$stage/bin" "$stage/wheel"
    cp "$CARGO_TARGET_DIR/release/trainer" "$stage/bin/trainer"
    strip "$stage/bin/trainer"
    # The kernel-launch counter --profile reads (preloaded into the throughput runs).
    cc -O2 -shared -fPIC -o "$stage/bin/liblaunchcount.so" "$repo/scripts/launch-counter.c" -ldl
    cp "$wheel" "$stage/wheel/"
    local corpus="$repo/../shared/data/wiki/en"
    [ -d "$corpus" ] || corpus="$repo/data/c4-sample"
    "$CARGO_TARGET_DIR/release/preprocess" "$corpus" --out "$stage/shards" --quiet
    # The GLUE tasks the sweep fine-tunes on (../shared/data/glue, else the bundled fixtures).
    local glue="$repo/../shared/data/glue"
    [ -d "$glue" ] || glue="$repo/data/glue"
    mkdir -p "$stage/glue"
    for t in CoLA SST-2 MRPC STS-B RTE; do
        if [ -d "$glue/$t" ]; then cp -r "$glue/$t" "$stage/glue/"; fi
    done
    cp "$repo/scripts/gpu-check.sh" "$repo/scripts/gpu_check.py" "$repo/bench/hf_train_step.py" "$stage/"
    set +e
    pack "$stage" "$bundle" || exit 1
    echo "on the GPU machine: tar -xzf $(basename "$bundle") && gpu-check/gpu-check.sh check --out DIR"
}

check() {
    local cpu_only=0 out="gpu-check-out" wheel="" budget=540 only=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --cpu-only) cpu_only=1 ;;
            --steps) only=",$2,"; shift ;;
            --out) out="$2"; shift ;;
            --wheel) wheel="$2"; shift ;;
            --budget-s) budget="$2"; shift ;;
            *) echo "unknown option $1" >&2; exit 2 ;;
        esac
        shift
    done
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"
    local start=$SECONDS python="${PYTHON:-python3}" trainer shards repo=""
    # The bundle's binary, wheel and shards, or a checkout's (TRAINER and --wheel override).
    local glue
    if [ -d "$here/wheel" ]; then
        trainer="${TRAINER:-$here/bin/trainer}"; shards="$here/shards"; glue="$here/glue"
        wheel="${wheel:-$(ls "$here"/wheel/*.whl | head -1)}"
    else
        repo="$(cd "$here/.." && pwd)"
        glue="$repo/data/glue"
        trainer="${TRAINER:-$repo/target/release/trainer}"
        wheel="${wheel:-$(ls "$repo"/dist/maskrate-*.whl 2>/dev/null | head -1)}"
        shards=""
    fi
    local work
    work="$(mktemp -d)"
    : > "$work/steps.jsonl"
    # step NAME SECONDS CMD...: runs CMD under a time limit with its output in $work/NAME.log, and
    # records its status (ok, fail, timeout, skipped) and duration; never stops the check.
    step() {
        local name="$1" limit="$2"; shift 2
        if [ -n "$only" ] && [[ "$only" != *",$name,"* ]]; then
            skip "$name" "not in --steps"
            return 0
        fi
        local t0=$SECONDS rc status note=""
        echo "== $name (limit ${limit} s)"
        timeout --kill-after=15 "$limit" "$@" > "$work/$name.log" 2>&1
        rc=$?
        case $rc in
            0) status=ok ;;
            124|137) status=timeout; note="stopped after ${limit} s" ;;
            *) status=fail; note="exit $rc: $(grep -v '^\s*$' "$work/$name.log" | tail -1 | cut -c1-160)"
               [ "$note" = "exit $rc: " ] && note="exit $rc (no output)" ;;
        esac
        [ "$status" = ok ] || { echo "   $status: $note"; tail -5 "$work/$name.log" | sed 's/^/   | /'; }
        NAME="$name" STATUS="$status" SECS=$((SECONDS - t0)) NOTE="$note" "$python" -c '
import json, os
print(json.dumps({"step": os.environ["NAME"], "status": os.environ["STATUS"],
                  "seconds": int(os.environ["SECS"]), "note": os.environ["NOTE"]}))' >> "$work/steps.jsonl"
        return $rc
    }
    skip() {
        NAME="$1" NOTE="$2" "$python" -c '
import json, os
print(json.dumps({"step": os.environ["NAME"], "status": "skipped", "seconds": 0, "note": os.environ["NOTE"]}))' >> "$work/steps.jsonl"
        echo "== $1 skipped: $2"
    }

    step env 30 "$python" - "$work/env.json" "$cpu_only" <<'PY'
import json, platform, subprocess, sys
env = {"python": platform.python_version(), "cpu_only": sys.argv[2] == "1"}
try:
    import torch, transformers
    env.update(torch=torch.__version__, transformers=transformers.__version__,
               cuda_available=torch.cuda.is_available())
    env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
except Exception as e:  # reported, the later steps say what they lack
    env["import_error"] = repr(e)
try:
    env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True).stdout.strip()
except OSError:
    env["driver"] = None
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(env)
PY
    # The wheel, installed without the network into a private directory.
    local site="$work/site"
    if [ -n "$wheel" ]; then
        step wheel 60 bash -c "'$python' -m pip install -q --no-index --no-deps --no-compile --target '$site' '$wheel' && PYTHONPATH='$site' '$python' -c 'import maskrate, maskrate.torch; print(maskrate.__version__, maskrate.__file__)'"
    else
        skip wheel "no wheel found (scripts/build-wheel.sh, or --wheel)"
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    if [ -z "$shards" ]; then
        shards="$work/shards"
        step shards 120 "$python" -m maskrate preprocess "$repo/data/c4-sample" --out "$shards" --quiet
    fi

    # The candle trainer. Its CUDA libraries (cuBLAS, cuRAND, NCCL) may only exist inside PyTorch's
    # pip wheels: put those on the library path when the loader misses any.
    if ldd "$trainer" 2>/dev/null | grep -q 'not found'; then
        local wheels
        wheels="$("$python" -c 'import glob, os, site
dirs = {d for sp in site.getsitepackages() + [site.getusersitepackages()]
        for d in glob.glob(os.path.join(sp, "nvidia", "*", "lib")) + glob.glob(os.path.join(sp, "nvidia", "cu13", "lib"))}
print(":".join(sorted(dirs)))' 2>/dev/null || true)"
        export LD_LIBRARY_PATH="$wheels:${LD_LIBRARY_PATH:-}"
    fi
    local steps=20
    [ "$cpu_only" = 1 ] && steps=4
    local device=cuda:0
    [ "$cpu_only" = 1 ] && device=cpu
    local kernels_ok=1
    step device-check 60 "$trainer" device-check --device "$device" --json "$work/device_check.json" \
        || kernels_ok=0
    local tiny="--shards $shards --model tiny --seq-len 64 --batch-size 32 --micro-batch 32 --steps $steps --eval-every 0 --eval-sequences 32 --save-every 1000 --quiet --seed 0"
    if [ "$cpu_only" = 0 ]; then
        # The throughput table first: candle at the PyTorch route's shapes, then the route itself.
        (while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 >> "$work/mem.txt" 2>/dev/null; sleep 0.5; done) &
        local sampler=$!
        local common="--shards $shards --model base --steps 8 --eval-every 0 --eval-sequences 8 --save-every 1000 --quiet --device cuda:0 --precision bf16 --profile --log-every 4"
        local counter
        counter="$(dirname "$trainer")/liblaunchcount.so"
        [ -f "$counter" ] || counter=""
        if [ "$kernels_ok" = 0 ]; then
            skip candle-throughput "device-check failed: a kernel disagrees with its CPU twin (see the table)"
        else
        step candle-throughput 300 env ${counter:+LD_PRELOAD="$counter"} bash -c "
            '$trainer' $common --seq-len 128 --batch-size 256 --micro-batch 256 --out '$work/bert-base';
            '$trainer' $common --seq-len 128 --batch-size 256 --micro-batch 256 --dropout 0 --out '$work/bert-base-dropout0';
            '$trainer' $common --seq-len 128 --batch-size 256 --micro-batch 256 --kernels composed --out '$work/bert-base-composed';
            '$trainer' $common --arch modernbert --seq-len 128 --batch-size 256 --micro-batch 256 --out '$work/modernbert-base';
            '$trainer' $common --seq-len 512 --layout pack-docs --batch-size 64 --micro-batch 64 --out '$work/bert-base-pack512';
            '$trainer' $common --arch modernbert --seq-len 512 --layout pack-docs --batch-size 64 --micro-batch 64 --out '$work/modernbert-base-pack512'"
        fi
        kill "$sampler" 2>/dev/null
        step torch-route 120 "$python" "$here/gpu_check.py" throughput --shards "$shards" \
            --size base --rows 256 --steps 30 --warmup 5 --workers 4 --json "$work/torch_route.json"
        step candle-cpu 60 "$trainer" $tiny --device cpu --precision fp32 --out "$work/cpu"
        step candle-cuda 90 bash -c "'$trainer' $tiny --device cuda:0 --precision fp32 --out '$work/cuda' && '$trainer' $tiny --device cuda:0 --precision bf16 --out '$work/bf16'"
        local left=$((budget - (SECONDS - start) - 40))
        [ "$left" -gt 360 ] && left=360
        if [ "$left" -lt 60 ]; then
            skip sweep "only ${left} s of the budget left (run it alone: --steps sweep)"
        else
            step sweep $((left + 60)) "$python" "$here/gpu_check.py" sweep --shards "$shards" \
                --size small --rows 256 --seq-len 128 --steps 800 --seeds 3 --workers 2 \
                --lr 5e-4 --budget-s "$left" --glue "$glue" --trainer "$trainer" --out "$work/sweep"
        fi
    else
        skip candle-throughput "--cpu-only"
        step torch-route 180 "$python" "$here/gpu_check.py" throughput --shards "$shards" --cpu-only \
            --size tiny --rows 8 --seq-len 64 --steps 3 --warmup 1 --workers 2 --json "$work/torch_route.json"
        step candle-cpu 60 "$trainer" $tiny --device cpu --precision fp32 --out "$work/cpu"
        skip candle-cuda "--cpu-only"
        step sweep 300 "$python" "$here/gpu_check.py" sweep --shards "$shards" --cpu-only --size tiny \
            --rows 8 --seq-len 64 --steps 4 --seeds 1 --workers 0 --budget-s 240 --glue "$glue" \
            --trainer "$trainer" --glue-max-train 32 --glue-epochs 1 --out "$work/sweep"
    fi
    "$python" "$here/gpu_check.py" summarize --work "$work" --json "$out/gpu-check.json" \
        --markdown "$out/gpu-check.md"
    [ -f "$work/sweep/REPORT.md" ] && cp "$work/sweep/REPORT.md" "$out/REPORT.md"
    tar -C "$work" -czf "$out/logs.tar.gz" --exclude=site --exclude=shards --exclude='*.safetensors' \
        --exclude=checkpoints --exclude='step-*' . 2>/dev/null
    echo "wrote $out/gpu-check.json, $out/gpu-check.md in $((SECONDS - start)) s"
}

case "${1:-}" in
    build) shift; build "$@" ;;
    check) shift; check "$@" ;;
    pack) shift; pack "$@" ;;
    *) sed -n '2,38p' "$0"; exit 2 ;;
esac
