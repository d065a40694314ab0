#!/usr/bin/env python3
"""Writes data/arrow-sample/: the first 50 documents of the C4 sample saved by HuggingFace
`datasets` itself (`Dataset.save_to_disk`, in batches of 20 rows), i.e. the Arrow IPC stream files
(`data-*.arrow`) that `datasets` keeps in its cache and in saved datasets.

    pip install datasets && python3 scripts/make_arrow_sample.py
"""
import gzip
import json
import shutil

from datasets import Dataset

SRC = "data/c4-sample/c4-train.00000-of-01024.json.gz"
OUT = "data/arrow-sample"

rows = [json.loads(line) for line in gzip.open(SRC, "rt", encoding="utf-8")][:50]
ds = Dataset.from_dict({k: [r[k] for r in rows] for k in ("text", "url", "timestamp")})
shutil.rmtree(OUT, ignore_errors=True)
ds.save_to_disk(OUT, max_shard_size="40KB")
print(f"wrote {OUT}")
