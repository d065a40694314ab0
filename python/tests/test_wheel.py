"""The wheel as a user gets it: installed into a fresh venv whose PATH has no cargo or rustc, it
imports, carries its stubs, `py.typed` and the `maskrate` command, preprocesses the sample into
the same shards, and builds the batch `trainer inspect-batch --json` prints."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import venv
from pathlib import Path

import pytest

from conftest import OUTSIDE_CI, SAMPLE

WHEEL = os.environ.get("MASKRATE_WHEEL")
pytestmark = pytest.mark.skipif(
    not WHEEL, reason=f"{OUTSIDE_CI} MASKRATE_WHEEL unset (scripts/python-tests.sh sets it)"
)

FLAGS = ["--schedule", "linear:0.3:0.15", "--steps", "10", "--batch-size", "8", "--seq-len", "64"]


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("fresh") / "venv"
    venv.EnvBuilder(with_pip=True).create(root)
    # Only the venv and the system's own directories: no ~/.cargo/bin, no pyenv shims.
    path = os.pathsep.join([str(root / "bin"), "/usr/local/bin", "/usr/bin", "/bin"])
    for tool in ("cargo", "rustc"):
        assert shutil.which(tool, path=path) is None, f"{tool} on the fresh venv's PATH"
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    start = time.perf_counter()
    subprocess.run(
        [root / "bin" / "pip", "install", "-q", "--disable-pip-version-check", WHEEL],
        check=True,
        env=env,
    )
    seconds = time.perf_counter() - start
    size = Path(WHEEL).stat().st_size / 1e6
    print(f"\nwheel {Path(WHEEL).name}: {size:.1f} MB, pip install (numpy from pip's cache) {seconds:.1f} s")
    return root, env


def run(fresh_venv, *args: str) -> subprocess.CompletedProcess[str]:
    root, env = fresh_venv
    return subprocess.run(
        [str(root / "bin" / args[0]), *args[1:]], check=True, capture_output=True, text=True, env=env
    )


def test_the_wheel_carries_its_stubs_and_command(fresh_venv):
    out = run(fresh_venv, "python", "-c", "import maskrate, os; print(os.path.dirname(maskrate.__file__))")
    package = Path(out.stdout.strip())
    assert "site-packages" in str(package), package
    assert (package / "py.typed").is_file()
    assert "class MaskedBatches" in (package / "_maskrate.pyi").read_text()
    assert "inspect-batch" in run(fresh_venv, "maskrate", "--help").stdout
    assert "--schedule" in run(fresh_venv, "maskrate", "inspect-batch", "--help").stdout


def test_the_command_preprocesses_the_same_shards(fresh_venv, sample_shards, tmp_path):
    out = tmp_path / "shards"
    run(fresh_venv, "maskrate", "preprocess", str(SAMPLE), "--out", str(out), "--threads", "2")
    # The files' own bytes, hashed here (not the hashes either manifest reports).
    def digests(d: Path) -> dict[str, str]:
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(d.iterdir()) if f.suffix in (".bin", ".idx")}

    ours, theirs = digests(out), digests(sample_shards)
    assert ours and any(name.endswith(".bin") for name in ours), ours
    assert ours == theirs


def test_a_batch_from_the_fresh_install_equals_the_trainers(fresh_venv, trainer_bin, sample_shards):
    shards = str(sample_shards)
    trainer = subprocess.run(
        [str(trainer_bin), "inspect-batch", "--shards", shards, "--step", "3", "--json", *FLAGS],
        check=True, capture_output=True, text=True,
    ).stdout
    command = run(fresh_venv, "maskrate", "inspect-batch", "--shards", shards, "--step", "3", "--json", *FLAGS).stdout
    script = (
        "import json, sys, maskrate\n"
        f"mb = maskrate.MaskedBatches({shards!r}, schedule='linear:0.3:0.15', total_steps=10,"
        " batch_size=8, seq_len=64)\n"
        "print(json.dumps({k: v.tolist() for k, v in mb.batch(3).items()}))\n"
    )
    python = json.loads(run(fresh_venv, "python", "-c", script).stdout)
    trainer, command = json.loads(trainer), json.loads(command)
    assert command == trainer
    for field in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        assert python[field] == trainer[field], field
