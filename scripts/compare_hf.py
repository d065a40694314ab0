#!/usr/bin/env python3
"""Loads a `trainer export` directory with HuggingFace transformers and compares its logits with
maskrate's on the fixed check input stored by the export (tolerance 1e-4).

    pip install torch transformers safetensors && python3 scripts/compare_hf.py EXPORT_DIR
"""
import sys

import torch
from safetensors.torch import load_file
from transformers import BertForMaskedLM

d = sys.argv[1]
model = BertForMaskedLM.from_pretrained(d).eval()
check = load_file(f"{d}/maskrate_check.safetensors")
with torch.no_grad():
    logits = model(input_ids=check["input_ids"]).logits[0]
diff = (logits - check["logits"]).abs().max().item()
print(f"max |logit difference| = {diff:.3e}")
sys.exit(0 if diff < 1e-4 else 1)
