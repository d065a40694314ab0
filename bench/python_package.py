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

import torch

import maskrate
from maskrate.torch import MaskedDataset

REPO = Path(__file__).resolve().parents[1]


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
    t_ours = timed(ours, args.n)
    t_tensor = timed(lambda: collator.torch_mask_tokens(ready.clone(), special_tokens_mask=special), args.n)
    t_lists = timed(lambda: collator(examples), max(3, args.n // 5))
    print(f"threads {args.threads}; 4096x128 at rate 0.3; median of {args.n} calls")
    print(f"| path | ms per batch | batches/s | maskrate speed-up |")
    print(f"|---|---|---|---|")
    print(f"| maskrate MaskedBatches.batch (+ torch.from_numpy) | {t_ours*1e3:.2f} | {1/t_ours:.1f} | 1x |")
    print(f"| HF collator, ready tensor (torch_mask_tokens) | {t_tensor*1e3:.2f} | {1/t_tensor:.1f} | {t_tensor/t_ours:.1f}x |")
    print(f"| HF collator, token lists (the Trainer's path) | {t_lists*1e3:.1f} | {1/t_lists:.2f} | {t_lists/t_ours:.0f}x |")


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
