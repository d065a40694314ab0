"""`maskrate.torch.MaskedDataset`: the same items for any number of DataLoader workers, and a
`state_dict` that resumes exactly, also at another world size."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torchdata.stateful_dataloader as sdl
from torch.utils.data import DataLoader

import maskrate
from maskrate.torch import MaskedDataset

KW = dict(schedule="linear:0.3:0.15", total_steps=12, batch_size=16, seq_len=64, seed=5)


def items(loader_or_iter, n=None):
    """The next `n` items (all when None), without drawing one more."""
    return [
        {k: v.clone() for k, v in item.items()} for item in itertools.islice(loader_or_iter, n)
    ]


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_items_are_the_steps_micro_batches(sample_shards):
    ds = MaskedDataset(sample_shards, micro_batch=4, **KW)
    got = items(ds)
    assert len(got) == 12 * 4
    mb = maskrate.MaskedBatches(sample_shards, **KW)
    for step in (0, 5, 11):
        rows = torch.cat([got[step * 4 + m]["input_ids"] for m in range(4)])
        assert torch.equal(rows, torch.from_numpy(mb.batch(step)["input_ids"]))
    assert got[0]["labels"].dtype == torch.int64 and got[0]["input_ids"].shape == (4, 64)


@pytest.mark.parametrize("workers", [2, 4])
def test_any_number_of_workers_gives_the_same_items(sample_shards, workers):
    # Iterating advances a dataset (it is a resumable stream): each loader gets a fresh one.
    fresh = lambda: MaskedDataset(sample_shards, micro_batch=8, **KW)  # noqa: E731
    reference = items(DataLoader(fresh(), batch_size=None, num_workers=0))
    loader = DataLoader(fresh(), batch_size=None, num_workers=workers, prefetch_factor=3)
    same(items(loader), reference)


def test_state_dict_mid_run_continues_identically(sample_shards):
    ds = MaskedDataset(sample_shards, micro_batch=4, **KW)
    it = iter(ds)
    head = items(it, 13)  # stops inside step 3
    state = ds.state_dict()
    assert (state["next_step"], state["next_micro"]) == (3, 1)
    rest = items(it)
    fresh = MaskedDataset(sample_shards, micro_batch=4, **KW)
    fresh.load_state_dict(state)
    same(items(fresh), rest)
    assert len(head) + len(rest) == 48


def test_resuming_at_another_world_size_continues_the_global_batches(sample_shards):
    one = MaskedDataset(sample_shards, **KW)  # one item per step: the whole global batch
    it = iter(one)
    items(it, 5)
    state = one.state_dict()
    expected = items(it)
    halves = []
    for rank in (0, 1):
        ds = MaskedDataset(sample_shards, rank=rank, world_size=2, micro_batch=4, **KW)
        ds.load_state_dict(state)
        halves.append(items(ds))
    for step, whole in enumerate(expected):
        rows = torch.cat(
            [halves[r][step * 2 + m]["input_ids"] for r in (0, 1) for m in (0, 1)]
        )
        assert torch.equal(rows, whole["input_ids"])


def test_a_state_from_another_run_is_refused(sample_shards):
    ds = MaskedDataset(sample_shards, **KW)
    other = MaskedDataset(sample_shards, **{**KW, "seed": 6})
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(ds.state_dict())
    it = iter(MaskedDataset(sample_shards, micro_batch=4, **KW))
    mid = MaskedDataset(sample_shards, micro_batch=4, **KW)
    items(mid, 1)
    with pytest.raises(ValueError, match="inside step"):
        MaskedDataset(sample_shards, micro_batch=8, **KW).load_state_dict(mid.state_dict())
    del it


def test_stateful_dataloader_resumes_with_workers(sample_shards):
    ds = MaskedDataset(sample_shards, micro_batch=4, **KW)
    loader = sdl.StatefulDataLoader(ds, batch_size=None, num_workers=2)
    it = iter(loader)
    items(it, 9)
    state = loader.state_dict()
    rest = items(it)
    again = sdl.StatefulDataLoader(MaskedDataset(sample_shards, micro_batch=4, **KW), batch_size=None, num_workers=2)
    again.load_state_dict(state)
    same(items(again), rest)


def test_rank_comes_from_torch_distributed(sample_shards, monkeypatch):
    # torch.distributed reports rank 1 of 2 (as on the second process of a 2-process job): the
    # dataset must take that rank, not the uninitialised default (0, 1).
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    ds = MaskedDataset(sample_shards, **KW)
    assert ds.rank_and_world_size() == (1, 2)
    from_dist = next(iter(ds))
    monkeypatch.undo()
    explicit = MaskedDataset(sample_shards, rank=1, world_size=2, **KW)
    first = next(iter(explicit))
    assert first["input_ids"].shape == (8, 64)
    mb = maskrate.MaskedBatches(sample_shards, rank=1, world_size=2, **KW)
    reference = mb.batch(0)
    assert set(from_dist) == set(reference)
    for name, array in reference.items():
        assert np.array_equal(from_dist[name].numpy(), array), name
        assert np.array_equal(first[name].numpy(), array), name
    # and rank 1's rows differ from rank 0's (so the comparison above can tell the ranks apart)
    assert not np.array_equal(reference["input_ids"], maskrate.MaskedBatches(sample_shards, rank=0, world_size=2, **KW).batch(0)["input_ids"])
