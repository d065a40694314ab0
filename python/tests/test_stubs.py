"""The type stubs (`_maskrate.pyi`) say what the extension module is: the same names, classes
with the same methods, and each callable's parameters as the module's own signature lists them;
`preprocess`'s keywords are the command's flags (`PREPROCESS_SETTINGS`), refused when unknown."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import maskrate
from maskrate import _maskrate as ext

STUB = Path(maskrate.__file__).parent / "_maskrate.pyi"


def stub() -> dict[str, object]:
    """Top-level names of the stub: constants (None), functions (their ast), classes ({name: ast})."""
    tree = ast.parse(STUB.read_text())
    names: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign):
            names[node.target.id] = None
        elif isinstance(node, ast.FunctionDef):
            names[node.name] = node
        elif isinstance(node, ast.ClassDef):
            names[node.name] = {n.name: n for n in node.body if isinstance(n, ast.FunctionDef)}
    return names


def stub_params(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    names = [p.arg for p in a.posonlyargs + a.args if p.arg != "self"]
    return names + (["*"] if a.kwonlyargs else []) + [p.arg for p in a.kwonlyargs]


def module_params(obj) -> list[str] | None:
    """Parameter names of a pyo3 callable, from its `__text_signature__` (None when it has none)."""
    text = getattr(obj, "__text_signature__", None)
    if text is None:
        return None
    names = []
    for part in text.strip("()").split(","):
        name = part.strip().split("=")[0].strip()
        if name and not name.startswith("$") and name != "/":
            names.append(name)
    return names


def test_the_stub_names_exactly_the_modules_items():
    public = {n for n in dir(ext) if not n.startswith("_")} | {"__version__"}
    assert set(stub()) == public


def same_parameters(stub_fn: ast.FunctionDef, real, where: str) -> None:
    """The stub lists the module's parameters; where the module takes `**settings` (the data
    config's keys, merged by its deserializer), the stub spells those keys out: exactly
    `DATA_CONFIG_KEYS` less `shards`, `steps` (`total_steps`) and the named ones."""
    ours, theirs = stub_params(stub_fn), module_params(real)
    if not theirs or not theirs[-1].startswith("**"):
        assert ours == theirs, where
        return
    named = [p for p in theirs[:-1] if p != "*"]
    assert [p for p in ours if p in named] == named, where
    spelled = {p for p in ours if p not in named and p != "*"}
    assert spelled == set(ext.DATA_CONFIG_KEYS) - {"shards", "steps"} - set(named), where


def test_every_class_and_function_has_the_modules_parameters():
    checked = 0
    for name, item in stub().items():
        real = getattr(ext, name)
        if isinstance(item, ast.FunctionDef):
            same_parameters(item, real, name)
            checked += 1
        elif isinstance(item, dict):
            public = {m for m in dir(real) if not m.startswith("_")}
            assert {m for m in item if not m.startswith("_")} == public, name
            # Slot methods (`__len__`, `__getitem__`) carry Python's generic signatures.
            methods = {m: fn for m, fn in item.items() if m == "__init__" or not m.startswith("_")}
            for method, fn in methods.items():
                target = real if method == "__init__" else getattr(real, method)
                if module_params(target) is not None:
                    same_parameters(fn, target, f"{name}.{method}")
                    checked += 1
    assert checked > 20, checked


def test_preprocess_keywords_are_the_commands_flags(tmp_path):
    settings = maskrate.PREPROCESS_SETTINGS
    assert settings["shard_size"] == 256 << 20 and settings["progress"] is True
    assert settings["text_field"] == "text" and settings["threads"] == 0
    assert set(settings) == {
        "tokenizer", "threads", "text_field", "max_tokens_per_doc", "shard_size", "skip_bad_records",
        "max_record_bytes", "partition", "overwrite", "progress", "work_dir",
    }
    with pytest.raises(ValueError, match='unknown preprocess setting "shard_sise"'):
        maskrate.preprocess("nowhere", tmp_path / "out", shard_sise="1MiB")
    with pytest.raises(ValueError, match='"partition"'):
        maskrate.preprocess("nowhere", tmp_path / "out", partition=(4, 4))
    assert list(inspect.signature(maskrate.preprocess).parameters) == ["inputs", "out", "settings"]
