"""Preprocessing from Python: the same bytes as the `preprocess` binary, the console script with
the binary's flags, and a clean stop on Ctrl-C that the same call resumes."""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import maskrate

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "c4-sample"


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_python_preprocess_equals_the_binary(preprocess_bin, sample_shards, tmp_path):
    out = tmp_path / "cli"
    subprocess.run(
        [str(preprocess_bin), str(SAMPLE), "--out", str(out), "--threads", "1", "--quiet"],
        check=True,
        capture_output=True,
    )
    ours, theirs = files(sample_shards), files(out)
    assert ours.keys() == theirs.keys()
    for name in ours:
        if name != "manifest.json":  # it records the input paths as given
            assert ours[name] == theirs[name], name
    again = maskrate.preprocess(SAMPLE, sample_shards, threads=1, progress=False)
    assert again["already_done"] is True


def test_options_and_errors(tmp_path):
    out = tmp_path / "small"
    summary = maskrate.preprocess(
        [SAMPLE], out, max_tokens_per_doc=32, shard_size=5_000, progress=False
    )
    shards = maskrate.Shards(out)
    assert summary["shards"] == shards.num_shards > 1
    assert max(shards.doc_len(i) for i in range(len(shards))) == 32
    with pytest.raises(ValueError, match="size"):
        maskrate.preprocess(SAMPLE, tmp_path / "x", shard_size="lots", progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(ValueError) as err:
        maskrate.preprocess(bad, tmp_path / "y", progress=False)
    assert "bad.jsonl:2" in str(err.value)


def test_console_script_and_module_entry(tmp_path):
    bindir = Path(sys.executable).parent
    script = bindir / "maskrate-preprocess"
    assert script.exists(), "console script not installed"
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--max-tokens-per-doc" in r.stdout
    out = tmp_path / "m"
    r = subprocess.run(
        [sys.executable, "-m", "maskrate", "preprocess", str(SAMPLE), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "documents" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "maskrate", "preprocess", "inspect", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "tokens" in r.stdout
    r = subprocess.run([sys.executable, "-m", "maskrate", "preprocess", "--nope"], capture_output=True)
    assert r.returncode == 2


def test_ctrl_c_stops_cleanly_and_the_same_call_resumes(tmp_path, sample_shards):
    """SIGINT to a Python process running `maskrate.preprocess` on a corpus made slow to read: it
    raises KeyboardInterrupt after committing what it had; the repeated call finishes the set,
    identical to an uninterrupted run."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = gzip.open(next(SAMPLE.glob("*.json.gz")), "rt").read().splitlines()
    for i in range(40):  # many files and shards: many commit points
        (corpus / f"part-{i:03}.jsonl").write_text("\n".join(lines * 3) + "\n")
    out = tmp_path / "out"
    code = (
        "import maskrate, signal, sys\n"
        # A job started in the background by a non-interactive shell inherits SIGINT ignored, and
        # Python then keeps it ignored: restore the handler an interactive user has.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "try:\n"
        f"    maskrate.preprocess({str(corpus)!r}, {str(out)!r}, threads=1, shard_size=200_000, progress=False)\n"
        "    print('finished')\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(out.glob("shard-*.bin")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    # The corpus takes tens of seconds to tokenize on one thread and the signal is sent when the
    # first shard is committed: a run that finished first is a failure, not a skip.
    assert stdout.strip() == "interrupted", (stdout, stderr)
    assert not (out / "manifest.json").exists()
    resumed = maskrate.preprocess(corpus, out, threads=1, shard_size=200_000, progress=False)
    assert "resumed" in resumed["summary"], resumed["summary"]  # continued, not restarted
    whole = tmp_path / "whole"
    maskrate.preprocess(corpus, whole, threads=1, shard_size=200_000, progress=False)
    a, b = files(out), files(whole)
    assert resumed["documents"] > 0
    assert {k: v for k, v in a.items() if k != "manifest.json"} == {
        k: v for k, v in b.items() if k != "manifest.json"
    }
