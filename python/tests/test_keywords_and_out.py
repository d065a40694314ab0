"""`MaskedBatches` keywords are the data config's keys (merged by its own deserializer), pickling
carries every one of them, and `batch(out=...)` / `ids_dtype="int32"` give the same values as a
fresh batch."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import maskrate
from maskrate._maskrate import DATA_CONFIG_KEYS
from maskrate.torch import MaskedDataset

# A value other than the default for every data-config key (and the builder's own keywords).
# `shards` is the first argument and `steps` is `total_steps`. A key added to the config and not
# to this table fails test_the_table_covers_every_config_key.
NON_DEFAULT = dict(
    mix="a=0.7,b=linear:0.3:0.5",
    schedule="linear:0.3:0.15",
    total_steps=50,
    batch_size=8,
    seq_len=32,
    min_doc_tokens=2,
    seed=7,
    mask_token_fraction=0.7,
    random_token_fraction=0.2,
    mask_exact=True,
    whole_word=True,
    eval_sequences=3,
    order="shard-blocks:1",
    cache_bytes="1MiB",
    rate_dist="uniform:0.1:[linear:0.2:0.9]",
    loss_weight="inverse-rate:0.01",
)
BUILDER = dict(eval_batch=2, rank=1, world_size=2, threads=1)
# `min_doc_tokens` applies to the truncate layout only: the pack layout is the second case.
# `mix_by_size`/`join` replace `mix` there too.
PACK = {k: v for k, v in NON_DEFAULT.items() if k not in ("min_doc_tokens", "mix")}
CASES = [
    NON_DEFAULT,
    {
        **PACK,
        "layout": "pack",
        "mix_by_size": "stairs:0.7:0.3@0.5",
        "join": ["b@0.2"],
        "phases": [{"steps": 20}, {"seq_len": 48}],
    },
    # One rate per packed document: pack-docs only.
    {**PACK, "mix": "a=1,b=1", "layout": "pack-docs", "rate_dist": "stratified:0.001:1",
     "rate_per_document": True},
]


def test_the_table_covers_every_config_key():
    keys = set(DATA_CONFIG_KEYS) - {"shards", "steps"} | {"total_steps"}
    assert set().union(*CASES) | {"cache_dir"} == keys


def named(sample_shards: Path) -> dict[str, list[str]]:
    return {"a": [str(sample_shards)], "b": [str(sample_shards)]}


def assert_same_batches(x: maskrate.MaskedBatches, y: maskrate.MaskedBatches) -> None:
    assert x.config == y.config
    assert (x.rank, x.rows) == (y.rank, y.rows)
    for step in (0, 49):
        a, b = x.batch(step), y.batch(step)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    a, b = x.held_out_batch(0), y.held_out_batch(0)
    assert a["input_ids"].shape == (2, 32)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"held-out {k}")


@pytest.mark.parametrize("case", CASES, ids=["truncate", "pack", "pack-docs"])
def test_pickle_round_trips_every_keyword(sample_shards, tmp_path, case):
    kwargs = dict(case, **BUILDER, cache_dir=tmp_path / "cache")
    mb = maskrate.MaskedBatches(named(sample_shards), **kwargs)
    config = mb.config
    # Every keyword reached the config (none silently dropped on the way in).
    for key, value in case.items():
        key = "steps" if key == "total_steps" else key
        expected = 1 << 20 if key == "cache_bytes" else value
        assert config[key] == expected, key
    assert config["cache_dir"] == str(tmp_path / "cache")
    again = pickle.loads(pickle.dumps(mb))
    assert_same_batches(mb, again)
    assert again.rank == (1, 2)
    assert repr(again) == repr(mb)

    ds = MaskedDataset(named(sample_shards), micro_batch=2, **kwargs)
    ds_again = pickle.loads(pickle.dumps(ds))
    assert ds_again.batches().config == ds.batches().config == config


def test_one_unnamed_source_pickles_with_its_shards(sample_shards):
    mb = maskrate.MaskedBatches(maskrate.Shards(sample_shards), total_steps=50, batch_size=8, seq_len=32)
    again = pickle.loads(pickle.dumps(mb))
    assert again.config == mb.config
    np.testing.assert_array_equal(again.batch(3)["labels"], mb.batch(3)["labels"])


def test_bad_keywords_name_themselves(sample_shards):
    with pytest.raises(TypeError, match="'seqlen'.*seq_len"):
        maskrate.MaskedBatches(sample_shards, seqlen=64)
    with pytest.raises(TypeError, match="total_steps"):
        maskrate.MaskedBatches(sample_shards, steps=10)
    with pytest.raises(ValueError, match="cache_bytes.*4 parsecs"):
        maskrate.MaskedBatches(sample_shards, cache_bytes="4 parsecs")
    with pytest.raises(ValueError, match="batch_size"):
        maskrate.MaskedBatches(sample_shards, batch_size=-3)
    with pytest.raises(ValueError, match="layout"):
        maskrate.MaskedBatches(sample_shards, layout="diagonal")
    with pytest.raises(ValueError, match="source name"):
        maskrate.MaskedBatches({"c 4": str(sample_shards)})


def test_the_stub_lists_every_keyword():
    """The type stub is written by hand: it must name exactly the keywords the binding takes."""
    stub = Path(maskrate.__file__).with_name("_maskrate.pyi")
    tree = ast.parse(stub.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MaskedBatches")
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    stub_keys = {a.arg for a in init.args.kwonlyargs}
    keys = set(DATA_CONFIG_KEYS) - {"shards", "steps"} | {"total_steps"} | set(BUILDER)
    assert stub_keys == keys


@pytest.fixture()
def mb(sample_shards):
    return maskrate.MaskedBatches(
        sample_shards, schedule="linear:0.3:0.15", total_steps=20, batch_size=40, seq_len=64,
        eval_sequences=0,
    )


def test_out_arrays_are_filled_in_place_with_the_fresh_batch(mb):
    fresh = mb.batch(5)
    assert {k: a.dtype for k, a in fresh.items()} == {k: np.dtype(np.int64) for k in fresh}
    # Dirty buffers, reused for two steps: every value is written each time.
    out = {k: np.full((40, 64), 7, dtype=np.int64) for k in fresh}
    out["input_ids"] = np.full((40, 64), 7, dtype=np.int32)
    tensors = {k: torch.from_numpy(a) for k, a in out.items()}
    for step in (5, 6):
        fresh = mb.batch(step)
        got = mb.batch(step, out=out)
        assert got is out
        for k in fresh:
            np.testing.assert_array_equal(out[k], fresh[k], err_msg=k)
            # The tensors made once share the arrays' memory.
            np.testing.assert_array_equal(tensors[k].numpy(), fresh[k], err_msg=k)
    only = {"labels": np.empty((40, 64), dtype=np.int64)}
    assert set(mb.batch(5, out=only)) == {"labels"}
    np.testing.assert_array_equal(only["labels"], mb.batch(5)["labels"])
    micro = mb.micro_batch(5, 1, 20, out={"input_ids": np.empty((20, 64), dtype=np.int64)})
    np.testing.assert_array_equal(micro["input_ids"], mb.batch(5)["input_ids"][20:40])


def test_int32_ids_equal_the_int64_ones(mb):
    wide, narrow = mb.batch(3), mb.batch(3, ids_dtype="int32")
    assert narrow["input_ids"].dtype == np.int32 and narrow["labels"].dtype == np.int64
    for k in wide:
        np.testing.assert_array_equal(wide[k], narrow[k], err_msg=k)
    with pytest.raises(ValueError, match="ids_dtype"):
        mb.batch(3, ids_dtype="int16")


def test_bad_out_arrays_are_refused_naming_the_field(mb):
    with pytest.raises(ValueError, match="labels.*shape"):
        mb.batch(0, out={"labels": np.empty((40, 63), dtype=np.int64)})
    with pytest.raises(TypeError, match="labels.*float64"):
        mb.batch(0, out={"labels": np.empty((40, 64))})
    with pytest.raises(ValueError, match="C-contiguous"):
        mb.batch(0, out={"labels": np.empty((64, 40), dtype=np.int64).T})
    with pytest.raises(ValueError, match="'logits'.*not a batch field"):
        mb.batch(0, out={"logits": np.empty((40, 64), dtype=np.int64)})
    frozen = np.empty((40, 64), dtype=np.int64)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        mb.batch(0, out={"labels": frozen})
