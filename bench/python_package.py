#!/usr/bin/env python3
"""Benchmarks of the Python package (BENCHMARKS.md, "Python package"). Needs the package and torch +
transformers installed (scripts/python-tests.sh makes such a venv: ~/.cache/maskrate/venv).

    python bench/python_package.py throughput [--shards DIR] [--threads 2]
    python bench/python_package.py memory --shards WIKI_SHARDS [--steps 30]
    python bench/python_package.py resume [--shards DIR]

throughput: masked 4096x128 batches per second from `MaskedBatches.batch` (as torch tensors)
  against HuggingFace's DataCollatorForLanguageModeling on the same documents in the same process:
  its tensor path (`torch_mask_tokens` on a ready tensor) and the Trainer's path (a list of token
  lists through the collator).
memory: peak PSS (proportional set size: shared pages divided among the processes mapping them)
  of a DataLoader over a MaskedDataset with 1 and with 8 workers, summed over all processes.
resume: time to the first batch after resuming at step 60,000 of a 70,000-step run:
  `MaskedDataset.set_step` against the HF Trainer's replay (`skip_first_batches` draws and drops
  every batch before the step), measured per batch and extrapolated.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

import maskrate
from maskrate.torch import MaskedDataset

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def sample_shards() -> str:
    out = Path(tempfile.gettempdir()) / "maskrate-bench-sample-shards"
    maskrate.preprocess(REPO / "data" / "c4-sample", out, progress=False)
    return str(out)


def timed(fn, n: int) -> float:
    """Median seconds per call over `n` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def throughput(args: argparse.Namespace) -> None:
    from transformers import BertTokenizerFast, DataCollatorForLanguageModeling

    torch.set_num_threads(args.threads)
    shards = maskrate.Shards(args.shards or sample_shards())
    mb = maskrate.MaskedBatches(
        shards, schedule="constant:0.3", total_steps=10_000, batch_size=4096, seq_len=128,
        eval_sequences=0, threads=args.threads,
    )
    step = iter(range(10_000))

    def ours():
        return {k: torch.from_numpy(v) for k, v in mb.batch(next(step)).items()}

    # Caller-owned arrays, wrapped as tensors once: each call refills them in place.
    rows = (4096, 128)
    out64 = {k: np.empty(rows, dtype=np.int64) for k in FIELDS}
    out32 = dict(out64, input_ids=np.empty(rows, dtype=np.int32))
    tensors64 = {k: torch.from_numpy(v) for k, v in out64.items()}
    tensors32 = {k: torch.from_numpy(v) for k, v in out32.items()}

    def ours_out():
        mb.batch(next(step), out=out64)
        return tensors64

    def ours_out32():
        mb.batch(next(step), out=out32)
        return tensors32

    tok = BertTokenizerFast(vocab_file=str(REPO / "data/tokenizer/bert-base-uncased/vocab.txt"))
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.3, return_tensors="pt")
    docs = [shards[i % len(shards)] for i in range(4096)]
    seqs = [[101] + d[:126].tolist() + [102] for d in docs]
    seqs = [s + [0] * (128 - len(s)) for s in seqs]
    examples = [{"input_ids": s} for s in seqs]
    ready = torch.tensor(seqs)
    special = torch.tensor(
        [tok.get_special_tokens_mask(s, already_has_special_tokens=True) for s in seqs],
        dtype=torch.bool,
    )
    # Interleaved blocks of calls (the slow list path one call every 5th round): a load that
    # drifts during the run (a shared VM) weighs on every path alike, so the ratios hold.
    paths = {
        "ours": ours,
        "out": ours_out,
        "out32": ours_out32,
        "tensor": lambda: collator.torch_mask_tokens(ready.clone(), special_tokens_mask=special),
        "lists": lambda: collator(examples),
    }
    times = interleaved(paths, args.n, every={"lists": 5})
    t_ours, t_out, t_out32, t_tensor, t_lists = (times[k] for k in paths)
    print(
        f"threads {args.threads}; 4096x128 at rate 0.3; medians of {args.n} calls in interleaved "
        f"blocks of 5 (one call per block, at least 3, for the list path)"
    )
    print(f"| path | ms per batch | batches/s | HF tensor path ÷ this | HF list path ÷ this |")
    print(f"|---|---|---|---|---|")
    rows_out = [
        ("maskrate `batch(step)` (fresh int64 arrays) + `torch.from_numpy`", t_ours),
        ("maskrate `batch(step, out=...)` (int64 arrays reused)", t_out),
        ("maskrate `batch(step, out=...)`, int32 `input_ids`", t_out32),
        ("HF collator, ready tensor (`torch_mask_tokens`)", t_tensor),
        ("HF collator, token lists (the Trainer's path)", t_lists),
    ]
    for name, t in rows_out:
        print(f"| {name} | {t*1e3:.2f} | {1/t:.1f} | {t_tensor/t:.1f}x | {t_lists/t:.0f}x |")


def interleaved(paths: dict, n: int, every: dict[str, int], block: int = 5) -> dict[str, float]:
    """Median seconds per call of each path over `n` calls, taken in blocks of `block` calls per
    path in turn (a path in `every` only each `every[path]`-th round, at least 3 calls); the first
    call of each block is a warm-up (another path's threads and cache contents are still around),
    not timed."""
    samples: dict[str, list[float]] = {k: [] for k in paths}
    rounds = max(1, n // block)
    for r in range(rounds):
        for name, fn in paths.items():
            k = every.get(name, 1)
            if r % k and len(samples[name]) >= 3:
                continue
            fn()
            for _ in range(block if k == 1 else 1):
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in samples.items()}


def pss_kb(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:  # the process has just exited
        return 0
    return 0


def children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            out += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
        except OSError:
            pass
    return out


def memory(args: argparse.Namespace) -> None:
    print("| workers | micro-batches | seconds | peak PSS MB (all processes) |")
    print("|---|---|---|---|")
    for workers in (1, 8):
        ds = MaskedDataset(
            args.shards, schedule="linear:0.3:0.15", total_steps=args.steps, batch_size=4096,
            micro_batch=256, eval_sequences=0,
        )
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=2)
        peak, stop = [0], threading.Event()

        def sample():
            me = os.getpid()
            while not stop.is_set():
                total = pss_kb(me) + sum(pss_kb(c) for c in children(me))
                peak[0] = max(peak[0], total)
                time.sleep(0.02)

        t = threading.Thread(target=sample)
        t.start()
        start = time.perf_counter()
        n = sum(1 for _ in loader)
        elapsed = time.perf_counter() - start
        stop.set()
        t.join()
        print(f"| {workers} | {n} | {elapsed:.1f} | {peak[0] / 1024:.0f} |")


def resume(args: argparse.Namespace) -> None:
    from transformers import BertTokenizerFast, DataCollatorForLanguageModeling

    shards_dir = args.shards or sample_shards()
    total, at = 70_000, 60_000
    ds = MaskedDataset(shards_dir, schedule="linear:0.3:0.15", total_steps=total, batch_size=4096,
                       micro_batch=4096, eval_sequences=0)
    t = time.perf_counter()
    ds.set_step(at)
    first = next(iter(torch.utils.data.DataLoader(ds, batch_size=None)))
    ours = time.perf_counter() - t
    assert first["input_ids"].shape == (4096, 128)
    # The HF Trainer's resume of an iterable dataset: every batch before the step is drawn
    # (tokens collated and masked) and dropped. Per-batch cost of the same 4096x128 batches:
    shards = maskrate.Shards(shards_dir)
    tok = BertTokenizerFast(vocab_file=str(REPO / "data/tokenizer/bert-base-uncased/vocab.txt"))
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.3, return_tensors="pt")
    examples = [{"input_ids": [101] + shards[i % len(shards)][:126].tolist() + [102]} for i in range(4096)]
    per_batch = timed(lambda: collator(examples), 3)
    print(f"| maskrate `set_step({at})` + first batch | {ours:.3f} s |")
    print(f"| HF Trainer replay: {at:,} batches x {per_batch*1e3:.0f} ms (measured per batch) | "
          f"{at * per_batch / 3600:.1f} h (extrapolated) |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["throughput", "memory", "resume"])
    p.add_argument("--shards", help="shard directory (default: the bundled sample, preprocessed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=20, help="timed calls")
    p.add_argument("--steps", type=int, default=30, help="memory: steps of 4096 sequences")
    args = p.parse_args()
    {"throughput": throughput, "memory": memory, "resume": resume}[args.what](args)


if __name__ == "__main__":
    main()
