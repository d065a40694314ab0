"""Type stubs of maskrate's extension module (see the package docstring)."""

import os
from typing import Any, Literal, Sequence

import numpy as np
import numpy.typing as npt

__version__: str
SCHEDULE_GRAMMAR: str
DATA_CONFIG_KEYS: list[str]
PREPROCESS_SETTINGS: dict[str, Any]

def model_presets() -> dict[str, dict[str, Any]]:
    """Every architecture's model presets, the trainer's table (``trainer presets --json``):
    ``{arch: {dropout, max_position_embeddings, layer_norm_eps, presets: {name: shape}}}``, shapes
    in transformers' config names (``num_hidden_layers``, ``hidden_size``, ``num_attention_heads``,
    ``intermediate_size``)."""

_Path = str | os.PathLike[str]

class Shards:
    """A shard set made by ``preprocess``; ``shards[i]`` is document ``i`` as a read-only numpy
    view of the memory map (``uint16`` or ``int32``). A corrupted or foreign directory raises
    ``ValueError`` (``OSError`` for I/O failures) naming the file. A path may be a bucket URL
    (``s3://bucket/shards``, ``gs://``, ``az://``, ``https://``; credentials from the cloud's
    environment, e.g. ``AWS_*``): documents are then copies, read through the local cache
    ``cache_dir`` (default ``$MASKRATE_CACHE_DIR``, else ``~/.cache/maskrate/shards``) bounded by
    ``cache_bytes`` (int or ``"4G"``; default 4 GiB)."""

    def __init__(
        self,
        path: _Path | Sequence[_Path],
        verify: bool = False,
        cache_dir: _Path | None = None,
        cache_bytes: int | str | None = None,
    ) -> None: ...
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> npt.NDArray[np.uint16] | npt.NDArray[np.int32]: ...
    def doc_len(self, index: int) -> int: ...
    def verify(self) -> int:
        """Hashes every shard file against its manifest; returns the number of files."""
    @property
    def paths(self) -> list[str]: ...
    @property
    def num_documents(self) -> int: ...
    @property
    def num_tokens(self) -> int: ...
    @property
    def num_shards(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def tokenizer(self) -> dict[str, Any]:
        """``source``, ``sha256``, ``vocab_size`` and the special token ids."""

class Schedule:
    """A masking-rate schedule over a ``total_steps``-step run, in the trainer's grammar
    (``constant:0.15``, ``linear:0.3:0.15``, ``cosine:0.3:0.15@0.5``, ``step:0.3:0.15:0.5``)."""

    def __init__(self, spec: str, total_steps: int) -> None: ...
    def rate(self, step: int) -> float: ...
    @property
    def spec(self) -> str: ...
    @property
    def total_steps(self) -> int: ...

class LrSchedule:
    """The trainer's learning-rate schedule (``--lr-schedule SPEC --warmup F --final-lr-ratio R``):
    ``LrSchedule("wsd:0.2:1-sqrt", 1000)``; the grammar and its errors are the trainer's."""

    def __init__(
        self, spec: str, total_steps: int, *, peak: float = 1.0, warmup: float = 0.06,
        final_lr_ratio: float = 0.02,
    ) -> None: ...
    def lr(self, step: int) -> float:
        """The learning rate at optimizer step ``step`` (0-based), as the trainer applies it."""
    @property
    def warmup_steps(self) -> int: ...
    @property
    def total_steps(self) -> int: ...
    @property
    def decay_steps(self) -> int: ...
    @property
    def kind(self) -> Literal["linear", "wsd"]: ...
    @property
    def decay_shape(self) -> Literal["linear", "cosine", "1-sqrt"]: ...
    @property
    def final_lr_ratio(self) -> float: ...
    @property
    def spec(self) -> str: ...

class MaskedBatches:
    """The trainer's masked batches. Keywords are the trainer's flags with its defaults
    (``total_steps`` is ``--steps``): schedule ``"constant:0.15"``, total_steps 70000,
    batch_size 4096 (the global batch), seq_len 128, layout ``"truncate"``, min_doc_tokens 1,
    seed 0, mask_token_fraction 0.8, random_token_fraction 0.1, mask_exact False, whole_word
    False, eval_sequences 256 (held out from the end of the shards), eval_batch 64 (held-out
    batches only), order ``"global"`` (or ``"shard-blocks:K"``: blocks of K shards read in turn,
    for buckets larger than the cache); ``cache_dir``/``cache_bytes`` as for :class:`Shards`.
    Named sources are weighed by ``mix`` (``"c4=0.7,wiki=stairs:0:0.3@0.5"``) or by size:
    ``mix_by_size`` (an exponent, a number or a schedule: tokens^ALPHA normalised) with
    ``join=["wiki@0.5"]`` for sources that join late. ``phases`` splits the run: a list of dicts,
    each with ``steps`` (the last may leave it out) and the settings it changes for its stretch
    (``shards`` as ``["NAME=DIR", ...]``, ``mix``, ``mix_by_size``, ``join``, ``schedule`` (over
    the phase), ``seq_len``, ``batch_size``), e.g. ``[{"steps": 900}, {"seq_len": 256}]``.
    Rates per row: ``rate_dist`` (``"point"``, the default: every row at the schedule's rate;
    ``"uniform:LO:HI"``, ``"beta:A:B[:LO:HI]"``, ``"truncnorm:MEAN:STD:LO:HI"``,
    ``"stratified:LO:HI"``; parameters may be ``[schedules]``), ``rate_per_document`` (pack-docs:
    a rate per document) and ``loss_weight`` (``"none"`` or ``"inverse-rate[:EPS]"``); with a
    distribution or a weight, items add ``mask_rate`` (per row), ``loss_weight`` (per token) and
    ``maskable`` (per row), which ``maskrate.hf.MaskrateTrainer`` weighs its loss with.
    The keywords (all but ``shards``, ``eval_batch``, ``rank``, ``world_size``, ``threads``) are
    the keys of the trainer's ``config.toml`` (``DATA_CONFIG_KEYS``), read by the same code."""

    def __init__(
        self,
        shards: Shards | _Path | Sequence[_Path] | dict[str, _Path | Sequence[_Path]],
        *,
        mix: str | None = None,
        mix_by_size: float | str | None = None,
        join: Sequence[str] | None = None,
        schedule: str | Schedule | None = ...,
        total_steps: int | None = ...,
        batch_size: int | None = ...,
        seq_len: int | None = ...,
        layout: str | None = ...,
        min_doc_tokens: int | None = ...,
        seed: int | None = ...,
        mask_token_fraction: float | None = ...,
        random_token_fraction: float | None = ...,
        mask_exact: bool | None = ...,
        whole_word: bool | None = ...,
        rate_dist: str | None = ...,
        rate_per_document: bool | None = ...,
        loss_weight: str | None = ...,
        eval_sequences: int | None = ...,
        eval_batch: int = 64,
        rank: int = 0,
        world_size: int = 1,
        threads: int = 0,
        order: str | None = None,
        cache_dir: _Path | None = None,
        cache_bytes: int | str | None = None,
        phases: Sequence[dict[str, Any]] | None = None,
    ) -> None: ...
    def batch(
        self,
        step: int,
        with_sources: bool = False,
        *,
        out: dict[str, npt.NDArray[np.int64] | npt.NDArray[np.int32]] | None = None,
        ids_dtype: Literal["int64", "int32"] = "int64",
        fields: list[str] | None = None,
    ) -> dict[str, Any]:
        """This rank's rows of step ``step``: ``input_ids``, ``attention_mask``,
        ``token_type_ids``, ``labels`` (-100 where nothing is predicted), ``(rows, seq_len)``
        int64 (``input_ids`` int32 with ``ids_dtype="int32"``); with ``with_sources``, also
        ``source`` (each row's index into ``source_names``). ``out``: caller-owned C-contiguous
        arrays of that shape (any of the four fields; int64, ``input_ids`` int64 or int32) filled
        in place and returned, so a loop allocates nothing (the previous batch is overwritten).
        With ``layout="pack-docs"`` also transformers' packed inputs: ``position_ids``
        (restarting at each document), ``cu_seq_lens_q``/``_k`` (int32) and
        ``max_length_q``/``_k``. ``fields``: keep only these entries."""
    def micro_batch(
        self,
        step: int,
        index: int,
        micro_batch: int,
        *,
        out: dict[str, npt.NDArray[np.int64] | npt.NDArray[np.int32]] | None = None,
        ids_dtype: Literal["int64", "int32"] = "int64",
        fields: list[str] | None = None,
    ) -> dict[str, Any]: ...
    def held_out_batch(self, index: int, source: str | None = None) -> dict[str, npt.NDArray[np.int64]]:
        """Held-out batch ``index`` exactly as the trainer evaluates it (constant 15%, fixed
        seed, ``eval_batch`` sequences from the last ``eval_sequences`` of each source)."""
    def num_held_out_batches(self, source: str | None = None) -> int: ...
    @property
    def source_names(self) -> list[str]: ...
    def mixture_at(self, step: int) -> list[tuple[str, float, int]]:
        """Each source's normalised weight at ``step`` and its rows in that step's batch."""
    def source_epochs(self, step: int) -> list[tuple[str, float]]: ...
    def rate(self, step: int) -> float: ...
    def epoch_at(self, step: int) -> int: ...
    @property
    def total_steps(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def rows(self) -> int: ...
    @property
    def seq_len(self) -> int: ...
    def rows_at(self, step: int) -> int:
        """Rows ``batch(step)`` returns at ``step`` (phases may change the batch size)."""
    def seq_len_at(self, step: int) -> int:
        """Sequence length at ``step`` (phases may change it)."""
    @property
    def phase_shapes(self) -> list[tuple[int, int, int, int]]:
        """The run's phases as ``(first_step, end_step, batch_size, seq_len)``."""
    @property
    def rank(self) -> tuple[int, int]: ...
    @property
    def num_sequences(self) -> int: ...
    @property
    def shards(self) -> Shards | None: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def config(self) -> dict[str, Any]: ...

def preprocess(inputs: list[str], out: str, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``preprocess`` command on ``inputs`` into ``out`` with ``settings`` (its flags by name;
    see ``maskrate.preprocess``)."""
def preprocess_cli(argv: list[str]) -> int: ...
def inspect_batch_cli(argv: list[str]) -> int:
    """The ``maskrate inspect-batch`` command line (``argv`` without the program name)."""
