#!/usr/bin/env python3
"""Step-for-step equivalence of maskrate's trainer with HuggingFace transformers (BERT, or ModernBERT
for a run with --arch modernbert: ModernBertForMaskedLM with the config `trainer export` writes).

Both sides start from maskrate's step-0 parameters and see maskrate's batches (dumped by the
`reference_dump` example with the same trainer flags). transformers' `BertForMaskedLM` is trained
with `torch.optim.AdamW`, `clip_grad_norm_` and maskrate's learning rate of every step; gradients are clipped like `clip_grad_norm_` with the norm
summed in f64 (as maskrate does).

    # 1. the run to compare, and what it starts from (same flags)
    FLAGS="--shards S --model tiny --steps 50 --batch-size 32 --micro-batch 32 --dropout 0 \\
           --eval-sequences 256 --eval-every 50 --seed 0"
    target/release/trainer $FLAGS --out runs/eq --quiet
    cargo run --release -p trainer --example reference_dump -- $FLAGS --dump ref/ --dump-steps 50
    # 2. step by step: loss and gradient norm of every step, parameters and eval loss at the end
    python3 scripts/hf_equivalence.py steps --dump ref/ --run runs/eq
    # 3. a learning curve with dropout on (dump of a --dropout 0.1 run): final held-out loss
    python3 scripts/hf_equivalence.py train --dump ref/ --seed 0 [--init hf] [--masking hf]

`--init hf` starts from transformers' own initialisation (seeded by --seed) instead of maskrate's
parameters; `--masking hf` re-masks each sequence with DataCollatorForLanguageModeling's rule
(15% Bernoulli, 80/10/10, torch RNG) instead of maskrate's masks. Needs torch, transformers and
safetensors (`pip install torch transformers safetensors`).
"""
import argparse
import json
import math
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("mode", choices=["steps", "train", "eval"])
p.add_argument("--dump", required=True, help="directory written by the reference_dump example")
p.add_argument("--run", help="maskrate run directory to compare against (steps mode)")
p.add_argument("--seed", type=int, default=0, help="torch seed (dropout, --init hf, --masking hf)")
p.add_argument("--init", choices=["maskrate", "hf"], default="maskrate")
p.add_argument("--masking", choices=["maskrate", "hf"], default="maskrate")
p.add_argument("--mask-specials", action="store_true",
               help="with --masking hf: let [CLS]/[SEP] be masked too (a collator without the special-tokens "
                    "mask), in training and in a second, re-masked evaluation")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--warmup-from-zero", action="store_true",
               help="learning rate of step t = maskrate's of step t-1 (0 at step 0), as transformers' and "
                    "Composer's linear warm-up")
p.add_argument("--eval-mask-seeds", type=int, nargs="*", default=[],
               help="also score the held-out documents under these other draws of the 15%% mask (collator rule)")
p.add_argument("--checkpoint", help="eval mode: a model.safetensors (e.g. a run's checkpoint) to score")
p.add_argument("--json", help="write the results here")
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)

cfg_all = json.load(open(os.path.join(args.dump, "config.json")))
m, t = cfg_all["model"], cfg_all["train"]
lrs = cfg_all["lr"]
if args.warmup_from_zero:
    lrs = [0.0] + lrs[:-1]
dropout = 0.0 if args.mode == "steps" else m["dropout"]
if args.mode == "steps" and m["dropout"] != 0:
    sys.exit("steps mode compares runs without dropout: dump and train with --dropout 0")
if m.get("arch", "bert") == "modernbert":
    # transformers' ModernBertForMaskedLM with the config `trainer export` writes.
    hf_json = dict(cfg_all["hf_config"])
    for key in ("embedding_dropout", "attention_dropout", "mlp_dropout"):
        hf_json[key] = dropout
    hf_json.pop("architectures", None)
    hf_json.pop("model_type", None)
    hf_cfg = ModernBertConfig(**hf_json)
    MODEL_CLASS = ModernBertForMaskedLM
else:
    hf_cfg = None
    MODEL_CLASS = BertForMaskedLM
hf_cfg = hf_cfg or BertConfig(
    vocab_size=m["vocab_size"],
    hidden_size=m["hidden_size"],
    num_hidden_layers=m["num_hidden_layers"],
    num_attention_heads=m["num_attention_heads"],
    intermediate_size=m["intermediate_size"],
    hidden_act="gelu",
    hidden_dropout_prob=dropout,
    attention_probs_dropout_prob=dropout,
    max_position_embeddings=m["max_position_embeddings"],
    type_vocab_size=m["type_vocab_size"],
    initializer_range=m["initializer_range"],
    layer_norm_eps=m["layer_norm_eps"],
    pad_token_id=cfg_all["pad_token_id"],
    tie_word_embeddings=True,
)
hf_cfg._attn_implementation = "eager"
model = MODEL_CLASS(hf_cfg)
if args.init == "maskrate":
    init = load_file(os.path.join(args.dump, "init.safetensors"))
    missing, unexpected = model.load_state_dict(init, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids") and "token_type_ids" not in k
               and not k.endswith("inv_freq")]
    if missing or unexpected:
        sys.exit(f"parameter names differ: missing {missing}, unexpected {unexpected}")
model.train()

named = [(n, q) for n, q in model.named_parameters()]


def decays(name):
    """maskrate's optim::decays: no decay on biases and norms (BERT's LayerNorm, ModernBERT's *norm)."""
    return not (name.endswith(".bias") or "LayerNorm" in name or "norm." in name)


# maskrate's decoupled decay is p *= 1 - wd * lr_t / peak; torch's AdamW does p *= 1 - lr_t * wd',
# so wd' = wd / peak gives the same update.
wd = t["weight_decay"] / t["lr"]
opt = torch.optim.AdamW(
    [
        {"params": [q for n, q in named if decays(n)], "weight_decay": wd},
        {"params": [q for n, q in named if not decays(n)], "weight_decay": 0.0},
    ],
    lr=t["lr"],
    betas=(t["beta1"], t["beta2"]),
    eps=t["eps"],
)

batches = load_file(os.path.join(args.dump, "batches.safetensors"))
evals = load_file(os.path.join(args.dump, "eval.safetensors"))
steps = batches["input_ids"].shape[0]
if args.mode == "eval":
    pass
elif args.mode == "train" and steps < t["steps"]:
    sys.exit(f"the dump holds {steps} of the run's {t['steps']} steps: dump with --dump-steps {t['steps']}")
micro = t["micro_batch"]

# Special ids (never masked by either rule): [CLS], [SEP], [PAD] and the other reserved tokens that
# never occur as labels; taken from the tokenizer copy maskrate stores with the run when present.
MASK_ID = 103


def hf_mask(ids_orig, attn, gen, specials=None):
    """DataCollatorForLanguageModeling's torch_mask_tokens on one batch (special tokens: CLS, SEP, PAD)."""
    labels = ids_orig.clone()
    prob = torch.full(labels.shape, 0.15)
    specials = args.mask_specials if specials is None else specials
    special = (attn == 0) if specials else (ids_orig == 101) | (ids_orig == 102) | (attn == 0)
    prob.masked_fill_(special, 0.0)
    masked = torch.bernoulli(prob, generator=gen).bool()
    labels[~masked] = -100
    ids = ids_orig.clone()
    replaced = torch.bernoulli(torch.full(labels.shape, 0.8), generator=gen).bool() & masked
    ids[replaced] = MASK_ID
    rnd = torch.bernoulli(torch.full(labels.shape, 0.5), generator=gen).bool() & masked & ~replaced
    ids[rnd] = torch.randint(hf_cfg.vocab_size, labels.shape, generator=gen)[rnd]
    return ids, labels


def inputs_of(b, i, sl=slice(None)):
    """Model inputs of batch `i` (rows `sl`) of dump `b`. pack-docs dumps carry position ids
    (restarting per document) and segment ids: transformers gets the position ids and, as the
    CPU stand-in for its flash-attention varlen path (cu_seq_lens needs a GPU), explicit
    block-diagonal additive masks, for ModernBERT one per layer type (the sliding one also limited
    to the local window)."""
    if "segment_ids" not in b:
        return {"attention_mask": b["attention_mask"][i][sl]}
    seg, pos = b["segment_ids"][i][sl], b["position_ids"][i][sl]
    same = seg[:, :, None] == seg[:, None, :]
    neg = torch.finfo(torch.float32).min

    def additive(allowed):
        return torch.where(allowed, 0.0, neg)[:, None, :, :]

    if MODEL_CLASS is not ModernBertForMaskedLM:
        return {"position_ids": pos, "attention_mask": additive(same)}
    idx = torch.arange(seg.shape[1])
    near = (idx[:, None] - idx[None, :]).abs() <= hf_cfg.local_attention // 2
    return {"position_ids": pos,
            "attention_mask": {"full_attention": additive(same), "sliding_attention": additive(same & near)}}


gen = torch.Generator().manual_seed(args.seed)
records = []
if args.mode == "eval":
    if not args.checkpoint:
        sys.exit("eval mode needs --checkpoint model.safetensors")
    model.load_state_dict(load_file(args.checkpoint), strict=False)
    steps = 0
for step in range(steps):
    ids_all, attn_all, labels_all = (batches[k][step] for k in ("input_ids", "attention_mask", "labels"))
    if args.masking == "hf":
        original = torch.where(labels_all >= 0, labels_all, ids_all)
        ids_all, labels_all = hf_mask(original, attn_all, gen)
    for g in opt.param_groups:
        g["lr"] = lrs[step]
    accum = ids_all.shape[0] // micro
    loss_sum = 0.0
    # maskrate's normalisation (shared::sampler::loss, --loss-norm masked): every micro-batch's
    # summed cross-entropy divided by the predicted tokens of the whole step.
    predicted = int((labels_all >= 0).sum())
    for k in range(accum):
        sl = slice(k * micro, (k + 1) * micro)
        logits = model(input_ids=ids_all[sl], **inputs_of(batches, step, sl)).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels_all[sl].reshape(-1),
            ignore_index=-100, reduction="sum") / predicted
        loss.backward()
        loss_sum += loss.item()
    if step == 0 and os.path.exists(os.path.join(args.dump, "grads0.safetensors")) and args.init == "maskrate" \
            and args.masking == "maskrate" and dropout == 0:
        theirs = load_file(os.path.join(args.dump, "grads0.safetensors"))
        diffs = []
        for n, q in named:
            g = q.grad if q.grad is not None else torch.zeros_like(q)
            o = theirs.get(n, torch.zeros_like(q))
            diffs.append(((o - g).norm().item(), g.norm().item(), o.norm().item(), n))
        diffs.sort(reverse=True)
        print("step 0 gradients, largest differences (L2 of difference, transformers' L2, maskrate's L2):")
        for d, gn, on, n in diffs[:6]:
            print(f"  {n}: {d:.3e} ({gn:.3e}, {on:.3e})")
    # Clipping as clip_grad_norm_ does (scale = max / (norm + 1e-6) when below 1), with the norm
    # summed in f64 like maskrate's: torch's own f32 norm of this sparse embedding gradient is off by
    # up to ~3e-4 relative, which alone moves the losses apart by ~1e-5 within 50 steps.
    norm64 = math.sqrt(sum((q.grad.double() ** 2).sum().item() for _, q in named if q.grad is not None))
    if t["clip"] > 0 and norm64 > t["clip"]:
        scale = t["clip"] / (norm64 + 1e-6)
        for _, q in named:
            if q.grad is not None:
                q.grad.mul_(scale)
    opt.step()
    opt.zero_grad(set_to_none=True)
    records.append({"step": step, "loss": loss_sum, "grad_norm": norm64})


@torch.no_grad()
def eval_loss(mdl, batches=None):
    """Held-out loss as maskrate's Evaluator computes it: weighted by predicted tokens."""
    batches = evals if batches is None else batches
    mdl.eval()
    total, count = 0.0, 0
    for i in range(batches["input_ids"].shape[0]):
        labels = batches["labels"][i]
        logits = mdl(input_ids=batches["input_ids"][i], **inputs_of(batches, i)).logits
        sel = labels >= 0
        total += torch.nn.functional.cross_entropy(logits[sel].double(), labels[sel], reduction="sum").item()
        count += int(sel.sum())
    mdl.train()
    return total / count


def remasked(seed, specials=False):
    """The held-out documents under another draw of the collator's mask (fixed generator)."""
    eval_gen = torch.Generator().manual_seed(seed)
    out = {k: v.clone() for k, v in evals.items()}
    for i in range(out["input_ids"].shape[0]):
        original = torch.where(out["labels"][i] >= 0, out["labels"][i], out["input_ids"][i])
        out["input_ids"][i], out["labels"][i] = hf_mask(original, out["attention_mask"][i], eval_gen, specials)
    return out


hf_eval = eval_loss(model)
result = {"mode": args.mode, "init": args.init, "masking": args.masking, "seed": args.seed,
          "steps": steps, "hf_eval_loss": hf_eval,
          "eval_loss_other_masks": {s: eval_loss(model, remasked(s)) for s in args.eval_mask_seeds}}
if records:
    # The training curve: mean loss of each window of 50 steps.
    result["train_loss_per_50_steps"] = [
        sum(r["loss"] for r in records[i:i + 50]) / len(records[i:i + 50]) for i in range(0, len(records), 50)]
if args.mask_specials:
    # The held-out documents masked by the same rule as training, [CLS]/[SEP] included.
    result["eval_loss_specials_masked"] = eval_loss(model, remasked(1234, True))

if args.mode in ("train", "eval"):
    print(json.dumps(result))
else:
    if not args.run:
        sys.exit("steps mode needs --run RUN_DIR (the maskrate run made with the same flags)")
    ours = {}
    our_eval = None
    for line in open(os.path.join(args.run, "metrics.jsonl")):
        r = json.loads(line)
        if r["kind"] == "eval" and r["step"] == steps:
            our_eval = r["loss"]
        elif r["kind"] == "train":
            ours[r["step"]] = r
    print("| step | lr | maskrate loss | transformers loss | rel. diff | maskrate grad norm | transformers | rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    worst_loss, worst_norm = 0.0, 0.0
    for r in records:
        o = ours[r["step"]]
        dl = abs(o["loss"] - r["loss"]) / abs(r["loss"])
        dn = abs(o["grad_norm"] - r["grad_norm"]) / abs(r["grad_norm"])
        worst_loss, worst_norm = max(worst_loss, dl), max(worst_norm, dn)
        print(f"| {r['step']} | {lrs[r['step']]:.3e} | {o['loss']:.7f} | {r['loss']:.7f} | {dl:.1e} | "
              f"{o['grad_norm']:.6f} | {r['grad_norm']:.6f} | {dn:.1e} |")
    ckpt = os.path.join(args.run, "checkpoints", f"step-{steps:07d}", "model.safetensors")
    final = load_file(ckpt)
    worst_param = ("", 0.0)
    state = model.state_dict()
    for name, value in final.items():
        if name.endswith("attention.self.key.bias"):
            # The key bias adds the same score to every key of a query: softmax cancels it, its true
            # gradient is 0, and Adam turns either side's rounding noise into lr-sized steps.
            continue
        ref = state[name]
        rel = ((value - ref).norm() / ref.norm().clamp_min(1e-12)).item()
        if rel > worst_param[1]:
            worst_param = (name, rel)
    ours_model = MODEL_CLASS(hf_cfg)
    ours_model.load_state_dict(final, strict=False)
    ours_eval_recomputed = eval_loss(ours_model)
    print()
    print(f"steps compared: {len(records)}; max relative loss difference {worst_loss:.2e}; "
          f"max relative gradient-norm difference {worst_norm:.2e}")
    print(f"parameters after {steps} steps: largest relative difference (L2 of the difference / L2 of "
          f"transformers') {worst_param[1]:.2e} in {worst_param[0]}")
    print(f"held-out loss after {steps} steps: maskrate run {our_eval}, maskrate's parameters scored by "
          f"transformers {ours_eval_recomputed:.6f}, transformers-trained {hf_eval:.6f}")
    result.update({"max_rel_loss_diff": worst_loss, "max_rel_grad_norm_diff": worst_norm,
                   "max_rel_param_diff": worst_param[1], "max_rel_param_name": worst_param[0],
                   "maskrate_eval_loss": our_eval, "maskrate_params_eval_by_hf": ours_eval_recomputed})
if args.json:
    json.dump({"result": result, "steps": records}, open(args.json, "w"), indent=1)
