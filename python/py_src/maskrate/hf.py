"""HuggingFace ``Trainer`` integration: pretrain ``BertForMaskedLM`` on maskrate shards with a
masking-rate schedule, in place of ``DataCollatorForLanguageModeling`` and a dataset.

    from maskrate.hf import MaskrateTrainer, masked_dataset
    train = masked_dataset("shards/", args, schedule="linear:0.3:0.15")
    trainer = MaskrateTrainer(model=model, args=args, train_dataset=train)
    trainer.train()                                   # or train(resume_from_checkpoint=True)

What it changes in the Trainer, and why:

- The batches come from :class:`maskrate.torch.MaskedDataset`: step ``t``'s masks at the
  schedule's rate for ``t``, the same batches as maskrate's own trainer.
- ``resume_from_checkpoint`` continues at the checkpoint's step in O(1): a callback moves the
  dataset to ``state.global_step`` before the first batch, and ``ignore_data_skip`` is set so the
  Trainer does not replay (``skip_first_batches``) what it already trained on.
- The loss is the mean over every masked token of the optimizer step (all micro-batches, all
  ranks): ``BertForMaskedLM`` averages over its own micro-batch and ignores the Trainer's
  ``num_items_in_batch``, so with gradient accumulation or several processes a micro-batch with
  fewer masked tokens would weigh as much as one with more (and the Trainer, which scales the loss
  by the number of processes for models that take loss kwargs, would log it multiplied by them).
- With a rate distribution (``rate_dist=``) or a loss weight (``loss_weight="inverse-rate"``),
  items carry ``mask_rate``, ``loss_weight`` and ``maskable``; the loss weighs each masked token
  by its ``loss_weight`` and divides the step's sum as ``loss_norm`` says (``"masked"``: the
  step's masked tokens; ``"token"``: its maskable tokens, LLaDA's b x l; ``"sequence"``: its rows,
  each row's sum over its maskable tokens; ``"batch"``: its rows), maskrate's trainer's
  ``--loss-norm`` to the letter. The model never sees these three entries.
- With ``layout="pack-docs"``, attention stays inside each document whatever the model's
  attention implementation: a flash-attention model (``attn_implementation="flash_attention_2"``
  and the like) gets the items as they are and reads ``cu_seq_lens``; any other (sdpa, eager,
  which ignore ``cu_seq_lens`` and ``position_ids`` when building an encoder's mask) gets
  :func:`document_attention_inputs`' explicit block-diagonal masks instead.
- The train DataLoader uses ``batch_size=None`` (items are batches) and is not passed through
  ``accelerator.prepare``: the dataset picks this rank's rows itself, so batches must be neither
  dispatched from rank 0 nor re-sharded. Under ``torchrun`` each process reads its own rows of the
  same global batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.data
from transformers import Trainer, TrainerCallback, TrainingArguments

from ._maskrate import LrSchedule
from .torch import MaskedDataset

__all__ = [
    "LOSS_NORMS",
    "MaskrateTrainer",
    "StepSyncCallback",
    "document_attention_inputs",
    "lr_schedule_arguments",
    "masked_dataset",
]

#: What ``loss_norm`` divides the step's weighted sum by (maskrate's ``--loss-norm``).
LOSS_NORMS = ("masked", "token", "sequence", "batch")

#: The entries of an item that weigh the loss (with ``rate_dist=`` or ``loss_weight=``); never
#: passed to the model.
RATE_KEYS = ("mask_rate", "loss_weight", "maskable")


def loss_denominator(batch: dict[str, Any], loss_norm: str) -> torch.Tensor:
    """One micro-batch's share of the step's denominator under ``loss_norm``."""
    labels = batch["labels"]
    if loss_norm == "masked":
        return labels.ne(-100).sum()
    if loss_norm == "token":
        if "maskable" not in batch:
            raise ValueError(
                'loss_norm="token" divides by the maskable tokens, which items carry with a '
                'rate_dist other than "point" or a loss_weight: build the dataset with one'
            )
        return torch.as_tensor(batch["maskable"]).sum()
    return torch.tensor(labels.shape[0])


def weighted_loss_sum(
    logits: torch.Tensor, labels: torch.Tensor, batch: dict[str, Any], loss_norm: str
) -> torch.Tensor:
    """The micro-batch's sum of ``loss_weight`` x cross-entropy over its masked tokens (each row's
    divided by its maskable tokens under ``"sequence"``), before the step's denominator."""
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100,
        reduction="none",
    ).reshape(labels.shape)
    if "loss_weight" in batch:
        per_token = per_token * torch.as_tensor(batch["loss_weight"], device=per_token.device)
    if loss_norm == "sequence":
        if "maskable" not in batch:
            raise ValueError(
                'loss_norm="sequence" divides each row by its maskable tokens, which items carry '
                'with a rate_dist other than "point" or a loss_weight: build the dataset with one'
            )
        maskable = torch.as_tensor(batch["maskable"], device=per_token.device)
        per_token = per_token / maskable.clamp(min=1)[:, None].to(per_token.dtype)
    return per_token.sum()


#: The packed-path entries of a ``layout="pack-docs"`` item that only flash-attention reads.
VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def reads_cu_seq_lens(config: Any) -> bool:
    """Whether the model's attention implementation keeps packed documents apart by itself
    (transformers' flash-attention varlen path: ``flash_attention_2``/``_3`` and kernels)."""
    return "flash" in str(getattr(config, "_attn_implementation", "") or "")


def document_attention_inputs(inputs: dict[str, Any], config: Any, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """A ``layout="pack-docs"`` item for a model whose attention does not read ``cu_seq_lens``
    (sdpa, eager): the flash-attention entries dropped, ``attention_mask`` replaced by explicit
    additive masks ``[B, 1, L, L]`` (0 where a query may see a key, the dtype's minimum
    elsewhere) that keep every token's attention inside its document and off padding; for
    ModernBERT one per layer type (``full_attention``, and ``sliding_attention`` also limited to
    the local window), the form ``ModernBertModel`` takes. Documents are read from
    ``position_ids`` (each restarts at 0). Items of other layouts, or a flash-attention model's,
    come back unchanged::

        out = model(**document_attention_inputs(item, model.config))
    """
    if "cu_seq_lens_q" not in inputs or reads_cu_seq_lens(config):
        return inputs
    if "position_ids" not in inputs or "attention_mask" not in inputs:
        raise ValueError("a pack-docs item needs position_ids and attention_mask for document masks "
                         "(keep them in fields=)")
    out = {k: v for k, v in inputs.items() if k not in VARLEN_KEYS}
    positions, keys = inputs["position_ids"], inputs["attention_mask"].bool()
    documents = (positions == 0).cumsum(-1)
    allowed = (documents[:, :, None] == documents[:, None, :]) & keys[:, None, :]
    negative = torch.finfo(dtype).min

    def additive(mask: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros((), dtype=dtype, device=mask.device)
        return torch.where(mask, zero, torch.full((), negative, dtype=dtype, device=mask.device))[:, None]

    if getattr(config, "model_type", None) == "modernbert":
        index = torch.arange(positions.shape[-1], device=positions.device)
        near = (index[:, None] - index[None, :]).abs() <= config.local_attention // 2
        out["attention_mask"] = {"full_attention": additive(allowed),
                                 "sliding_attention": additive(allowed & near)}
    else:
        out["attention_mask"] = additive(allowed)
    return out


def lr_schedule_arguments(
    spec: str, total_steps: int, warmup: float = 0.06, final_lr_ratio: float = 0.02
) -> dict[str, Any]:
    """``TrainingArguments`` keywords for the trainer's ``--lr-schedule SPEC`` (``linear`` or
    ``wsd:DECAY[:SHAPE]``, SHAPE ``linear``, ``cosine`` or ``1-sqrt``) with ``--warmup`` and
    ``--final-lr-ratio``, through transformers' own schedulers (``get_wsd_schedule`` for wsd:
    warm-up, the peak held, then the last DECAY of the run decaying to ``final_lr_ratio``)::

        args = TrainingArguments(..., max_steps=1000, **lr_schedule_arguments("wsd:0.2:1-sqrt", 1000))

    Same phases and curves as the trainer; transformers' warm-up starts at 0 where the trainer's
    first step already takes ``peak / warmup_steps``."""
    s = LrSchedule(spec, total_steps, warmup=warmup, final_lr_ratio=final_lr_ratio)
    if s.kind == "linear" and final_lr_ratio == 0:
        return {"lr_scheduler_type": "linear", "warmup_steps": s.warmup_steps}
    return {
        "lr_scheduler_type": "warmup_stable_decay",
        "warmup_steps": s.warmup_steps,
        "lr_scheduler_kwargs": {
            "num_decay_steps": s.decay_steps,
            "num_stable_steps": max(total_steps - s.decay_steps - s.warmup_steps, 0),
            "decay_type": s.decay_shape,
            "min_lr_ratio": final_lr_ratio,
        },
    }


def masked_dataset(shards: Any, args: TrainingArguments, **batch_kwargs: Any) -> MaskedDataset:
    """A :class:`MaskedDataset` sized from ``args``: ``micro_batch`` =
    ``per_device_train_batch_size``, the global ``batch_size`` = that × gradient accumulation ×
    world size, ``total_steps`` = ``max_steps``, ``seed`` = ``args.seed``; keywords override."""
    world = max(args.world_size, 1)
    batch_kwargs.setdefault(
        "batch_size",
        args.per_device_train_batch_size * args.gradient_accumulation_steps * world,
    )
    if args.max_steps <= 0 and "total_steps" not in batch_kwargs:
        raise ValueError("set TrainingArguments.max_steps (the schedule's length) or total_steps=")
    batch_kwargs.setdefault("total_steps", args.max_steps)
    batch_kwargs.setdefault("seed", args.seed)
    return MaskedDataset(shards, micro_batch=args.per_device_train_batch_size, **batch_kwargs)


class StepSyncCallback(TrainerCallback):
    """Moves the dataset to the Trainer's step when training begins (after a checkpoint's state
    is loaded, before the first batch is drawn)."""

    def __init__(self, dataset: MaskedDataset) -> None:
        self.dataset = dataset

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, D102
        self.dataset.set_step(state.global_step)


class MaskrateTrainer(Trainer):
    """A ``Trainer`` whose training data is a :class:`MaskedDataset` (see the module docs)."""

    def __init__(
        self, *args: Any, train_dataset: MaskedDataset, loss_norm: str = "masked", **kwargs: Any
    ) -> None:
        if not isinstance(train_dataset, MaskedDataset):
            raise TypeError("MaskrateTrainer trains on a maskrate.torch.MaskedDataset")
        if loss_norm not in LOSS_NORMS:
            raise ValueError(f"loss_norm {loss_norm!r}: one of {', '.join(LOSS_NORMS)}")
        self.loss_norm = loss_norm
        super().__init__(*args, train_dataset=train_dataset, **kwargs)
        self.args.ignore_data_skip = True
        self.add_callback(StepSyncCallback(train_dataset))
        self._check_sizes(train_dataset)

    def _check_sizes(self, ds: MaskedDataset) -> None:
        a = self.args
        world = max(a.world_size, 1)
        expected = a.per_device_train_batch_size * a.gradient_accumulation_steps * world
        if ds.batch_size != expected or ds.micro_batch != a.per_device_train_batch_size:
            raise ValueError(
                f"the dataset's global batch {ds.batch_size} (micro-batch {ds.micro_batch}) "
                f"does not match per_device_train_batch_size {a.per_device_train_batch_size} x "
                f"gradient_accumulation_steps {a.gradient_accumulation_steps} x {world} "
                "processes: build it with maskrate.hf.masked_dataset(shards, args, ...)"
            )
        if a.max_steps <= 0 or a.max_steps > ds.total_steps:
            raise ValueError(
                f"max_steps {a.max_steps} must be in 1..{ds.total_steps} (the dataset's "
                "total_steps, the schedule's length)"
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        """Masked-token cross-entropy summed over this micro-batch and divided by the masked
        tokens of the whole optimizer step (``num_items_in_batch``: every micro-batch of every
        rank), times the number of processes, whose gradients DDP averages: the gradient of the
        mean over all of the step's masked tokens, as one process with the whole batch has."""
        config = getattr(self.accelerator.unwrap_model(model), "config", None)
        dtype = next(model.parameters()).dtype
        inputs = document_attention_inputs(dict(inputs), config, dtype)
        weighing = {k: inputs.pop(k) for k in RATE_KEYS if k in inputs}
        if num_items_in_batch is None:
            if weighing or self.loss_norm != "masked":
                raise ValueError(
                    "a weighted or renormalised loss needs the Trainer's num_items_in_batch "
                    "(a model that takes loss kwargs, or a compute_loss_func)"
                )
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        weighing["labels"] = labels
        loss = weighted_loss_sum(logits, labels, weighing, self.loss_norm) / num_items_in_batch
        if self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> Any:
        """The step's denominator under ``loss_norm`` (the Trainer's own count of masked tokens
        for ``"masked"``), summed over processes as the Trainer sums its count."""
        counted = super()._get_num_items_in_batch(batch_samples, device)
        if self.loss_norm == "masked" or counted is None:
            return counted
        total = sum(loss_denominator(b, self.loss_norm) for b in batch_samples)
        total = torch.as_tensor(total, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total).sum()
        return total

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        """Items are batches (``batch_size=None``); no ``accelerator.prepare``: see module docs."""
        a = self.args
        workers = a.dataloader_num_workers
        return torch.utils.data.DataLoader(
            self.train_dataset,
            batch_size=None,
            num_workers=workers,
            pin_memory=a.dataloader_pin_memory,
            prefetch_factor=a.dataloader_prefetch_factor if workers > 0 else None,
            persistent_workers=False,
        )
