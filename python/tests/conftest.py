"""Fixtures: the repository's sample corpus preprocessed once (through the Python API), and the
trainer binary, whose `inspect-batch --json` is the reference every Python batch is compared to."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import maskrate

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "c4-sample"


def _binary(name: str, package: str | None = None) -> Path:
    """A built maskrate binary: $MASKRATE_BIN_DIR/NAME, else target/{debug,release}/NAME, else
    built now with cargo (from `package`, default NAME)."""
    candidates = []
    if os.environ.get("MASKRATE_BIN_DIR"):
        candidates.append(Path(os.environ["MASKRATE_BIN_DIR"]) / name)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    candidates += [target / "debug" / name, target / "release" / name]
    for c in candidates:
        if c.is_file():
            return c
    subprocess.run(["cargo", "build", "-p", package or name], cwd=REPO, check=True)
    return target / "debug" / name


@pytest.fixture(scope="session")
def trainer_bin() -> Path:
    return _binary("trainer")


@pytest.fixture(scope="session")
def preprocess_bin() -> Path:
    return _binary("preprocess")


@pytest.fixture(scope="session")
def sample_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled 300-document C4 sample, preprocessed by `maskrate.preprocess`."""
    out = tmp_path_factory.mktemp("shards") / "sample"
    summary = maskrate.preprocess(SAMPLE, out, threads=2, progress=False)
    assert summary["documents"] > 250, summary
    return out


@pytest.fixture()
def shards_copy(sample_shards: Path, tmp_path: Path) -> Path:
    """A private copy of the sample shards, for tests that damage them."""
    dst = tmp_path / "copy"
    shutil.copytree(sample_shards, dst)
    return dst
