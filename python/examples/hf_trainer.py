"""Pretrain BertForMaskedLM (or ModernBertForMaskedLM: --arch modernbert) with the HuggingFace
Trainer on maskrate shards, one run per masking-rate schedule (by default the paper's comparison: constant 15% against 30% falling linearly to 15%).

    # the bundled sample (300 C4 documents), a tiny BERT, 100 steps of 16 x 128 per schedule
    # (about a minute each on 2 CPU cores):
    python -m maskrate preprocess data/c4-sample --out sample-shards
    python python/examples/hf_trainer.py --shards sample-shards --out runs/hf

    # ModernBERT on packed documents (position_ids and cu_seq_lens in every item):
    python python/examples/hf_trainer.py --shards sample-shards --out runs/modern \\
        --arch modernbert --layout pack-docs

    # ModernBERT as a masked-diffusion LM: a rate per document drawn one per stratum of the global
    # batch, all [MASK], the loss weighted by 1/rate and divided by the maskable tokens:
    python python/examples/hf_trainer.py --shards sample-shards --out runs/mdlm --arch modernbert \\
        --layout pack-docs --schedule constant:0.5 --rate-dist stratified:0.001:1 --rate-per-document \\
        --mask-token-fraction 1 --loss-weight inverse-rate --loss-norm token

    # the same script on GPUs, one process per GPU:
    torchrun --nproc_per_node 8 python/examples/hf_trainer.py --shards c4-shards --model base \\
        --steps 70000 --batch-size 4096 --per-device-batch 64 --out runs/c4

Each run writes the Trainer's checkpoints and `log_history.json` under OUT/<schedule>; `--resume`
continues every run from its latest checkpoint in O(1) (no batch replay), with the batches the
uninterrupted run would have seen. The held-out loss is measured at a constant 15% on the
sequences maskrate holds out from the end of the shards (`--eval-sequences`), the same masks for
every schedule.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    PreTrainedModel,
    TrainerCallback,
    TrainingArguments,
)

import maskrate
from maskrate.hf import MaskrateTrainer, masked_dataset

# The trainer's presets and per-architecture defaults (`trainer presets --json`): one table.
PRESETS = maskrate.model_presets()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="shard directory made by preprocess")
    p.add_argument("--out", required=True, help="output directory (one subdirectory per schedule)")
    p.add_argument(
        "--schedule",
        action="append",
        help="masking-rate schedule (repeat; default: constant:0.15 and linear:0.3:0.15)",
    )
    p.add_argument("--arch", choices=["bert", "modernbert"], default="bert",
                   help="BertForMaskedLM, or ModernBertForMaskedLM (GeGLU 1.5x hidden, its default "
                        "rotary and local/global attention settings)")
    p.add_argument("--layout", choices=["truncate", "pack", "pack-docs"], default="truncate",
                   help="pack-docs: items add position_ids and cu_seq_lens; attention stays inside "
                        "each document (flash-attention reads cu_seq_lens; for sdpa/eager "
                        "MaskrateTrainer passes explicit block-diagonal masks)")
    p.add_argument("--model", choices=list(PRESETS["bert"]["presets"]), default="tiny",
                   help="the trainer's --model presets (shapes per --arch: `trainer presets`)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps (the schedule's length)")
    p.add_argument("--batch-size", type=int, default=16, help="global batch over all processes")
    p.add_argument("--per-device-batch", type=int, default=16, help="micro-batch per process")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--dropout", type=float,
                   help="default: 0.1 for bert, 0 for modernbert (each one's published configurations, "
                        "as the trainer's --dropout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate-dist", default="point",
                   help="each row's masking rate: point (the schedule's), or a distribution as the "
                        "trainer's --rate-dist, e.g. stratified:0.001:1 (masked diffusion)")
    p.add_argument("--rate-per-document", action="store_true",
                   help="with --layout pack-docs: one rate per document")
    p.add_argument("--mask-token-fraction", type=float, default=0.8,
                   help="share of masked tokens replaced by [MASK] (1 for masked diffusion; the "
                        "rest split 1:1 random / kept, as the trainer's defaults)")
    p.add_argument("--loss-weight", default="none", help="none or inverse-rate[:EPS] (the ELBO weight)")
    p.add_argument("--loss-norm", choices=["masked", "token", "sequence", "batch"], default="masked",
                   help="what the step's loss sum is divided by, as the trainer's --loss-norm")
    p.add_argument("--eval-sequences", type=int, default=64)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--resume", action="store_true", help="continue each run from its last checkpoint")
    p.add_argument("--resume-from", help="continue from this checkpoint directory (one schedule)")
    return p.parse_args(argv)


def model_for(args: argparse.Namespace, tok: dict) -> PreTrainedModel:
    arch = PRESETS[args.arch]
    # The preset's shape in transformers' names, as `trainer presets --json` lists it.
    shape = dict(arch["presets"][args.model], vocab_size=tok["vocab_size"], pad_token_id=tok["pad_id"])
    torch.manual_seed(args.seed)
    dropout = args.dropout if args.dropout is not None else arch["dropout"]
    if args.arch == "modernbert":
        specials = {f"{role}_token_id": tok[f"{name}_id"]
                    for role, name in (("cls", "cls"), ("sep", "sep"), ("bos", "cls"), ("eos", "sep"))}
        drops = {f"{site}_dropout": dropout for site in ("embedding", "attention", "mlp")}
        return ModernBertForMaskedLM(ModernBertConfig(**shape, **specials, **drops, norm_eps=arch["layer_norm_eps"]))
    config = BertConfig(
        **shape,
        layer_norm_eps=arch["layer_norm_eps"],
        max_position_embeddings=max(512, args.seq_len),
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return BertForMaskedLM(config)


def held_out_loss(model: PreTrainedModel, batches: maskrate.MaskedBatches) -> float:
    """Mean MLM loss over the held-out batches (the trainer's: 15%, fixed masks), weighted by
    predicted tokens."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(batches.num_held_out_batches()):
            arrays = batches.held_out_batch(i)
            b = {k: torch.from_numpy(v).to(model.device) if hasattr(v, "dtype") else v
                 for k, v in arrays.items()}
            n = int((b["labels"] != -100).sum())
            total += float(model(**b).loss) * n
            count += n
    model.train()
    return total / max(count, 1)


class RecordThisRun(TrainerCallback):
    """The losses logged by this invocation (a resumed Trainer's log history also holds the
    checkpoint's), and the step it started at."""

    def __init__(self) -> None:
        self.logs: list[dict] = []
        self.start_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.start_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if logs and "loss" in logs:
            self.logs.append({"step": state.global_step, **logs})


def run(args: argparse.Namespace, schedule: str) -> list[dict]:
    shards = maskrate.Shards(args.shards)
    tok = shards.tokenizer
    out = Path(args.out) / schedule.replace(":", "_").replace("@", "_at_")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accum = args.batch_size // (args.per_device_batch * world)
    if accum * args.per_device_batch * world != args.batch_size:
        raise SystemExit("--batch-size must be a multiple of --per-device-batch x processes")
    targs = TrainingArguments(
        output_dir=str(out),
        max_steps=args.steps,
        per_device_train_batch_size=args.per_device_batch,
        gradient_accumulation_steps=accum,
        learning_rate=args.lr,
        warmup_steps=0.06,  # a float below 1: a fraction of max_steps
        weight_decay=0.01,
        lr_scheduler_type="linear",
        logging_steps=1,
        save_steps=args.save_every,
        save_strategy="steps",
        seed=args.seed,
        data_seed=args.seed,
        dataloader_num_workers=args.workers,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if world > 1 and not torch.cuda.is_available() else None,
    )
    # The trainer's 80/10/10 unless --mask-token-fraction says otherwise (1: all [MASK]).
    replacement = {} if args.mask_token_fraction == 0.8 else dict(
        mask_token_fraction=args.mask_token_fraction,
        random_token_fraction=(1 - args.mask_token_fraction) / 2)
    train = masked_dataset(
        shards,
        targs,
        schedule=schedule,
        seq_len=args.seq_len,
        layout=args.layout,
        eval_sequences=args.eval_sequences,
        rate_dist=args.rate_dist,
        rate_per_document=args.rate_per_document,
        loss_weight=args.loss_weight,
        **replacement,
    )
    model = model_for(args, tok)
    this_run = RecordThisRun()
    trainer = MaskrateTrainer(model=model, args=targs, train_dataset=train, callbacks=[this_run],
                              loss_norm=args.loss_norm)
    resume = args.resume_from or (args.resume and any(out.glob("checkpoint-*")))
    trainer.train(resume_from_checkpoint=resume or None)
    history = [r for r in trainer.state.log_history if "loss" in r]
    if trainer.is_world_process_zero():
        # Held out: the last --eval-sequences sequences, never in a training batch.
        heldout = held_out_loss(model, train.batches()) if args.eval_sequences else None
        summary = {
            "schedule": schedule,
            "steps": trainer.state.global_step,
            "started_at_step": this_run.start_step,
            "eval_loss": heldout,
        }
        (out / "log_history.json").write_text(json.dumps(history, indent=1))
        (out / "this_run_log.json").write_text(json.dumps(this_run.logs, indent=1))
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary))
    return history


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for schedule in args.schedule or ["constant:0.15", "linear:0.3:0.15"]:
        run(args, schedule)


if __name__ == "__main__":
    main()
