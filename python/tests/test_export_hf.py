"""`trainer export` gives directories transformers loads strictly, with maskrate's logits: BERT
(`BertForMaskedLM`) and ModernBERT (`ModernBertForMaskedLM`), fp32, 1e-4 relative."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("compare_hf", REPO / "scripts" / "compare_hf.py")
compare_hf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_hf)

TINY = ["--model", "tiny", "--hidden", "32", "--heads", "2", "--layers", "4", "--seq-len", "64",
        "--batch-size", "8", "--micro-batch", "8", "--steps", "3", "--lr", "2e-3", "--seed", "3",
        "--eval-every", "0", "--eval-sequences", "0", "--quiet"]


def trained_export(trainer_bin: Path, shards: Path, tmp: Path, arch: str) -> Path:
    run, out = tmp / f"run-{arch}", tmp / f"export-{arch}"
    subprocess.run([trainer_bin, "--shards", shards, "--arch", arch, *TINY,
                    "--intermediate", "48" if arch == "modernbert" else "64", "--out", run],
                   check=True, capture_output=True)
    subprocess.run([trainer_bin, "export", run, "--out", out], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("arch,cls", [("bert", "BertForMaskedLM"), ("modernbert", "ModernBertForMaskedLM")])
def test_export_loads_strictly_with_the_same_logits(trainer_bin, sample_shards, tmp_path, arch, cls):
    out = trained_export(trainer_bin, sample_shards, tmp_path, arch)
    assert json.loads((out / "config.json").read_text())["architectures"] == [cls]
    rel, info = compare_hf.compare(out)
    assert not any(info.values()), info
    assert rel < 1e-4, rel
    if arch == "modernbert":
        # The check input is longer than the local window, so the window is part of what agrees:
        # with a narrower window in the config the logits move ten times the tolerance or more.
        config = json.loads((out / "config.json").read_text())
        assert len(load_file(out / "maskrate_check.safetensors")["input_ids"][0]) > config["local_attention"]
        config["local_attention"] = 32
        (out / "config.json").write_text(json.dumps(config))
        moved, _ = compare_hf.compare(out)
        assert moved > 10 * 1e-4, moved


@pytest.mark.parametrize("arch,cls", [("bert", "BertForSequenceClassification"),
                                      ("modernbert", "ModernBertForSequenceClassification")])
def test_finetuned_model_loads_strictly_with_the_same_logits(trainer_bin, sample_shards, tmp_path, arch, cls):
    """`trainer finetune --save-model` from an export: transformers' sequence classifier of the
    architecture loads it with no missing or unexpected keys and gives maskrate's logits; the
    fine-tuned directory also starts a further fine-tuning (`--init-from`)."""
    export = trained_export(trainer_bin, sample_shards, tmp_path, arch)
    ft = tmp_path / f"ft-{arch}"
    common = ["--data", REPO / "data" / "glue" / "RTE", "--max-train", "32", "--max-eval", "16",
              "--epochs", "1", "--quiet"]
    subprocess.run([trainer_bin, "finetune", "--checkpoint", export, "--task", "RTE", *common,
                    "--save-model", "--out", ft], check=True, capture_output=True)
    model_dir = ft / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == [cls] and config["num_labels"] == 2
    rel, info = compare_hf.compare(model_dir)
    assert not any(info.values()), info
    assert rel < 1e-4, rel
    again = subprocess.run([trainer_bin, "finetune", "--checkpoint", export, "--task", "RTE", *common,
                            "--init-from", model_dir, "--out", tmp_path / f"ft2-{arch}"],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
