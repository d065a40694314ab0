"""Phases from Python: `phases=` gives the trainer's batches (`inspect-batch --json` with the same
`--phases`) at every phase, with each phase's shape and rate; MaskedDataset follows the shapes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import maskrate
from maskrate.torch import MaskedDataset

PHASES = [
    {"steps": 10, "batch_size": 4},
    {"steps": 10, "seq_len": 64, "schedule": "linear:0.3:0.05"},
    {"batch_size": 16},
]
KWARGS = dict(schedule="constant:0.2", total_steps=30, batch_size=8, seq_len=32, eval_sequences=8)


def trainer_batch(trainer: Path, shards: Path, step: int) -> dict:
    cmd = [str(trainer), "inspect-batch", "--shards", str(shards), "--step", str(step), "--json"]
    cmd += ["--schedule", "constant:0.2", "--steps", "30", "--batch-size", "8", "--seq-len", "32"]
    cmd += ["--eval-sequences", "8"]
    for phase in PHASES:
        cmd += ["--phases", json.dumps(phase)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def test_phases_give_the_trainers_batches_at_every_phase(trainer_bin, sample_shards):
    mb = maskrate.MaskedBatches(sample_shards, phases=PHASES, **KWARGS)
    assert mb.phase_shapes == [(0, 10, 4, 32), (10, 20, 8, 64), (20, 30, 16, 32)]
    for step, shape in [(9, (4, 32)), (10, (8, 64)), (19, (8, 64)), (20, (16, 32))]:
        ours = mb.batch(step)
        assert (mb.rows_at(step), mb.seq_len_at(step)) == shape
        ref = trainer_batch(trainer_bin, sample_shards, step)
        assert mb.rate(step) == ref["rate"]
        for name in ("input_ids", "attention_mask", "labels"):
            assert ours[name].shape == shape, (name, step)
            np.testing.assert_array_equal(ours[name], np.array(ref[name]), err_msg=f"{name} {step}")
    # The run's schedule in phases 1 and 3; phase 2's own runs over its ten steps.
    assert mb.rate(0) == mb.rate(25) == 0.2
    assert mb.rate(10) == pytest.approx(0.3) and mb.rate(19) == pytest.approx(0.05)


def test_a_dataset_of_whole_steps_follows_the_phases(sample_shards):
    ds = MaskedDataset(sample_shards, phases=PHASES, **KWARGS)
    items = list(ds)
    shapes = [tuple(item["input_ids"].shape) for item in items]
    assert shapes == [(4, 32)] * 10 + [(8, 64)] * 10 + [(16, 32)] * 10
    assert all(isinstance(t, torch.Tensor) for item in items for t in item.values())
    # Micro-batches need one count per step: a phase that changes the batch size is refused.
    with pytest.raises(ValueError, match="phases change the batch size"):
        list(MaskedDataset(sample_shards, phases=PHASES, micro_batch=4, **KWARGS))


def test_bad_phases_name_the_phase(sample_shards):
    with pytest.raises(ValueError, match="phase 2.*seed"):
        maskrate.MaskedBatches(sample_shards, phases=[{"steps": 10}, {"seed": 3}], **KWARGS)
    with pytest.raises(ValueError, match="10 \\+ 5"):
        maskrate.MaskedBatches(sample_shards, phases=[{"steps": 10}, {"steps": 5}], **KWARGS)
