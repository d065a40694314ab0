"""maskrate: tokenize-once token shards and a step-aware masking-rate sampler for BERT-style MLM
pretraining ("Dynamic Masking Rate Schedules for MLM Pretraining", Ankner et al., 2023).

The batch of step ``t`` is a pure function of (seed, step, slot): the masking rate is the
schedule's value at ``t`` (never lagged by prefetching), a resumed run rebuilds exactly the batches
it would have seen, and any world size splits the same global batch.

- :class:`Shards`: a shard directory made by ``preprocess``; documents are zero-copy numpy views.
- :class:`Schedule`: the trainer's masking-rate schedule grammar (``linear:0.3:0.15@0.1``).
- :class:`LrSchedule`: the trainer's learning-rate schedules (``wsd:0.2:1-sqrt``), step by step.
- :class:`MaskedBatches`: the trainer's masked batch of any step, as numpy arrays (numpy only: JAX
  and other frameworks use this).
- :func:`model_presets`: the trainer's model presets per architecture (``--arch``, ``--model``).
- :func:`preprocess`: corpus files to shards, as the ``preprocess`` command (also
  ``python -m maskrate preprocess ...`` and ``maskrate-preprocess``).
- ``maskrate.torch.MaskedDataset``: a PyTorch ``IterableDataset`` with ``state_dict()``.
- ``maskrate.hf``: the HuggingFace ``Trainer`` integration (O(1) resume, ``torchrun``).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Union

from ._maskrate import (
    PREPROCESS_SETTINGS,
    SCHEDULE_GRAMMAR,
    LrSchedule,
    MaskedBatches,
    Schedule,
    Shards,
    __version__,
    model_presets,
)
from ._maskrate import preprocess as _preprocess

__all__ = [
    "PREPROCESS_SETTINGS",
    "SCHEDULE_GRAMMAR",
    "LrSchedule",
    "MaskedBatches",
    "Schedule",
    "Shards",
    "model_presets",
    "preprocess",
    "__version__",
]

PathLike = Union[str, "os.PathLike[str]"]


def preprocess(inputs: PathLike | Iterable[PathLike], out: PathLike, **settings: Any) -> dict[str, Any]:
    """Tokenizes ``inputs`` (files or directories of JSON lines, gzip/zstd JSON lines, parquet or
    Arrow files, walked in sorted order) into a shard set in ``out``, exactly as
    ``preprocess INPUT... --out OUT`` does: same bytes, same resumability (an interrupted call
    resumes when repeated), the GIL released while it runs, Ctrl-C stopping it cleanly.

    ``settings`` are the command's flags by name, with its defaults (``PREPROCESS_SETTINGS``)
    and checks, read by the same code: ``tokenizer`` (a HuggingFace ``tokenizer.json``; default
    the bundled bert-base-uncased), ``threads`` (0: every core), ``text_field``,
    ``max_tokens_per_doc``, ``shard_size`` and ``max_record_bytes`` (ints in bytes or strings
    such as ``"256MiB"``), ``skip_bad_records``, ``partition`` (``"I/N"`` or ``(I, N)``),
    ``overwrite``, ``progress`` and ``work_dir``. Inputs and ``out`` may be bucket URLs
    (``s3://bucket/prefix``; credentials from the ``AWS_*`` environment): inputs are streamed,
    shards uploaded as they are finished (staged in ``work_dir``), the manifest last. Returns the
    run's summary (documents, tokens, shards, and the text the command prints).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    return _preprocess([os.fspath(p) for p in inputs], os.fspath(out), settings)


def _rebuild_masked_batches(shards: Shards, kwargs: dict[str, Any]) -> MaskedBatches:
    """Unpickles a :class:`MaskedBatches` (used by its ``__reduce__``)."""
    return MaskedBatches(shards, **kwargs)
