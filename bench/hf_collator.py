#!/usr/bin/env python3
"""Reference timing for the masking benchmark: HuggingFace's DataCollatorForLanguageModeling on a
4096x128 and a 256x128 batch at rate 0.3, given as token lists (the Trainer's path) and as a ready
tensor. Optional: needs `pip install torch transformers tokenizers`. Compare with
`cargo bench -p maskrate-shared --bench sampler` (see BENCHMARKS.md).

    python3 bench/hf_collator.py [--threads 2]
"""
import argparse
import gzip
import json
import time

import torch
from transformers import BertTokenizerFast, DataCollatorForLanguageModeling

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
args = p.parse_args()
torch.set_num_threads(args.threads)
tok = BertTokenizerFast(vocab_file="data/tokenizer/bert-base-uncased/vocab.txt")
docs = [json.loads(l)["ids"] for l in gzip.open("data/reference/c4-sample-ids.jsonl.gz", "rt")]
collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.3, return_tensors="pt")
for rows in (4096, 256):
    seqs = [[101] + docs[i % len(docs)][:126] + [102] for i in range(rows)]
    seqs = [s + [0] * (128 - len(s)) for s in seqs]
    examples = [{"input_ids": s} for s in seqs]
    ready = torch.tensor(seqs)
    special = torch.tensor([tok.get_special_tokens_mask(s, already_has_special_tokens=True) for s in seqs], dtype=torch.bool)
    for name, run in (
        ("token lists (the Trainer's path)", lambda: collator(examples)),
        ("ready tensor (torch_mask_tokens)", lambda: collator.torch_mask_tokens(ready.clone(), special_tokens_mask=special)),
    ):
        run()  # warm-up
        n = 10
        t = time.perf_counter()
        for _ in range(n):
            run()
        print(f"{rows}x128 {name}: {(time.perf_counter() - t) / n * 1000:.1f} ms")
