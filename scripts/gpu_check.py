#!/usr/bin/env python3
"""The PyTorch half of scripts/gpu-check.sh: maskrate's batches feeding transformers' models.

    gpu_check.py throughput --shards S --json OUT.json [--cpu-only]
        transformers' BertForMaskedLM and ModernBertForMaskedLM (bf16 autocast, SDPA on a GPU)
        fed by maskrate.torch.MaskedDataset through a DataLoader: tokens/s, MFU, peak memory and
        the share of step time spent waiting for the next batch.
    gpu_check.py run --shards S --schedule SPEC --seed N --json OUT.json [...]
        one pretraining run of the schedule sweep: a fixed budget of steps (so of tokens), then
        the held-out MLM loss at the common 15% rate (maskrate's held-out batches, the trainer's).
    gpu_check.py sweep --shards S --out DIR [--seeds 3] [--budget-s 330] [--cpu-only]
        every schedule x seed as concurrent `run` processes, a wave of schedules per seed, no new
        wave once the time left is under the last wave's; writes DIR/sweep.json and DIR/REPORT.md.
    gpu_check.py summarize --work DIR --json OUT.json --markdown OUT.md
        the check's one JSON and one Markdown table from every step's results.

Needs torch, transformers and the maskrate wheel; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

SCHEDULES = ["constant:0.15", "constant:0.3", "linear:0.3:0.15", "cosine:0.3:0.15", "linear:0.15:0.3"]
# Dense bf16 peaks (TFLOP/s) by the GPU's exact name (torch.cuda.get_device_name), most specific
# first: an H100 PCIe (756) or NVL (835) is not an SXM H100 (989); NVIDIA's datasheets.
PEAK_TFLOPS = [
    ("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("GH200", 989), ("H200", 989),
    ("A100", 312), ("L40S", 362), ("A10", 125), ("B200", 2250),
]


def peak_tflops(gpu: str) -> int | None:
    """The dense bf16 peak of the GPU named `gpu` ("NVIDIA H100 80GB HBM3" is an SXM H100), None
    for a GPU not in the table (no MFU is claimed then)."""
    return next((v for k, v in PEAK_TFLOPS if k in gpu), None)


def executed_flops_per_token(arch: str, layers: int, hidden: int, inter: int, vocab: int,
                             seq_len: int, mask_rate: float) -> float:
    """Training FLOPs (forward + backward = 3 x forward, 2 per multiply-add) a token executes:
    the encoder's matrix products (BERT: Q, K, V, O and two feed-forward matrices per layer;
    ModernBERT: the same with a gated, three-matrix feed-forward), attention's scores and values
    (12 L d s), and the MLM head (transform + decoder) on the masked rows only, a `mask_rate`
    share of the tokens. Charging the decoder to every token counts 22% more for BERT-base at 128
    (668 M against 545 M), overstating its MFU."""
    ffn = (2 if arch == "bert" else 3) * hidden * inter
    encoder = layers * (4 * hidden * hidden + ffn)
    head = hidden * hidden + hidden * vocab
    return 6 * encoder + 12 * layers * hidden * seq_len + 6 * mask_rate * head


def model_shape(arch: str, size: str) -> tuple[int, int, int, int]:
    """(layers, hidden, heads, intermediate) of the trainer's preset `size` of `arch`: the one
    table (`maskrate.model_presets()`, `trainer presets --json`), so both routes train one shape."""
    import maskrate

    s = maskrate.model_presets()[arch]["presets"][size]
    return s["num_hidden_layers"], s["hidden_size"], s["num_attention_heads"], s["intermediate_size"]


def log(*a):
    print(*a, flush=True)


def device_and_peak(cpu_only: bool):
    import torch

    if cpu_only or not torch.cuda.is_available():
        return torch.device("cpu"), None, "cpu"
    name = torch.cuda.get_device_name(0)
    return torch.device("cuda:0"), peak_tflops(name), name


def build_model(arch: str, size: str, vocab: int, seed: int):
    import torch
    import transformers

    torch.manual_seed(seed)
    if arch == "bert":
        layers, hidden, heads, inter = model_shape(arch, size)
        cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                      num_attention_heads=heads, intermediate_size=inter,
                                      attn_implementation="sdpa")
        return transformers.BertForMaskedLM(cfg), layers, hidden
    layers, hidden, heads, inter = model_shape(arch, size)
    cfg = transformers.ModernBertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                        num_attention_heads=heads, intermediate_size=inter,
                                        pad_token_id=0, bos_token_id=101, eos_token_id=102,
                                        cls_token_id=101, sep_token_id=102, attn_implementation="sdpa")
    return transformers.ModernBertForMaskedLM(cfg), layers, hidden


def masked_loss(model, arch, item):
    """MLM loss over the masked positions only (the sparse head maskrate's trainer uses)."""
    import torch.nn.functional as F

    labels = item["labels"]
    picked = labels != -100
    if arch == "bert":
        hidden = model.bert(input_ids=item["input_ids"], attention_mask=item["attention_mask"],
                            token_type_ids=item["token_type_ids"]).last_hidden_state
        logits = model.cls(hidden[picked])
    else:
        hidden = model.model(input_ids=item["input_ids"], attention_mask=item["attention_mask"]).last_hidden_state
        logits = model.decoder(model.head(hidden[picked]))
    return F.cross_entropy(logits.float(), labels[picked])


def loader_for(maskrate_torch, shards, steps, rows, seq_len, schedule, seed, workers, layout="pack"):
    import torch

    ds = maskrate_torch.MaskedDataset(shards, schedule=schedule, total_steps=steps, batch_size=rows,
                                      seq_len=seq_len, seed=seed, layout=layout, eval_sequences=256)
    return ds, torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                           pin_memory=torch.cuda.is_available(),
                                           prefetch_factor=4 if workers else None,
                                           persistent_workers=False)


def to_device(item, dev):
    return {k: v.to(dev, non_blocking=True) for k, v in item.items()}


def realised_rate(item, specials) -> tuple[int, int]:
    """(masked, maskable) tokens of a batch as it reached the model: predicted positions, and the
    real tokens that are not [CLS]/[SEP] (the ones the sampler may mask)."""
    labels, ids, attn = item["labels"], item["input_ids"], item["attention_mask"]
    masked = labels != -100
    special = (ids == specials[0]) | (ids == specials[1])
    return int(masked.sum()), int(((attn == 1) & (masked | ~special)).sum())


def train_loop(model, arch, loader, dev, steps, lr_at, bf16, deadline=None, specials=None):
    """AdamW steps over the loader's items, stopping early past ``deadline`` (time.time());
    returns (losses, per-step wall times, data waits), and with ``specials`` ([CLS] and [SEP]
    ids) each step's realised (masked, maskable) counts as a fourth value."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr_at(0), betas=(0.9, 0.98), eps=1e-6,
                            weight_decay=0.01, fused=dev.type == "cuda")
    losses, step_times, waits, realised = [], [], [], []
    it = iter(loader)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t_prev = time.perf_counter()
    for step in range(steps):
        t0 = time.perf_counter()
        item = next(it)
        if specials is not None:
            realised.append(realised_rate(item, specials))
        item = to_device(item, dev)
        t1 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = masked_loss(model, arch, item)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.detach())
        sync()
        t_now = time.perf_counter()
        waits.append(t1 - t0)
        step_times.append(t_now - t_prev)
        t_prev = t_now
        if deadline and time.time() > deadline:
            break
    losses = [float(x) for x in losses]
    return (losses, step_times, waits) if specials is None else (losses, step_times, waits, realised)


def cmd_throughput(a):
    import torch
    import maskrate.torch as mt

    dev, peak, gpu = device_and_peak(a.cpu_only)
    bf16 = dev.type == "cuda"
    vocab = 30522
    results = []
    for arch in a.arch.split(","):
        model, layers, hidden = build_model(arch, a.size, vocab, 0)
        model = model.to(dev).train()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        steps = a.steps + a.warmup
        _, loader = loader_for(mt, a.shards, steps, a.rows, a.seq_len, "constant:0.15", 0, a.workers)
        losses, times, waits = train_loop(model, arch, loader, dev, steps, lambda s: 1e-4, bf16)
        times, waits = times[a.warmup:], waits[a.warmup:]
        tps = a.rows * a.seq_len * len(times) / sum(times)
        _, _, _, inter = model_shape(arch, a.size)
        flops_per_token = executed_flops_per_token(arch, layers, hidden, inter, vocab, a.seq_len, 0.15)
        row = {"arch": arch, "size": a.size, "rows": a.rows, "seq_len": a.seq_len, "device": gpu,
               "bf16": bf16, "steps_timed": len(times), "tokens_per_sec": tps,
               "mfu": tps * flops_per_token / (peak * 1e12) if peak else None,
               "data_wait_share": sum(waits) / sum(times),
               "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
               "first_loss": losses[0], "last_loss": losses[-1], "finite": all(map(math.isfinite, losses))}
        log(json.dumps(row))
        results.append(row)
        del model
    json.dump(results, open(a.json, "w"), indent=1)


def cmd_run(a):
    import torch
    import maskrate
    import maskrate.torch as mt

    dev, _, _ = device_and_peak(a.cpu_only)
    bf16 = dev.type == "cuda"
    shards = maskrate.Shards(a.shards)
    vocab = shards.tokenizer["vocab_size"]
    model, _, _ = build_model(a.arch, a.size, vocab, a.seed)
    model = model.to(dev).train()
    ds, loader = loader_for(mt, shards, a.steps, a.rows, a.seq_len, a.schedule, a.seed, a.workers)
    warm = max(1, int(0.06 * a.steps))

    def lr_at(step):  # linear warm-up, then linear decay to 0 (the trainer's default shape)
        return a.lr * (step + 1) / warm if step < warm else a.lr * max(0.0, (a.steps - step) / (a.steps - warm))

    t0 = time.perf_counter()
    specials = (shards.tokenizer["cls_id"], shards.tokenizer["sep_id"])
    losses, times, waits, realised = train_loop(model, a.arch, loader, dev, a.steps, lr_at, bf16,
                                                a.deadline, specials)
    train_s = time.perf_counter() - t0
    # Held-out loss at the common 15% rate: maskrate's held-out batches (fixed seed, constant 15%).
    batches = ds.batches()
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(batches.num_held_out_batches()):
            item = to_device({k: torch.from_numpy(v) for k, v in batches.held_out_batch(i).items()}, dev)
            n = int((item["labels"] != -100).sum())
            total += float(masked_loss(model, a.arch, item)) * n
            count += n
    done = len(losses)
    result = {"schedule": a.schedule, "seed": a.seed, "arch": a.arch, "size": a.size, "steps": a.steps,
              "steps_done": done, "truncated": done < a.steps,
              "rows": a.rows, "seq_len": a.seq_len, "tokens": done * a.rows * a.seq_len,
              "held_out_loss": total / count, "held_out_tokens": count,
              "train_loss_first": losses[0], "train_loss_last10": statistics.fmean(losses[-10:]),
              "rates": [batches.rate(s) for s in (0, a.steps // 2, a.steps - 1)],
              # What the model saw: (step, masked, maskable) at the first, middle and last step.
              "realised_rates": [(s, *realised[s]) for s in sorted({0, (done - 1) // 2, done - 1})],
              "train_seconds": train_s, "tokens_per_sec": done * a.rows * a.seq_len / train_s,
              "data_wait_share": sum(waits) / sum(times)}
    if a.glue:
        result["glue"] = glue_scores(model, a, dev)
    json.dump(result, open(a.json, "w"), indent=1)
    log(json.dumps(result))


# The GLUE tasks the sweep fine-tunes on (those in ../shared/data/glue; the paper's fine-tuning
# hyper-parameters per task are `trainer glue`'s).
GLUE_TASKS = ["CoLA", "SST-2", "MRPC", "STS-B", "RTE"]
# `trainer glue`'s JSON names tasks by its enum; the report by their directories.
GLUE_NAMES = {"CoLA": "CoLA", "Sst2": "SST-2", "Mrpc": "MRPC", "Stsb": "STS-B", "Rte": "RTE"}


def glue_scores(model, a, dev):
    """Fine-tunes the run's model on each GLUE task with `trainer glue` (the one GLUE
    implementation: data, the paper's per-task learning rates, epochs and batch sizes, metrics),
    from the model saved in transformers' format with the shards' tokenizer; training examples
    capped at --glue-max-train and epochs at --glue-epochs to fit the time. Returns the dev score
    (0-100) per task and their average."""
    import shutil

    base = a.json[:-len(".json")]
    hf_dir, out = base + "-hf", base + "-glue"
    model.save_pretrained(hf_dir, safe_serialization=True)
    shutil.copy(os.path.join(a.shards, "tokenizer.json"), hf_dir)
    tasks = [t for t in GLUE_TASKS if os.path.exists(os.path.join(a.glue, t, "train.tsv"))]
    cmd = [a.trainer, "glue", "--checkpoint", hf_dir, "--data", a.glue, "--tasks", ",".join(tasks),
           "--no-mnli-init", "--max-train", str(a.glue_max_train), "--epochs", str(a.glue_epochs),
           "--device", "cpu" if a.cpu_only or dev.type != "cuda" else "cuda:0", "--quiet", "--out", out]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    report = json.load(open(os.path.join(out, "glue.json")))
    scores = {GLUE_NAMES.get(t["task"], t["task"]): 100 * t["score"] for t in report["tasks"]}
    shutil.rmtree(hf_dir, ignore_errors=True)
    return {"average": report["average"], "tasks": scores, "max_train": a.glue_max_train,
            "epochs": a.glue_epochs, "seconds": report["seconds"]}


def cmd_sweep(a):
    os.makedirs(a.out, exist_ok=True)
    start = time.perf_counter()
    runs, failed, last_wave = [], [], 0.0
    schedules = a.schedules.split(",")
    # A run still training at the deadline stops, is evaluated and reported apart (not in the table).
    deadline = time.time() + a.budget_s
    for seed in range(a.seeds):
        left = a.budget_s - (time.perf_counter() - start)
        if seed and left < last_wave * 1.1:
            log(f"sweep: {left:.0f} s left, the last wave took {last_wave:.0f} s: no seed {seed}")
            break
        t = time.perf_counter()
        procs = []
        for spec in schedules:
            name = f"{spec.replace(':', '_')}-seed{seed}"
            out = os.path.join(a.out, name + ".json")
            cmd = [sys.executable, __file__, "run", "--shards", a.shards, "--schedule", spec,
                   "--seed", str(seed), "--steps", str(a.steps), "--rows", str(a.rows),
                   "--seq-len", str(a.seq_len), "--arch", a.arch, "--size", a.size, "--lr", str(a.lr),
                   "--workers", str(a.workers), "--deadline", str(deadline), "--json", out] + (["--cpu-only"] if a.cpu_only else [])
            if a.glue:
                cmd += ["--glue", a.glue, "--trainer", a.trainer, "--glue-max-train", str(a.glue_max_train),
                        "--glue-epochs", str(a.glue_epochs)]
            logf = open(os.path.join(a.out, name + ".log"), "w")
            procs.append((spec, seed, out, subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)))
        for spec, seed_, out, p in procs:
            rc = p.wait()
            if rc == 0 and os.path.exists(out):
                runs.append(json.load(open(out)))
            else:
                failed.append({"schedule": spec, "seed": seed_, "rc": rc})
        last_wave = time.perf_counter() - t
        log(f"sweep: seed {seed} done in {last_wave:.0f} s")
    import maskrate

    corpus_tokens = maskrate.Shards(a.shards).num_tokens
    summary = {"arch": a.arch, "size": a.size, "steps": a.steps, "rows": a.rows, "seq_len": a.seq_len,
               "tokens_per_run": a.steps * a.rows * a.seq_len, "lr": a.lr, "route": "pytorch",
               "corpus_tokens": corpus_tokens,
               "passes_over_corpus": a.steps * a.rows * a.seq_len / max(corpus_tokens, 1),
               "wall_seconds": time.perf_counter() - start, "runs": runs, "failed": failed,
               "table": sweep_table(runs, schedules)}
    json.dump(summary, open(os.path.join(a.out, "sweep.json"), "w"), indent=1)
    with open(os.path.join(a.out, "REPORT.md"), "w") as f:
        f.write(sweep_report(summary))
    log(sweep_report(summary))
    if not runs:
        sys.exit(1)


def sweep_table(runs, schedules):
    rows = []
    for spec in schedules:
        done = [r for r in runs if r["schedule"] == spec and not r["truncated"]]
        losses = [r["held_out_loss"] for r in done]
        if losses:
            glue = [r["glue"]["average"] for r in done if r.get("glue")]
            rows.append({"schedule": spec, "seeds": len(losses), "held_out_loss_mean": statistics.fmean(losses),
                         "held_out_loss_std": statistics.stdev(losses) if len(losses) > 1 else None,
                         "glue_mean": statistics.fmean(glue) if glue else None,
                         "glue_std": statistics.stdev(glue) if len(glue) > 1 else None,
                         "glue_tasks": {t: statistics.fmean(r["glue"]["tasks"][t] for r in done if r.get("glue"))
                                        for t in (done[0].get("glue") or {}).get("tasks", {})}})
    base = next((r for r in rows if r["schedule"] == "constant:0.15"), None)
    for r in rows:
        r["vs_constant_0.15"] = r["held_out_loss_mean"] - base["held_out_loss_mean"] if base else None
    return rows


def sweep_report(s):
    lines = [f"# Schedule sweep ({s['route']} route: maskrate batches, transformers' BertForMaskedLM)", "",
             f"{s['arch']} `{s['size']}`, {s['steps']} steps of {s['rows']} x {s['seq_len']} tokens "
             f"({s['tokens_per_run'] / 1e6:.1f} M tokens per run), peak lr {s['lr']}, AdamW, bf16 on a GPU; "
             f"held-out MLM loss at a constant 15% on maskrate's held-out batches. "
             f"Each run read {s.get('passes_over_corpus', float('nan')):.3g} passes over a corpus of "
             f"{s.get('corpus_tokens', 0) / 1e6:.2f} M tokens. Wall time {s['wall_seconds']:.0f} s.", ""]
    glue = any(r.get("glue_mean") is not None for r in s["table"])
    if glue:
        first = next(r for r in s["table"] if r.get("glue_mean") is not None)
        tasks = [t for t in GLUE_TASKS if t in first["glue_tasks"]]
        lines += ["GLUE dev scores (0-100): each run's model fine-tuned by `trainer glue` on the tasks "
                  "present, the paper's per-task settings with training examples and epochs capped "
                  "(see each run's `glue`), no MNLI start.", ""]
        lines += ["| schedule | seeds | held-out loss (mean) | std | vs constant 0.15 | GLUE avg | "
                  + " | ".join(tasks) + " |", "|---|---|---|---|---|---|" + "---|" * len(tasks)]
    else:
        lines += ["| schedule | seeds | held-out loss (mean) | std | vs constant 0.15 |", "|---|---|---|---|---|"]
    for r in s["table"]:
        std = f"{r['held_out_loss_std']:.4f}" if r["held_out_loss_std"] is not None else "-"
        d = f"{r['vs_constant_0.15']:+.4f}" if r["vs_constant_0.15"] is not None else "-"
        row = f"| `{r['schedule']}` | {r['seeds']} | {r['held_out_loss_mean']:.4f} | {std} | {d} |"
        if glue:
            g = r.get("glue_mean")
            row += (f" {g:.2f} |" if g is not None else " - |") + "".join(
                f" {r['glue_tasks'].get(t, float('nan')):.1f} |" for t in tasks)
        lines.append(row)
    cut = [r for r in s["runs"] if r["truncated"]]
    if cut:
        lines += ["", "Stopped by the time budget (not in the table): " + ", ".join(
            f"{r['schedule']} seed {r['seed']} at step {r['steps_done']} (held-out {r['held_out_loss']:.4f})" for r in cut)]
    if s["failed"]:
        lines += ["", "Failed runs: " + ", ".join(f"{f['schedule']} seed {f['seed']} (rc {f['rc']})" for f in s["failed"])]
    return "\n".join(lines) + "\n"


# The candle throughput runs gpu-check.sh makes: (run directory, arch, preset, rows, seq_len).
THROUGHPUT_RUNS = [
    ("bert-base", "bert", "base", 256, 128),
    ("bert-base-dropout0", "bert", "base", 256, 128),
    ("bert-base-composed", "bert", "base", 256, 128),
    ("modernbert-base", "modernbert", "base", 256, 128),
    ("bert-base-pack512", "bert", "base", 64, 512),
    ("modernbert-base-pack512", "modernbert", "base", 64, 512),
]


def candle_throughput(work, gpu):
    """Each throughput run's tokens/s (mean over the steps after the first two), MFU on the FLOPs
    it executed (the masked share of the head from its metrics' mask rates, the peak by the GPU's
    exact name) and `--profile`'s phases; runs that left no metrics are left out."""
    peak, out = peak_tflops(gpu), []
    for run, arch, size, rows, seq in THROUGHPUT_RUNS:
        path = os.path.join(work, run, "metrics.jsonl")
        if not os.path.exists(path):
            continue
        train = [r for r in map(json.loads, open(path)) if r.get("kind") == "train"]
        if len(train) <= 2:
            continue
        timed = train[2:]
        tps = statistics.fmean(r["tokens_per_sec"] for r in timed)
        rate = statistics.fmean(r.get("mask_rate", 0.15) for r in timed)
        layers, hidden, _, inter = model_shape(arch, size)
        flops = executed_flops_per_token(arch, layers, hidden, inter, 30522, seq, rate)
        row = {"run": run, "arch": arch, "rows": rows, "seq_len": seq, "tokens_per_sec": tps,
               "flops_per_token": flops, "peak_tflops": peak,
               "mfu": tps * flops / (peak * 1e12) if peak else None}
        summary_path = os.path.join(work, run, "summary.json")
        profile = json.load(open(summary_path)).get("profile") if os.path.exists(summary_path) else None
        if profile:
            row["phases_ms"] = {k: 1e3 * profile[f"{k}_sec"]
                                for k in ("forward", "backward", "all_reduce", "optimizer")}
            row["phases_ms"].update(uploads=profile["steady_uploads"], reads=profile["steady_reads"])
            row["launches_per_step"] = profile.get("steady_launches")
        out.append(row)
    return out


def candle_results(work, gpu):
    """The candle trainer's checks from its runs' metrics.jsonl (tiny fp32 CPU vs CUDA, bf16 vs
    fp32, BERT-base bf16 tokens/s, MFU and peak memory); None when no run left metrics."""
    def metrics(run):
        path = os.path.join(work, run, "metrics.jsonl")
        if not os.path.exists(path):
            return None
        return [r for r in map(json.loads, open(path)) if r.get("kind") == "train"]
    cpu, cuda, bf16 = metrics("cpu"), metrics("cuda"), metrics("bf16")
    if not any((cpu, cuda, bf16)) and not candle_throughput(work, gpu):
        return None
    rows, result = [], {}
    if cpu:
        result["cpu_losses"] = [r["loss"] for r in cpu]
        rows.append(("candle tiny fp32 CPU, final loss", f"{cpu[-1]['loss']:.5f}", ""))
    if cpu and cuda:
        diff = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(cpu, cuda))
        result["cuda_losses"] = [r["loss"] for r in cuda]
        result["cuda_vs_cpu_max_rel_loss_diff"] = diff
        rows.append(("candle tiny fp32 CUDA vs CPU, max rel. loss difference", f"{diff:.2e}",
                     "PASS" if diff <= 2e-3 else "FAIL"))
    if cuda and bf16:
        d = abs(bf16[-1]["loss"] - cuda[-1]["loss"]) / cuda[-1]["loss"]
        result["bf16_vs_fp32_final_rel_diff"] = d
        rows.append(("candle tiny bf16 vs fp32 CUDA, final loss rel. difference", f"{d:.2e}",
                     "PASS" if d <= 0.02 else "FAIL"))
    throughput = candle_throughput(work, gpu)
    if throughput:
        result["throughput"] = throughput
        for t in throughput:
            mfu = f", MFU {100 * t['mfu']:.1f}% of {t['peak_tflops']}" if t.get("mfu") else ""
            phases = t.get("phases_ms")
            ms = (" (ms/step: fwd {forward:.0f}, bwd {backward:.0f}, reduce {all_reduce:.0f}, "
                  "opt {optimizer:.0f}; {uploads:.0f} uploads, {reads} reads)").format(**phases) if phases else ""
            launches = f", {t['launches_per_step']:.0f} launches/step" if t.get("launches_per_step") else ""
            rows.append((f"candle {t['run']} bf16 tokens/s", f"{t['tokens_per_sec']:.0f}{mfu}{ms}{launches}", ""))
        base = next((t for t in throughput if t["run"] == "bert-base"), None)
        if base:
            result.update(base_tokens_per_sec=base["tokens_per_sec"], base_mfu=base.get("mfu"))
        modern = next((t for t in throughput if t["run"] == "modernbert-base"), None)
        if modern:
            result["modernbert_base_tokens_per_sec"] = modern["tokens_per_sec"]
    mem_path = os.path.join(work, "mem.txt")
    mem = [int(x) for x in open(mem_path).read().split() if x.isdigit()] if os.path.exists(mem_path) else []
    if mem:
        result["peak_memory_mib"] = max(mem)
        rows.append(("candle throughput runs' peak GPU memory (nvidia-smi)", f"{max(mem)} MiB", ""))
    result["rows"] = rows
    return result


def cmd_summarize(a):
    """One JSON and one Markdown table from steps.jsonl (status and time of every step) and the
    result files the steps wrote in the work directory."""
    steps = [json.loads(l) for l in open(os.path.join(a.work, "steps.jsonl"))]
    def load(name):
        p = os.path.join(a.work, name)
        return json.load(open(p)) if os.path.exists(p) else None
    env = load("env.json") or {}
    candle = candle_results(a.work, env.get("gpu", ""))
    torch_route = load("torch_route.json")
    sweep = load(os.path.join("sweep", "sweep.json"))
    device_check = load("device_check.json")
    result = {"env": env, "steps": steps, "device_check": device_check, "candle": candle,
              "torch_route": torch_route, "sweep": sweep}
    json.dump(result, open(a.json, "w"), indent=1)
    md = [f"# gpu-check: {env.get('gpu', '?')}", "", "| step | status | seconds | note |", "|---|---|---|---|"]
    for s in steps:
        md.append(f"| {s['step']} | {s['status']} | {s['seconds']:.0f} | {s.get('note', '')} |")
    md += ["", "| check | value | verdict |", "|---|---|---|"]
    for c in (device_check or {}).get("checks", []):
        md.append(f"| device {c['name']} | {c['detail']} | {'PASS' if c['pass'] else 'FAIL'} |")
    for row in (candle or {}).get("rows", []):
        md.append("| " + " | ".join(row) + " |")
    for r in torch_route or []:
        mfu = f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else ""
        mem = f", peak {r['peak_memory_mib']:.0f} MiB" if r.get("peak_memory_mib") else ""
        verdict = "PASS" if r["data_wait_share"] < 0.02 else "data wait over 2%"
        md.append(f"| PyTorch route {r['arch']} `{r['size']}` {r['rows']}x{r['seq_len']} tokens/s | "
                  f"{r['tokens_per_sec']:.0f}{mfu}{mem}, data wait {100 * r['data_wait_share']:.2f}% | {verdict} |")
    if sweep:
        md += ["", sweep_report(sweep)]
    open(a.markdown, "w").write("\n".join(md) + "\n")
    print("\n".join(md))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("throughput", "run", "sweep"):
        q = sub.add_parser(name)
        q.add_argument("--shards", required=True)
        q.add_argument("--cpu-only", action="store_true")
        q.add_argument("--rows", type=int, default=256)
        q.add_argument("--seq-len", type=int, default=128)
        q.add_argument("--workers", type=int, default=2)
        q.add_argument("--size", default="base" if name == "throughput" else "small")
        q.add_argument("--arch", default="bert,modernbert" if name == "throughput" else "bert")
        if name == "throughput":
            q.add_argument("--steps", type=int, default=30)
            q.add_argument("--warmup", type=int, default=5)
            q.add_argument("--json", required=True)
        else:
            q.add_argument("--steps", type=int, default=600)
            q.add_argument("--lr", type=float, default=1e-3)
            q.add_argument("--glue", help="GLUE data directory: fine-tune each run's model on its tasks")
            q.add_argument("--trainer", help="the trainer binary that fine-tunes (`trainer glue`)")
            q.add_argument("--glue-max-train", type=int, default=2000,
                           help="training examples per task (the paper's epochs, scaled to the time)")
            q.add_argument("--glue-epochs", type=int, default=3)
        if name == "run":
            q.add_argument("--schedule", required=True)
            q.add_argument("--seed", type=int, default=0)
            q.add_argument("--deadline", type=float, help="stop training past this time.time()")
            q.add_argument("--json", required=True)
        if name == "sweep":
            q.add_argument("--out", required=True)
            q.add_argument("--seeds", type=int, default=3)
            q.add_argument("--budget-s", type=float, default=330)
            q.add_argument("--schedules", default=",".join(SCHEDULES))
    q = sub.add_parser("summarize")
    q.add_argument("--work", required=True)
    q.add_argument("--json", required=True)
    q.add_argument("--markdown", required=True)
    a = p.parse_args()
    {"throughput": cmd_throughput, "run": cmd_run, "sweep": cmd_sweep, "summarize": cmd_summarize}[a.cmd](a)


if __name__ == "__main__":
    main()
