"""PyTorch: :class:`MaskedDataset`, maskrate's masked batches as a ``torch.utils.data.IterableDataset``.

The dataset yields the (micro-)batches of consecutive optimizer steps, built by the same Rust code
as the trainer's: the masking rate of step ``t`` is the schedule's value at ``t`` whatever the
number of workers or the prefetch depth, and ``state_dict()``/``load_state_dict()`` resume in O(1)
at the same position, also at another world size. Use it with ``DataLoader(dataset,
batch_size=None)``: items are already batches. torch is imported here only, so ``import maskrate``
stays numpy-only.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import torch
import torch.utils.data

from . import MaskedBatches, Shards

__all__ = ["MaskedDataset"]

STATE_VERSION = 1


def _distributed_rank() -> tuple[int, int]:
    """(rank, world size) from ``torch.distributed`` when it is initialised, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class MaskedDataset(torch.utils.data.IterableDataset):
    """The masked (micro-)batches of a run over maskrate shards.

    Keywords are :class:`maskrate.MaskedBatches`' (the trainer's flags: ``schedule``,
    ``total_steps``, ``batch_size`` = the global batch over all ranks, ``seq_len``, ``layout``,
    ``seed``, ``mask_exact``, ``whole_word``, ...). ``micro_batch`` splits this rank's rows of each
    step into gradient-accumulation micro-batches (``None``: one item per step). ``rank`` and
    ``world_size`` default to ``torch.distributed``'s when it is initialised. Items are dicts of
    int64 tensors ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels`` (-100 where
    nothing is predicted), ready for ``BertForMaskedLM(**item)`` and
    ``ModernBertForMaskedLM(**item)``. With ``layout="pack-docs"`` items also hold transformers'
    packed inputs, as ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)`` names them:
    ``position_ids`` (restarting at each document), ``cu_seq_lens_q``/``_k`` (int32) and
    ``max_length_q``/``_k`` (ints); a model whose attention takes them (flash-attention's varlen
    path) keeps attention inside each document; sdpa and eager attention ignore them, and
    :func:`maskrate.hf.document_attention_inputs` turns an item into their explicit
    block-diagonal masks (``MaskrateTrainer`` does it for them). ``fields`` keeps only the named entries (e.g. leave out ``token_type_ids`` for
    models without token types).

    With ``num_workers=W``, worker ``w`` builds items ``w, w+W, ...``, which the DataLoader
    returns in order: the sequence is the same for any ``W``. The dataset is a resumable stream:
    iterating it in this process advances it (``state_dict()`` is the position after the last
    item it yielded), and :meth:`set_step` or :meth:`load_state_dict` moves it in O(1).
    """

    def __init__(
        self,
        shards: Shards | str | os.PathLike[str] | list[str] | dict[str, Any],
        *,
        micro_batch: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        start_step: int = 0,
        threads: int | None = None,
        fields: list[str] | tuple[str, ...] | None = None,
        **batch_kwargs: Any,
    ) -> None:
        super().__init__()
        for reserved in ("rank", "world_size", "threads"):
            batch_kwargs.pop(reserved, None)
        # A Shards, a path (opened once here), or named sources {name: path(s)} for a mixture.
        self._shards = shards if isinstance(shards, (Shards, dict)) else Shards(shards)
        self._kwargs = batch_kwargs
        self.micro_batch = micro_batch
        self._rank = rank
        self._world_size = world_size
        self._threads = threads
        self._fields = list(fields) if fields is not None else None
        # Checks every keyword now, in the caller's process, and gives the run's identity.
        self._probe = MaskedBatches(self._shards, **batch_kwargs)
        # The next item this copy yields: (step, micro-batch), and the worker slot it belongs to.
        self._next_step = int(start_step)
        self._next_micro = 0
        self._worker_slot: tuple[int, int] | None = None
        # The probe is this process's builder too while the rank is (0, 1) and threads are all.
        self._batches: tuple[int, tuple[int, int], MaskedBatches] | None = (
            (os.getpid(), (0, 1), self._probe) if not threads else None
        )
        self._check_step(self._next_step)
        if self._fields is not None:
            # Checks the names now (one row of step 0): unknown ones, or packed inputs without
            # layout="pack-docs", fail here rather than in a worker.
            self._probe.micro_batch(0, 0, 1, fields=self._fields)

    # -- the run ---------------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        """Length of the run."""
        return self._probe.total_steps

    @property
    def batch_size(self) -> int:
        """Sequences per optimizer step over all ranks."""
        return self._probe.batch_size

    def rank_and_world_size(self) -> tuple[int, int]:
        """This process's (rank, world size): the explicit ones, else ``torch.distributed``'s."""
        rank, world = _distributed_rank()
        return (
            rank if self._rank is None else self._rank,
            world if self._world_size is None else self._world_size,
        )

    def micro_batches_per_step(self) -> int:
        """Items per optimizer step on this rank (gradient-accumulation steps)."""
        _, world = self.rank_and_world_size()
        rows = self.batch_size // world
        if self.micro_batch is None:
            return 1
        batch_sizes = {shape[2] for shape in self._probe.phase_shapes}
        if len(batch_sizes) > 1:
            raise ValueError(
                f"phases change the batch size ({sorted(batch_sizes)}): with micro_batch every "
                "step must have the same number of micro-batches (a trainer's gradient "
                "accumulation is fixed); use micro_batch=None (one item per step)"
            )
        if self.micro_batch <= 0 or rows % self.micro_batch:
            raise ValueError(
                f"micro_batch {self.micro_batch} does not divide this rank's {rows} rows "
                f"(batch_size {self.batch_size} over {world} ranks)"
            )
        return rows // self.micro_batch

    def batches(self) -> MaskedBatches:
        """The :class:`maskrate.MaskedBatches` behind this dataset (this process's rank), e.g. for
        its held-out batches."""
        return self._masked_batches()

    def set_step(self, step: int) -> None:
        """Continues from optimizer step ``step`` (its first micro-batch), in O(1)."""
        self._check_step(step)
        self._next_step, self._next_micro, self._worker_slot = int(step), 0, None

    def _check_step(self, step: int) -> None:
        if not 0 <= step <= self.total_steps:
            raise ValueError(f"step {step} is outside a {self.total_steps}-step run")

    def _masked_batches(self) -> MaskedBatches:
        """This process's builder (rebuilt in a worker process, or when the world changes)."""
        rank, world = self.rank_and_world_size()
        key = (os.getpid(), (rank, world))
        if self._batches is None or self._batches[:2] != key:
            info = torch.utils.data.get_worker_info()
            threads = self._threads if self._threads is not None else (1 if info else 0)
            batches = MaskedBatches(
                self._shards, rank=rank, world_size=world, threads=threads, **self._kwargs
            )
            self._batches = (key[0], key[1], batches)
        return self._batches[2]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_batches"] = None  # rebuilt in the receiving process
        return state

    # -- iteration -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        batches = self._masked_batches()
        per_step = self.micro_batches_per_step()
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        position = self._next_step * per_step + self._next_micro
        if self._worker_slot != (worker, workers):
            # A global position (set by the caller): this worker's first item is `worker` after it.
            position += worker
        end = self.total_steps * per_step
        while position < end:
            step, micro = divmod(position, per_step)
            if self.micro_batch is None:
                arrays = batches.batch(step, fields=self._fields)
            else:
                arrays = batches.micro_batch(step, micro, self.micro_batch, fields=self._fields)
            position += workers
            self._next_step, self._next_micro = divmod(position, per_step)
            self._worker_slot = (worker, workers) if workers > 1 else None
            yield {
                name: torch.from_numpy(a) if hasattr(a, "dtype") else a
                for name, a in arrays.items()
            }

    # -- state (torchdata's StatefulDataLoader convention) ---------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where this copy continues, with the run's identity (checked on load)."""
        _, world = self.rank_and_world_size()
        return {
            "version": STATE_VERSION,
            "next_step": self._next_step,
            "next_micro": self._next_micro,
            "micro_batch": self.micro_batch,
            "world_size": world,
            "worker_slot": self._worker_slot,
            "seed": self._probe.config["seed"],
            "schedule": self._probe.config["schedule"],
            "total_steps": self.total_steps,
            "batch_size": self.batch_size,
            "fingerprint": self._probe.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues where ``state`` left off. The seed, schedule, run length, global batch and
        shard contents must match; the world size may differ when the state is at a step
        boundary (the same global batches continue, split over the new ranks)."""
        mine = self.state_dict()
        for key in ("seed", "schedule", "total_steps", "batch_size", "fingerprint"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"state_dict is for another run: {key} {state.get(key)!r}, this dataset's "
                    f"{mine[key]!r}"
                )
        step, micro = int(state["next_step"]), int(state["next_micro"])
        same_split = state.get("world_size") == mine["world_size"] and state.get(
            "micro_batch"
        ) == self.micro_batch
        if micro and not same_split:
            raise ValueError(
                f"state_dict stops inside step {step} (micro-batch {micro}); it can only resume "
                "with the same world size and micro_batch"
            )
        self._check_step(step)
        self._next_step, self._next_micro = step, micro
        slot = state.get("worker_slot")
        self._worker_slot = tuple(slot) if slot is not None and same_split else None

    def __repr__(self) -> str:
        rank, world = self.rank_and_world_size()
        return (
            f"MaskedDataset({self._probe!r}, micro_batch={self.micro_batch}, "
            f"rank={rank}/{world}, next_step={self._next_step})"
        )
