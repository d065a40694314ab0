"""Model presets have one source: the trainer's table (`trainer presets --json`) is the package's
`maskrate.model_presets()`, the scripts, benchmarks and examples read it, and none keeps a copy."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import maskrate

REPO = Path(__file__).resolve().parents[2]
# Every Python file that builds a model of a maskrate preset.
READERS = [
    REPO / "scripts" / "gpu_check.py",
    REPO / "bench" / "hf_train_step.py",
    REPO / "python" / "examples" / "hf_trainer.py",
    REPO / "scripts" / "hf_equivalence.py",
]


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def shape_tuple(s: dict) -> tuple[int, int, int, int]:
    return s["num_hidden_layers"], s["hidden_size"], s["num_attention_heads"], s["intermediate_size"]


def test_the_trainer_and_the_package_print_one_table(trainer_bin):
    out = subprocess.run([str(trainer_bin), "presets", "--json"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == maskrate.model_presets()
    table = subprocess.run([str(trainer_bin), "presets"], capture_output=True, text=True, check=True).stdout
    assert "| modernbert | base | 22 | 768 | 12 | 1152 | 0 |" in table, table


def test_published_shapes_and_defaults():
    p = maskrate.model_presets()
    assert shape_tuple(p["bert"]["presets"]["base"]) == (12, 768, 12, 3072)
    assert shape_tuple(p["modernbert"]["presets"]["base"]) == (22, 768, 12, 1152)
    assert (p["bert"]["dropout"], p["modernbert"]["dropout"]) == (0.1, 0.0)


def test_the_gpu_check_trains_the_trainer_shapes():
    gpu_check = load(REPO / "scripts" / "gpu_check.py")
    for arch, entry in maskrate.model_presets().items():
        for size, shape in entry["presets"].items():
            assert gpu_check.model_shape(arch, size) == shape_tuple(shape), (arch, size)


def test_the_hf_example_builds_the_trainer_shapes():
    example = load(REPO / "python" / "examples" / "hf_trainer.py")
    tok = {"vocab_size": 120, "pad_id": 0, "cls_id": 1, "sep_id": 2}
    for arch, entry in maskrate.model_presets().items():
        for size in ("tiny", "mini"):
            args = example.parse_args(["--shards", "x", "--out", "y", "--arch", arch, "--model", size])
            cfg = example.model_for(args, tok).config
            got = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size)
            assert got == shape_tuple(entry["presets"][size]), (arch, size)
            dropout = cfg.hidden_dropout_prob if arch == "bert" else cfg.embedding_dropout
            assert dropout == entry["dropout"], (arch, dropout)


def test_no_script_keeps_its_own_copy_of_a_shape():
    """A literal tuple of layers and a preset width (e.g. `(4, 256, 4, 1024)`, or a drifted
    `(3, 128, 2, 192)`) in a reader is a copy that can drift from the table."""
    widths = {s["hidden_size"] for e in maskrate.model_presets().values() for s in e["presets"].values()}
    pattern = rf"\(\s*\d+\s*,\s*({'|'.join(map(str, sorted(widths)))})\s*,\s*\d+"
    for path in READERS:
        copy = re.search(pattern, path.read_text())
        assert copy is None, f"{path.name} holds a model shape of its own: {copy.group(0)}"
