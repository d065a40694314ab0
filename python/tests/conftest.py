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


# -- skips ----------------------------------------------------------------------------------
# The rule (scripts/python-tests.sh sets MASKRATE_FAIL_ON_SKIP=1, so CI enforces it): a test may
# skip only for a condition CI never has, and its reason then starts with OUTSIDE_CI. Any other
# skip (a module-level importorskip of a broken torch, a run that ended too early...) fails the
# session: a skipped test says "checked" where nothing was.
OUTSIDE_CI = "outside CI:"
_skips: list[tuple[str, str]] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skips.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_collectreport(report):
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skips.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("MASKRATE_FAIL_ON_SKIP") != "1":
        return
    bad = [(node, reason) for node, reason in _skips if not reason.startswith(OUTSIDE_CI)]
    if bad:
        lines = "\n".join(f"  {node}: {reason}" for node, reason in bad)
        print(f"\nFAILED: {len(bad)} test(s) skipped for a reason CI must not have:\n{lines}")
        session.exitstatus = 1
