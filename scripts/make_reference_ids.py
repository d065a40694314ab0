#!/usr/bin/env python3
"""Writes the reference token ids that tests/ compare the preprocessor against.

The ids come from the HuggingFace `tokenizers` library (pip install tokenizers), an independent
implementation path from maskrate's Rust pipeline:

    python3 scripts/make_reference_ids.py \
        data/c4-sample/c4-train.00000-of-01024.json.gz \
        data/tokenizer/bert-base-uncased/tokenizer.json \
        data/reference/c4-sample-ids.jsonl.gz

Output: one JSON line per document with non-empty text, {"line": N, "ids": [...]}, in input order,
encoded with add_special_tokens=False (maskrate stores documents without [CLS]/[SEP]).
"""
import gzip
import json
import sys

import tokenizers


def main(corpus, tokenizer_json, out):
    tok = tokenizers.Tokenizer.from_file(tokenizer_json)
    opener = gzip.open if corpus.endswith(".gz") else open
    with opener(corpus, "rt", encoding="utf-8") as f, gzip.GzipFile(out, "wb", mtime=0) as g:
        for line_no, line in enumerate(f, start=1):
            text = json.loads(line)["text"]
            if not text.strip():
                continue
            ids = tok.encode(text, add_special_tokens=False).ids
            g.write((json.dumps({"line": line_no, "ids": ids}, separators=(",", ":")) + "\n").encode())
    print(f"wrote {out} with tokenizers {tokenizers.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:4])
