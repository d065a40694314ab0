#!/usr/bin/env python3
"""PyTorch reference for `cargo bench -p maskrate-training --bench train_step`: HuggingFace BertForMaskedLM
(the paper's model code), or ModernBertForMaskedLM with `--arch modernbert` (SDPA attention, its
presets as maskrate's), fp32 on CPU, same configs, micro-batches and threads, AdamW; tokens/s of
forward + backward + optimizer step, with the MLM head over all positions (HF's default) and only
at the 15% masked positions (ModernBERT: its own `sparse_prediction`). On a GPU (`--device cuda --bf16`, as scripts/gpu-check.sh runs it):
bf16 autocast with transformers' default SDPA attention.

    pip install torch transformers maskrate-*.whl && python3 bench/hf_train_step.py --threads 2
    python3 bench/hf_train_step.py --threads 2 --arch modernbert
    python3 bench/hf_train_step.py --device cuda --bf16 --models base --rows 64 --json hf.json
"""
import argparse
import resource
import time

import maskrate
import torch
from transformers import BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--device", default="cpu")
p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
p.add_argument("--models", default="mini,base")
p.add_argument("--rows", type=int, help="micro-batch rows (default: 32 for mini, 8 for base)")
p.add_argument("--arch", default="bert", choices=["bert", "modernbert"])
p.add_argument("--seq-len", type=int, default=128)
p.add_argument("--json", help="also write the results to this file")
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
dev = torch.device(args.device)
# maskrate's presets (the trainer's one table), micro-batch rows as the Rust bench's defaults.
PRESETS = maskrate.model_presets()[args.arch]["presets"]
DEFAULT_ROWS = {"mini": 32, "base": 8}
SIZES = {
    k: (s["num_hidden_layers"], s["hidden_size"], s["num_attention_heads"], s["intermediate_size"],
        args.rows or DEFAULT_ROWS.get(k, 8))
    for k, s in PRESETS.items() if k in args.models.split(",")
}
results = []
print("| model | micro-batch | head | tokens/s | peak RSS MB (process so far) |")
print("|---|---|---|---|---|")
for name, (layers, hidden, heads, inter, rows) in SIZES.items():
    if args.arch == "modernbert":
        cfg = ModernBertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                               intermediate_size=inter, pad_token_id=0, cls_token_id=101, sep_token_id=102, bos_token_id=101, eos_token_id=102,
                               attn_implementation="sdpa")
    else:
        cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=inter)
    L = args.seq_len
    heads_out = ("all positions", "masked only")
    ids = torch.randint(1000, 30000, (rows, L), device=dev)
    mask = torch.rand(rows, L, device=dev) < 0.15
    labels = torch.where(mask, ids, torch.full_like(ids, -100))
    for head in heads_out:
        if args.arch == "modernbert":
            cfg.sparse_prediction = head == "masked only"
        torch.manual_seed(0)
        model = (ModernBertForMaskedLM(cfg) if args.arch == "modernbert" else BertForMaskedLM(cfg)).to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=1e-5)
        times = []
        for step in range(args.steps + 1):
            t = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
                if head == "all positions" or args.arch == "modernbert":
                    loss = model(input_ids=ids, labels=labels).loss
                else:
                    hidden_states = model.bert(input_ids=ids).last_hidden_state
                    logits = model.cls(hidden_states[mask])
                    loss = torch.nn.functional.cross_entropy(logits.float(), ids[mask])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if step > 0:
                times.append(time.perf_counter() - t)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        tps = rows * L / (sum(times) / len(times))
        results.append({"model": name, "rows": rows, "head": head, "arch": args.arch, "seq_len": L, "tokens_per_sec": tps, "device": args.device, "bf16": args.bf16})
        print(f"| {args.arch} {name} | {rows}x{L} | {head} | {tps:.0f} | {rss:.0f} |")
if args.json:
    import json
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
