"""Shards in a bucket, from Python, against a real S3 server (`maskrate-s3-server`, s3s-fs) on
127.0.0.1: `Shards` and `MaskedBatches` over an `s3://` URL equal the same shards on local disk,
in both orders; `maskrate.preprocess` writes to a bucket; errors name the URL."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import maskrate

from conftest import SAMPLE, _binary


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """A server with bucket `data`; the AWS_* environment pointing at it while the module runs."""
    binary = _binary("maskrate-s3-server", "maskrate-s3-test-server")
    root = tmp_path_factory.mktemp("s3")
    proc = subprocess.Popen(
        [str(binary), str(root), "--bucket", "data"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    endpoint = proc.stdout.readline().strip()
    assert endpoint.startswith("http://127.0.0.1:"), endpoint
    env = {
        "AWS_ACCESS_KEY_ID": "maskrate-test-key",
        "AWS_SECRET_ACCESS_KEY": "maskrate-test-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "MASKRATE_STORE_RETRIES": "1",
        "MASKRATE_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield root / "data"
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def bucket_shards(s3: Path, tmp_path_factory: pytest.TempPathFactory):
    """The sample preprocessed locally (small shards) and the same files in the bucket."""
    local = tmp_path_factory.mktemp("local") / "shards"
    maskrate.preprocess(SAMPLE, local, threads=2, progress=False, shard_size="40KiB")
    shutil.copytree(local, s3 / "shards")
    return local, "s3://data/shards"


def test_shards_from_a_bucket_equal_local_shards(bucket_shards):
    local, url = bucket_shards
    here, there = maskrate.Shards(local), maskrate.Shards(url, cache_bytes="64M")
    assert len(here) == len(there) and here.num_shards == there.num_shards > 3
    assert there.fingerprint == here.fingerprint and there.dtype == here.dtype
    for i in (0, 1, 150, len(here) - 1):
        assert np.array_equal(here[i], there[i])
        assert there[i].dtype == here[i].dtype


@pytest.mark.parametrize("order", ["global", "shard-blocks:2"])
def test_batches_from_a_bucket_equal_local_batches(bucket_shards, order):
    local, url = bucket_shards
    kw = dict(total_steps=30, batch_size=8, seq_len=64, order=order)
    here = maskrate.MaskedBatches(local, **kw)
    there = maskrate.MaskedBatches(url, cache_bytes=64 << 20, **kw)
    for step in (0, 9, 29):
        a, b = here.batch(step), there.batch(step)
        for name in a:
            assert np.array_equal(a[name], b[name]), (order, step, name)


def test_the_order_flag_changes_batches_not_the_location(bucket_shards):
    local, _ = bucket_shards
    kw = dict(total_steps=30, batch_size=8, seq_len=64)
    a = maskrate.MaskedBatches(local, order="global", **kw).batch(3)["input_ids"]
    b = maskrate.MaskedBatches(local, order="shard-blocks:2", **kw).batch(3)["input_ids"]
    assert not np.array_equal(a, b)
    with pytest.raises(ValueError, match="shard-blocks:K"):
        maskrate.MaskedBatches(local, order="blocks", **kw)


def test_preprocess_writes_to_a_bucket(s3: Path, bucket_shards, tmp_path: Path):
    local, _ = bucket_shards
    summary = maskrate.preprocess(
        SAMPLE, "s3://data/from-python", threads=2, progress=False, shard_size="40KiB",
        work_dir=tmp_path / "work",
    )
    assert summary["out"] == "s3://data/from-python"
    for f in sorted(local.glob("shard-*")):
        assert (s3 / "from-python" / f.name).read_bytes() == f.read_bytes(), f.name
    assert (s3 / "from-python" / "manifest.json").exists()


def test_a_missing_prefix_names_the_url(s3):
    with pytest.raises(OSError, match=r"s3://data/nothing-here/manifest.json: not found"):
        maskrate.Shards("s3://data/nothing-here")
