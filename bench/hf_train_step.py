#!/usr/bin/env python3
"""PyTorch reference for `cargo bench -p maskrate-training --bench train_step`: HuggingFace BertForMaskedLM
(the paper's model code), fp32 on CPU, same configs, micro-batches and threads, AdamW; tokens/s of
forward + backward + optimizer step, with the MLM head over all positions (HF's default) and only
at the 15% masked positions.

    pip install torch transformers && python3 bench/hf_train_step.py --threads 2
"""
import argparse
import resource
import time

import torch
from transformers import BertConfig, BertForMaskedLM

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=5)
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
SIZES = {"mini": (4, 256, 4, 1024, 32), "base": (12, 768, 12, 3072, 8)}
print("| model | micro-batch | head | tokens/s | peak RSS MB (process so far) |")
print("|---|---|---|---|---|")
for name, (layers, hidden, heads, inter, rows) in SIZES.items():
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=inter)
    model = BertForMaskedLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=1e-5)
    ids = torch.randint(1000, 30000, (rows, 128))
    mask = torch.rand(rows, 128) < 0.15
    labels = torch.where(mask, ids, torch.full_like(ids, -100))
    for head in ("all positions", "masked only"):
        times = []
        for step in range(args.steps + 1):
            t = time.perf_counter()
            if head == "all positions":
                loss = model(input_ids=ids, labels=labels).loss
            else:
                hidden_states = model.bert(input_ids=ids).last_hidden_state
                logits = model.cls(hidden_states[mask])
                loss = torch.nn.functional.cross_entropy(logits, ids[mask])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step > 0:
                times.append(time.perf_counter() - t)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"| {name} | {rows}x128 | {head} | {rows * 128 / (sum(times) / len(times)):.0f} | {rss:.0f} |")
