#!/usr/bin/env bash
# Records a transformers training trajectory that tests/e2e.rs compares the trainer against:
# preprocess the bundled C4 sample, run the trainer and the `reference_dump` example with the same
# flags, train transformers' model (BertForMaskedLM, or ModernBertForMaskedLM for --arch
# modernbert) with torch's AdamW from maskrate's step-0 parameters on maskrate's batches
# (scripts/hf_equivalence.py steps), and write the fixture: flags, versions, losses, gradient
# norms, held-out loss.
#
#   scripts/record_trajectory.sh data/reference/transformers-modernbert-tiny-trajectory.json \
#       --arch modernbert --model tiny --hidden 32 --heads 2 --intermediate 48 --layers 4 \
#       --seq-len 160 --batch-size 16 --micro-batch 8 --dropout 0 --steps 50 --lr 2e-3 \
#       --eval-sequences 32 --eval-batch 16 --eval-every 50 --seed 7
#
# Needs torch, transformers and safetensors in `python3` (PYTHON overrides; the test venv,
# ~/.cache/maskrate/venv, has them).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$1"
shift
PYTHON="${PYTHON:-$HOME/.cache/maskrate/venv/bin/python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cargo build -q -p preprocess -p trainer --examples
target/debug/preprocess data/c4-sample --out "$WORK/S" --quiet
target/debug/trainer --shards "$WORK/S" "$@" --out "$WORK/R" --quiet >/dev/null
steps="$(grep -o -- '--steps [0-9]*' <<<"$*" | cut -d' ' -f2)"
target/debug/examples/reference_dump --shards "$WORK/S" "$@" --dump "$WORK/D" --dump-steps "$steps"
"$PYTHON" scripts/hf_equivalence.py steps --dump "$WORK/D" --run "$WORK/R" --json "$WORK/J.json"
"$PYTHON" - "$WORK/J.json" "$OUT" "$@" <<'PY'
import json, sys
import torch, transformers
j = json.load(open(sys.argv[1]))
flags = sys.argv[3:]
cmd = " ".join(flags)
arch = "ModernBertForMaskedLM" if "modernbert" in flags else "BertForMaskedLM"
fixture = {
    "about": f"transformers {arch} + torch AdamW trained from maskrate's step-0 parameters on maskrate's "
             "batches (scripts/hf_equivalence.py steps); tests/e2e.rs compares the trainer against it",
    "made_by": [f"scripts/record_trajectory.sh OUT {cmd}"],
    "trainer_flags": flags,
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    "transformers_loss": [s["loss"] for s in j["steps"]],
    "transformers_grad_norm": [s["grad_norm"] for s in j["steps"]],
    "transformers_eval_loss": j["result"]["hf_eval_loss"],
    "recorded_agreement": {k: j["result"][k] for k in ("max_rel_loss_diff", "max_rel_grad_norm_diff",
                                                       "max_rel_param_diff", "maskrate_eval_loss")},
}
json.dump(fixture, open(sys.argv[2], "w"), indent=1)
print(f"wrote {sys.argv[2]}: {len(fixture['transformers_loss'])} steps, "
      f"recorded agreement {fixture['recorded_agreement']}")
PY
