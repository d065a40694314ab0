#!/usr/bin/env python3
"""Writes data/parquet-sample/c4-sample-50.parquet: the first 50 documents of the C4 sample as a
snappy-compressed parquet file with C4's columns (text, url, timestamp) in row groups of 20.

    pip install pyarrow && python3 scripts/make_parquet_sample.py
"""
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq

SRC = "data/c4-sample/c4-train.00000-of-01024.json.gz"
OUT = "data/parquet-sample/c4-sample-50.parquet"

rows = [json.loads(line) for line in gzip.open(SRC, "rt", encoding="utf-8")][:50]
table = pa.table({k: [r[k] for r in rows] for k in ("text", "url", "timestamp")})
pq.write_table(table, OUT, compression="snappy", row_group_size=20)
print(f"wrote {OUT}")
