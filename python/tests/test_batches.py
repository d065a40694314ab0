"""Python batches are the trainer's batches, byte for byte (`trainer inspect-batch --json` is the
reference), for every option that changes a batch, and for one rank against two."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import maskrate

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "c4-sample"

CASES = [
    # (keywords, steps to compare)
    (dict(schedule="constant:0.15", total_steps=40, batch_size=16), [0, 7, 39]),
    (dict(schedule="linear:0.3:0.15", total_steps=40, batch_size=16, seed=3), [0, 20, 39]),
    (dict(schedule="cosine:0.4:0.1@0.5", total_steps=100, batch_size=8, seq_len=64), [1, 50, 99]),
    (dict(schedule="step:0.3:0.15:0.5", total_steps=10, batch_size=8, layout="pack"), [4, 5]),
    (dict(schedule="linear:0.3:0.15", total_steps=30, batch_size=8, whole_word=True), [2, 29]),
    (dict(schedule="exp:0.3:0.15", total_steps=30, batch_size=8, mask_exact=True), [0, 13]),
    (dict(total_steps=10, batch_size=8, seq_len=96, layout="pack-docs", mask_exact=True), [0, 9]),
    (
        dict(
            total_steps=5,
            batch_size=4,
            mask_token_fraction=0.5,
            random_token_fraction=0.3,
            min_doc_tokens=20,
            eval_sequences=10,
        ),
        [3],
    ),
]


def flags(kwargs: dict) -> list[str]:
    """The trainer's flags for MaskedBatches keywords (`total_steps` is `--steps`)."""
    out = []
    for key, value in kwargs.items():
        flag = "--steps" if key == "total_steps" else "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is not False:
            out += [flag, str(value)]
    return out


def trainer_batch(trainer: Path, shards: Path, kwargs: dict, step: int, rank=0, world=1) -> dict:
    cmd = [str(trainer), "inspect-batch", "--shards", str(shards), "--step", str(step), "--json"]
    cmd += flags(kwargs) + ["--rank", str(rank), "--world-size", str(world)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


@pytest.mark.parametrize("kwargs,steps", CASES)
def test_batches_equal_the_trainers(trainer_bin, sample_shards, kwargs, steps):
    batches = maskrate.MaskedBatches(sample_shards, **kwargs)
    for step in steps:
        ours = batches.batch(step)
        ref = trainer_batch(trainer_bin, sample_shards, kwargs, step)
        assert ref["step"] == step
        assert batches.rate(step) == ref["rate"]
        for name in ("input_ids", "attention_mask", "token_type_ids", "labels"):
            expected = np.array(ref[name], dtype=np.int64)
            assert ours[name].dtype == np.int64
            assert ours[name].shape == expected.shape == (kwargs["batch_size"], batches.seq_len)
            assert np.array_equal(ours[name], expected), (name, step)
        # Labels are -100 exactly where nothing is predicted: never at padding or at an unmasked
        # [CLS]/[SEP]; always (a real id) where the input reads [MASK]; and the predicted share
        # of the maskable tokens is the step's rate (5 binomial standard deviations).
        tok = maskrate.Shards(sample_shards).tokenizer
        ids, labels, attention = ours["input_ids"], ours["labels"], ours["attention_mask"]
        predicted = labels != -100
        assert predicted.any() and (labels[predicted] >= 0).all()
        assert not (predicted & (attention == 0)).any()
        assert predicted[ids == tok["mask_id"]].all()
        frame = np.isin(ids, [tok["cls_id"], tok["sep_id"], tok["pad_id"]]) & ~predicted
        maskable = int(((attention == 1) & ~frame).sum())
        p = batches.rate(step)
        share = predicted.sum() / maskable
        assert abs(share - p) <= 5 * (p * (1 - p) / maskable) ** 0.5 + 1 / maskable, (share, p)


@pytest.mark.parametrize("kwargs,steps", CASES[:3])
def test_two_ranks_are_the_halves_of_the_global_batch(trainer_bin, sample_shards, kwargs, steps):
    whole = maskrate.MaskedBatches(sample_shards, **kwargs)
    ranks = [maskrate.MaskedBatches(sample_shards, rank=r, world_size=2, **kwargs) for r in (0, 1)]
    for step in steps:
        global_batch = whole.batch(step)
        parts = [r.batch(step) for r in ranks]
        for name, array in global_batch.items():
            assert np.array_equal(np.concatenate([p[name] for p in parts]), array)
        ref = trainer_batch(trainer_bin, sample_shards, kwargs, step, rank=1, world=2)
        assert np.array_equal(parts[1]["input_ids"], np.array(ref["input_ids"]))
        assert np.array_equal(parts[1]["labels"], np.array(ref["labels"]))


def test_micro_batches_split_the_ranks_rows(sample_shards):
    mb = maskrate.MaskedBatches(sample_shards, total_steps=10, batch_size=16, world_size=2, rank=1)
    rows = mb.batch(4)
    parts = [mb.micro_batch(4, i, 4) for i in range(2)]
    assert np.array_equal(np.concatenate([p["input_ids"] for p in parts]), rows["input_ids"])
    with pytest.raises(ValueError, match="does not divide"):
        mb.micro_batch(4, 0, 3)


def test_keywords_default_to_the_trainers_defaults(trainer_bin, sample_shards):
    """With no keywords, the configuration is the one `trainer inspect-batch` builds from the
    trainer's default flags (its `--json` prints it)."""
    ours = maskrate.MaskedBatches(sample_shards).config
    cmd = [str(trainer_bin), "inspect-batch", "--shards", str(sample_shards), "--step", "0", "--json"]
    theirs = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["config"]
    assert ours == theirs


def test_a_batch_runs_while_another_python_thread_keeps_running(sample_shards):
    """While a thread is inside one `batch` call, this thread keeps running Python: the longest
    stretch in which it could not run is under half the call. With the GIL held through the call
    that stretch is the whole Rust part of it (broken on purpose once, `py.detach` removed: the
    stretch was 97% of the call); on a loaded machine the scheduler's pauses stay far shorter
    than the ~0.1 s call."""
    # 32768 x 512 tokens on one thread: a long call; only `labels` is written (128 MB).
    mb = maskrate.MaskedBatches(
        sample_shards, total_steps=10, batch_size=32768, seq_len=512, eval_sequences=0, threads=1
    )
    out = {"labels": np.empty((32768, 512), dtype=np.int64)}
    mb.batch(1, out=out)  # warm: thread pool and pages
    span: list[float] = []
    started = threading.Event()

    def build():
        started.set()
        span.append(time.perf_counter())
        mb.batch(0, out=out)
        span.append(time.perf_counter())

    # A short switch interval: once the call returns, the worker gets the GIL back within 1 ms.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        worker = threading.Thread(target=build)
        stamps = []
        worker.start()
        started.wait()
        while worker.is_alive():
            stamps.append(time.perf_counter())
        worker.join()
    finally:
        sys.setswitchinterval(interval)
    start, end = span
    inside = [start] + [s for s in stamps if start <= s <= end] + [end]
    longest_pause = max(b - a for a, b in zip(inside, inside[1:]))
    assert longest_pause < 0.5 * (end - start), (longest_pause, end - start)
