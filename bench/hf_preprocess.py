#!/usr/bin/env python3
"""Python baselines for `cargo bench -p preprocess --bench throughput` (see BENCHMARKS.md), on the
same corpus and thread count:

  1. `tokenizers` `encode_batch` on the texts held in memory (no I/O, no JSON), no special tokens;
  2. the `datasets` path of transformers' examples/pytorch/language-modeling/run_mlm.py:
     `load_dataset("json", data_files=...)` then `.map(tokenize, batched=True, num_proc=THREADS,
     remove_columns=...)` with `return_special_tokens_mask=True`, as run_mlm.py does, into a fresh
     cache directory (read, parse, tokenize, write Arrow: what `preprocess` does).

Needs `pip install tokenizers datasets transformers`; runs offline on local files.

    python3 bench/hf_preprocess.py [CORPUS_DIR] [--threads 2]
"""
import argparse
import glob
import gzip
import json
import os
import sys
import tempfile
import time

p = argparse.ArgumentParser()
p.add_argument("corpus", nargs="?", default="../shared/data/wiki/en")
p.add_argument("--threads", type=int, default=2)
args = p.parse_args()
os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before tokenizers starts its pool
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import datasets  # noqa: E402
import tokenizers  # noqa: E402
from transformers import BertTokenizerFast  # noqa: E402

TOKENIZER = "data/tokenizer/bert-base-uncased/tokenizer.json"
files = sorted(glob.glob(os.path.join(args.corpus, "*.json.gz")) + glob.glob(os.path.join(args.corpus, "*.jsonl")))
if not files:
    sys.exit(f"no .json.gz or .jsonl files in {args.corpus}")
texts = []
for f in files:
    opener = gzip.open if f.endswith(".gz") else open
    with opener(f, "rt", encoding="utf-8") as fh:
        texts.extend(json.loads(line)["text"] for line in fh if line.strip())
text_mb = sum(len(t.encode()) for t in texts) / 1e6
print(f"corpus {args.corpus}: {len(files)} files, {len(texts)} documents, {text_mb:.1f} MB of text; "
      f"threads {args.threads}; tokenizers {tokenizers.__version__}, datasets {datasets.__version__}")

tok = tokenizers.Tokenizer.from_file(TOKENIZER)
t = time.perf_counter()
encodings = tok.encode_batch(texts, add_special_tokens=False)
bare = time.perf_counter() - t
tokens = sum(len(e.ids) for e in encodings)
del encodings
print(f"tokenizers encode_batch: {text_mb / bare:.2f} MB/s, {tokens / bare:,.0f} tokens/s ({bare:.2f} s)")

hf_tok = BertTokenizerFast(tokenizer_file=TOKENIZER)
with tempfile.TemporaryDirectory() as cache:
    t = time.perf_counter()
    raw = datasets.load_dataset("json", data_files=files, split="train", cache_dir=cache)
    columns = raw.column_names
    tokenized = raw.map(
        lambda ex: hf_tok(ex["text"], return_special_tokens_mask=True),
        batched=True,
        num_proc=args.threads,
        remove_columns=columns,
        load_from_cache_file=False,
    )
    wall = time.perf_counter() - t
    assert len(tokenized) == len(texts)
print(f"datasets load_dataset + map (run_mlm.py path): {text_mb / wall:.2f} MB/s, {tokens / wall:,.0f} tokens/s ({wall:.2f} s)")
