#!/usr/bin/env python3
"""Loads a `trainer export` directory with HuggingFace transformers (the class its config.json
names: BertForMaskedLM or ModernBertForMaskedLM), strictly (no missing, unexpected or mismatched
keys), and compares its logits with maskrate's on the fixed check input stored by the export
(relative tolerance 1e-4 of the largest logit, fp32).

    pip install torch transformers safetensors && python3 scripts/compare_hf.py EXPORT_DIR
"""
import sys

import torch
import transformers
from safetensors.torch import load_file


def compare(d):
    """(max |logit difference| / max |logit|, loading info) of export directory `d`."""
    config = transformers.AutoConfig.from_pretrained(d)
    cls = getattr(transformers, config.architectures[0])
    model, info = cls.from_pretrained(d, output_loading_info=True, attn_implementation="sdpa")
    model.eval()
    check = load_file(f"{d}/maskrate_check.safetensors")
    with torch.no_grad():
        logits = model(input_ids=check["input_ids"]).logits[0]
    diff = (logits - check["logits"]).abs().max().item()
    return diff / check["logits"].abs().max().item(), info


if __name__ == "__main__":
    rel, info = compare(sys.argv[1])
    problems = {k: v for k, v in info.items() if v}
    print(f"max |logit difference| / max |logit| = {rel:.3e}; loading problems: {problems or 'none'}")
    sys.exit(0 if rel < 1e-4 and not problems else 1)
