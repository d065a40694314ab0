#!/usr/bin/env python3
"""Reads a maskrate shard directory with numpy alone, following Megatron-LM's published MMIDIDX
layout, and checks it against manifest.json: an independent reader for the format.

    pip install numpy && python3 scripts/check_shards_numpy.py shards/ [--decode N]
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np

DTYPES = {8: np.uint16, 4: np.int32}


def read_index(path):
    with open(path, "rb") as f:
        assert f.read(9) == b"MMIDIDX\x00\x00", f"{path}: bad magic"
        (version,) = struct.unpack("<Q", f.read(8))
        assert version == 1, f"{path}: version {version}"
        (code,) = struct.unpack("<B", f.read(1))
        (seqs,) = struct.unpack("<Q", f.read(8))
        (docs,) = struct.unpack("<Q", f.read(8))
        offset = f.tell()
    buf = np.memmap(path, mode="r", order="C")
    lengths = np.frombuffer(buf, dtype=np.int32, count=seqs, offset=offset)
    pointers = np.frombuffer(buf, dtype=np.int64, count=seqs, offset=offset + lengths.nbytes)
    doc_index = np.frombuffer(buf, dtype=np.int64, count=docs, offset=offset + lengths.nbytes + pointers.nbytes)
    return DTYPES[code], lengths, pointers, doc_index


def main(directory, decode=None):
    d = Path(directory)
    manifest = json.loads((d / "manifest.json").read_text())
    total_docs = total_tokens = 0
    first_doc = None
    for shard in manifest["shards"]:
        dtype, lengths, pointers, doc_index = read_index(d / f"{shard['name']}.idx")
        tokens = np.memmap(d / f"{shard['name']}.bin", dtype=dtype, mode="r")
        assert len(lengths) == shard["documents"], shard
        assert int(lengths.sum()) == shard["tokens"] == len(tokens), shard
        assert (doc_index == np.arange(len(lengths) + 1)).all()
        assert (pointers == np.concatenate([[0], np.cumsum(lengths[:-1])]) * np.dtype(dtype).itemsize).all()
        if first_doc is None and len(lengths):
            first_doc = tokens[: lengths[0]]
        total_docs += len(lengths)
        total_tokens += int(lengths.sum())
    assert total_docs == manifest["totals"]["documents"] and total_tokens == manifest["totals"]["tokens"]
    print(f"ok: {len(manifest['shards'])} shards, {total_docs} documents, {total_tokens} tokens")
    if decode is not None and first_doc is not None:
        print("first document ids:", first_doc[:decode].tolist())


if __name__ == "__main__":
    args = sys.argv[1:]
    n = int(args[args.index("--decode") + 1]) if "--decode" in args else None
    main(args[0], n)
