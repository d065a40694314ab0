"""maskrate: tokenize-once token shards and a step-aware masking-rate sampler for BERT-style MLM
pretraining ("Dynamic Masking Rate Schedules for MLM Pretraining", Ankner et al., 2023).

The batch of step ``t`` is a pure function of (seed, step, slot): the masking rate is the
schedule's value at ``t`` (never lagged by prefetching), a resumed run rebuilds exactly the batches
it would have seen, and any world size splits the same global batch.

- :class:`Shards`: a shard directory made by ``preprocess``; documents are zero-copy numpy views.
- :class:`Schedule`: the trainer's masking-rate schedule grammar (``linear:0.3:0.15@0.1``).
- :class:`MaskedBatches`: the trainer's masked batch of any step, as numpy arrays (numpy only: JAX
  and other frameworks use this).
- :func:`preprocess`: corpus files to shards, as the ``preprocess`` command (also
  ``python -m maskrate preprocess ...`` and ``maskrate-preprocess``).
- ``maskrate.torch.MaskedDataset``: a PyTorch ``IterableDataset`` with ``state_dict()``.
- ``maskrate.hf``: the HuggingFace ``Trainer`` integration (O(1) resume, ``torchrun``).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Union

from ._maskrate import (
    SCHEDULE_GRAMMAR,
    MaskedBatches,
    Schedule,
    Shards,
    __version__,
)
from ._maskrate import preprocess as _preprocess

__all__ = [
    "SCHEDULE_GRAMMAR",
    "MaskedBatches",
    "Schedule",
    "Shards",
    "preprocess",
    "__version__",
]

PathLike = Union[str, "os.PathLike[str]"]


def preprocess(
    inputs: PathLike | Iterable[PathLike],
    out: PathLike,
    *,
    tokenizer: PathLike | None = None,
    threads: int = 0,
    text_field: str = "text",
    max_tokens_per_doc: int | None = None,
    shard_size: int | str = "256MiB",
    skip_bad_records: bool = False,
    max_record_bytes: int | str = "16MiB",
    partition: str | tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    work_dir: PathLike | None = None,
) -> dict[str, Any]:
    """Tokenizes ``inputs`` (files or directories of JSON lines, gzip/zstd JSON lines, parquet or
    Arrow files, walked in sorted order) into a shard set in ``out``, exactly as
    ``preprocess INPUT... --out OUT`` does: same bytes, same resumability (an interrupted call
    resumes when repeated), the GIL released while it runs, Ctrl-C stopping it cleanly.

    ``tokenizer`` is a HuggingFace ``tokenizer.json`` (default: the bundled bert-base-uncased);
    ``threads=0`` uses every core; sizes take ints (bytes) or strings such as ``"256MiB"``;
    ``partition`` is ``"I/N"`` or ``(I, N)``. Inputs and ``out`` may be bucket URLs
    (``s3://bucket/prefix``; credentials from the ``AWS_*`` environment): inputs are streamed,
    shards uploaded as they are finished (staged in ``work_dir``), the manifest last. Returns the
    run's summary (documents, tokens, shards, and the text the command prints).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if isinstance(partition, tuple):
        partition = f"{partition[0]}/{partition[1]}"
    return _preprocess(
        [os.fspath(p) for p in inputs],
        os.fspath(out),
        tokenizer=None if tokenizer is None else os.fspath(tokenizer),
        threads=threads,
        text_field=text_field,
        max_tokens_per_doc=max_tokens_per_doc,
        shard_size=str(shard_size),
        skip_bad_records=skip_bad_records,
        max_record_bytes=str(max_record_bytes),
        partition=partition,
        overwrite=overwrite,
        progress=progress,
        work_dir=None if work_dir is None else os.fspath(work_dir),
    )


def _rebuild_masked_batches(shards: Shards, kwargs: dict[str, Any]) -> MaskedBatches:
    """Unpickles a :class:`MaskedBatches` (used by its ``__reduce__``)."""
    return MaskedBatches(shards, **kwargs)
