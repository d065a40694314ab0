#!/usr/bin/env bash
# Megatron-LM's tools/preprocess_data.py on the same corpus and worker count as
# `cargo bench -p preprocess --bench throughput`, for BENCHMARKS.md.
#
#   bench/megatron_preprocess.sh MEGATRON_CHECKOUT [CORPUS_DIR] [WORKERS]
#
# MEGATRON_CHECKOUT: a checkout of github.com/NVIDIA/Megatron-LM (measured at d98e8a64dd). Needs
# python3 with torch, numpy and transformers. Megatron wants Python 3.12 for `typing.override`
# only; on 3.11 a two-line shim supplies it. Its reader takes plain JSON lines, so the corpus is
# gunzipped first (not timed). Tokenizer: the bundled bert-base-uncased through its
# `HuggingFaceTokenizer` (the `BertWordPieceLowerCase` type downloads bert-large-uncased).
set -euo pipefail
megatron=$(cd "$1" && pwd)
corpus=${2:-../shared/data/wiki/en}
workers=${3:-2}
repo=$(cd "$(dirname "$0")/.." && pwd)
# The interpreter as resolved here: Megatron's .python-version would switch pyenv inside its tree.
python=${PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/sitecustomize.py" <<'PY'
import typing
if not hasattr(typing, "override"):
    typing.override = lambda f: f
PY
for f in "$corpus"/*.json.gz; do zcat "$f"; done > "$work/corpus.jsonl"
text_mb=$(python3 -c "import json,sys; print(sum(len(json.loads(l)['text'].encode()) for l in open(sys.argv[1]))/1e6)" "$work/corpus.jsonl")
start=$(date +%s.%N)
(cd "$megatron" && HF_HUB_OFFLINE=1 PYTHONPATH="$work" "$python" tools/preprocess_data.py \
    --input "$work/corpus.jsonl" --output-prefix "$work/out" \
    --tokenizer-type HuggingFaceTokenizer --tokenizer-model "$repo/data/tokenizer/bert-base-uncased" \
    --workers "$workers" --log-interval 100000) > "$work/log" 2>&1 || { cat "$work/log"; exit 1; }
end=$(date +%s.%N)
python3 -c "import sys; t=float(sys.argv[2])-float(sys.argv[1]); print(f'megatron preprocess_data.py, {sys.argv[4]} workers: {float(sys.argv[3])/t:.2f} MB/s of text ({t:.2f} s)')" "$start" "$end" "$text_mb" "$workers"
