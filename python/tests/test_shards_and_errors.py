"""Shards as zero-copy views, schedules with the CLI's values and messages, and bad inputs raising
Python exceptions that name the file and the reason."""

from __future__ import annotations

import gc
import gzip
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import maskrate

REPO = Path(__file__).resolve().parents[2]
REFERENCE_IDS = REPO / "data" / "reference" / "c4-sample-ids.jsonl.gz"
SAMPLE = REPO / "data" / "c4-sample"


def test_documents_are_views_of_the_memory_map(sample_shards):
    shards = maskrate.Shards(sample_shards)
    assert len(shards) == shards.num_documents > 250
    a, b = shards[0], shards[0]
    assert a.dtype == np.uint16 and shards.dtype == "uint16"
    # Two views of one document share memory: neither is a copy.
    assert np.shares_memory(a, b)
    assert a.base is shards or getattr(a.base, "base", None) is shards
    assert not a.flags.writeable and not a.flags.owndata
    with pytest.raises(ValueError):
        a[0] = 1
    with pytest.raises(ValueError):
        a.setflags(write=True)
    # Negative indices, lengths and totals agree.
    assert np.array_equal(shards[-1], shards[len(shards) - 1])
    assert sum(shards.doc_len(i) for i in range(len(shards))) == shards.num_tokens
    with pytest.raises(IndexError):
        shards[len(shards)]
    # The view keeps the map alive after the last reference to the set goes.
    first = shards[3].copy()
    view = shards[3]
    del shards
    gc.collect()
    assert np.array_equal(view, first)


def test_documents_equal_the_tokenizers_reference_ids(sample_shards, preprocess_bin):
    """Every document's ids are the `tokenizers` library's: data/reference/c4-sample-ids.jsonl.gz
    (made by scripts/make_reference_ids.py with the Python `tokenizers`) holds each line's ids."""
    shards = maskrate.Shards(sample_shards, verify=True)
    out = subprocess.run(
        [str(preprocess_bin), "inspect", str(sample_shards)], check=True, capture_output=True, text=True
    ).stdout
    assert str(shards.num_tokens) in out.replace(",", "")
    tok = shards.tokenizer
    assert tok["vocab_size"] == 30522 and tok["mask_id"] == 103
    reference = [json.loads(line)["ids"] for line in gzip.open(REFERENCE_IDS, "rt")]
    reference = [ids for ids in reference if ids]  # empty documents are skipped by preprocess
    assert len(shards) == len(reference)
    for i, ids in enumerate(reference):
        assert shards[i].tolist() == ids, f"document {i}"
    assert shards.verify() == 2 * shards.num_shards


def test_shards_pickle_by_path(sample_shards):
    shards = maskrate.Shards(sample_shards)
    again = pickle.loads(pickle.dumps(shards))
    assert np.array_equal(again[5], shards[5])


def test_schedule_values_are_the_formulas():
    lin = maskrate.Schedule("linear:0.3:0.15", 101)
    assert lin.rate(0) == pytest.approx(0.3)
    assert lin.rate(50) == pytest.approx(0.225)
    assert lin.rate(100) == pytest.approx(0.15)
    held = maskrate.Schedule("linear:0.3:0.15@0.5", 101)
    assert held.rate(25) == pytest.approx(0.225) and held.rate(80) == pytest.approx(0.15)
    cos = maskrate.Schedule("cosine:0.3:0.1", 3)
    assert cos.rate(1) == pytest.approx(0.1 + 0.2 * 0.5 * (1 + np.cos(np.pi * 0.5)))
    step = maskrate.Schedule("step:0.3:0.15:0.5", 10)
    assert [step.rate(s) for s in (4, 5)] == [0.3, 0.15]
    assert maskrate.Schedule("exp:0.4:0.1", 3).rate(1) == pytest.approx(0.2)
    assert maskrate.Schedule("constant:0.15", 5).spec == "constant:0.15"
    with pytest.raises(ValueError, match="past the end of a 101-step run"):
        lin.rate(101)


def test_stairs_and_knots_values_at_hand_computed_points():
    # mmBERT's rate over 100 steps: switches at ceil(0.6 x 100) = 60 and ceil(0.9 x 100) = 90.
    stairs = maskrate.Schedule("stairs:0.3:0.15@0.6:0.05@0.9", 100)
    assert [stairs.rate(t) for t in (0, 59, 60, 89, 90, 99)] == [0.3, 0.3, 0.15, 0.15, 0.05, 0.05]
    knots = maskrate.Schedule("knots:0.3@0:0.2@0.5:0.15@1", 101)
    assert [knots.rate(t) for t in (0, 25, 50, 75, 100)] == pytest.approx([0.3, 0.25, 0.2, 0.175, 0.15])
    cos = maskrate.Schedule("knots-cos:0.3@0:0.15@1", 101)
    assert cos.rate(50) == pytest.approx(0.225)
    assert cos.rate(25) == pytest.approx(0.3 - 0.15 * 0.5 * (1 - np.cos(np.pi * 0.25)))
    with pytest.raises(ValueError, match=r'piece 3 "0.05@0.5": fraction 0.5 is not after'):
        maskrate.Schedule("stairs:0.3:0.15@0.6:0.05@0.5", 100)
    with pytest.raises(ValueError, match="the last point must be at 1"):
        maskrate.Schedule("knots:0.3@0:0.15@0.9", 100)


@pytest.mark.parametrize(
    "spec",
    [
        "linear:0.3",
        "wave:0.3:0.1",
        "linear:0.3:1.5",
        "constant:0.15@0.5",
        "step:0.3:0.1:1",
        "stairs:0.3:0.15",
        "knots:0.3@0:0.2@0.2:0.15@0.9",
    ],
)
def test_schedule_errors_are_the_clis(spec, trainer_bin, sample_shards):
    with pytest.raises(ValueError) as err:
        maskrate.Schedule(spec, 100)
    cli = subprocess.run(
        [str(trainer_bin), "inspect-batch", "--shards", str(sample_shards), "--schedule", spec],
        capture_output=True,
        text=True,
    )
    assert cli.returncode != 0
    message = str(err.value)
    assert message.startswith(f"bad schedule {json.dumps(spec)}: ")
    # The CLI prints the same message (after clap's own prefix), grammar included.
    first_line = message.splitlines()[0]
    assert first_line in cli.stderr, (first_line, cli.stderr)
    assert maskrate.SCHEDULE_GRAMMAR.splitlines()[0] in message


def test_a_missing_directory_is_an_oserror_naming_it(tmp_path):
    with pytest.raises(OSError) as err:
        maskrate.Shards(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)


def test_a_directory_that_is_not_a_shard_set(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json"):
        maskrate.Shards(tmp_path)


def test_a_truncated_bin_names_the_file(shards_copy):
    bins = sorted(shards_copy.glob("*.bin"))
    with open(bins[0], "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    with pytest.raises(ValueError) as err:
        maskrate.Shards(shards_copy)
    assert bins[0].name in str(err.value)


def test_flipped_idx_bytes_name_the_file(shards_copy):
    idx = sorted(shards_copy.glob("*.idx"))[0]
    data = bytearray(idx.read_bytes())
    data[0] ^= 0xFF  # the magic
    idx.write_bytes(bytes(data))
    with pytest.raises(ValueError) as err:
        maskrate.Shards(shards_copy)
    assert idx.name in str(err.value)


def test_flipped_bytes_inside_a_shard_are_caught_by_verify(shards_copy):
    b = sorted(shards_copy.glob("*.bin"))[0]
    data = bytearray(b.read_bytes())
    data[100] ^= 0x01
    b.write_bytes(bytes(data))
    maskrate.Shards(shards_copy)  # sizes and headers are intact
    with pytest.raises(ValueError) as err:
        maskrate.Shards(shards_copy, verify=True)
    assert b.name in str(err.value) and "sha256" in str(err.value)


def test_token_ids_outside_the_vocabulary_fail_the_batch_naming_the_shard(shards_copy):
    b = sorted(shards_copy.glob("*.bin"))[0]
    data = np.fromfile(b, dtype=np.uint16)
    data[5:200] = 65535  # beyond bert-base-uncased's 30,522 ids
    data.tofile(b)
    mb = maskrate.MaskedBatches(shards_copy, total_steps=2, batch_size=300, eval_sequences=0)
    with pytest.raises(ValueError) as err:
        mb.batch(0)
    assert b.name in str(err.value) and "vocabulary" in str(err.value), str(err.value)


def test_bad_keywords_and_steps_raise_valueerror(sample_shards):
    with pytest.raises(ValueError, match="bad schedule"):
        maskrate.MaskedBatches(sample_shards, schedule="linear:2:0.1")
    with pytest.raises(ValueError, match="layout"):
        maskrate.MaskedBatches(sample_shards, layout="stack")
    with pytest.raises(ValueError, match="world size"):
        maskrate.MaskedBatches(sample_shards, batch_size=6, world_size=4)
    mb = maskrate.MaskedBatches(sample_shards, total_steps=3, batch_size=4)
    with pytest.raises(ValueError, match="past the end of a 3-step run"):
        mb.batch(3)


def test_errors_never_abort_the_interpreter(shards_copy):
    """Every bad input above, in a fresh interpreter: it must exit normally."""
    code = f"""
import maskrate, sys
for bad in [lambda: maskrate.Shards({str(shards_copy / 'missing')!r}),
            lambda: maskrate.Schedule('cosine:', 5),
            lambda: maskrate.MaskedBatches({str(shards_copy)!r}, total_steps=1, batch_size=2).batch(9)]:
    try:
        bad()
    except (ValueError, OSError) as e:
        print(type(e).__name__)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["FileNotFoundError", "ValueError", "ValueError"]


@pytest.mark.parametrize(
    "text,size",
    [("1GB", 10**9), ("1GiB", 2**30), ("1G", 2**30), ("512MiB", 512 << 20), ("64KB", 64_000), ("4096", 4096)],
)
def test_size_keywords_follow_the_one_grammar(sample_shards, text, size):
    mb = maskrate.MaskedBatches(sample_shards, total_steps=2, batch_size=4, cache_bytes=text)
    assert mb.config["cache_bytes"] == size


def test_bad_sizes_raise_naming_the_text(sample_shards, tmp_path):
    with pytest.raises(ValueError, match='"4X"'):
        maskrate.MaskedBatches(sample_shards, cache_bytes="4X")
    with pytest.raises(ValueError, match='"12 parsecs"'):
        maskrate.preprocess(SAMPLE, tmp_path / "out", shard_size="12 parsecs", progress=False)
