"""The HF Trainer on maskrate shards (through `python/examples/hf_trainer.py`, as a user runs it):
the loss falls; a run stopped at step 10 and resumed from its checkpoint has the uninterrupted
run's losses without replaying batches; two `torchrun` processes (gloo) match one process with the
same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch  # noqa: F401  (CI installs torch and transformers: a broken install fails here)
import transformers  # noqa: F401

import maskrate

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hf_trainer.py"
COMMON = [
    "--schedule", "linear:0.3:0.15", "--model", "tiny", "--steps", "20", "--batch-size", "8",
    "--seq-len", "64", "--dropout", "0", "--lr", "1e-3", "--eval-sequences", "32",
    "--save-every", "10",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]


def losses(out: Path, this_run_only: bool = False) -> dict[int, float]:
    name = "this_run_log.json" if this_run_only else "log_history.json"
    history = json.loads((out / "linear_0.3_0.15" / name).read_text())
    return {r["step"]: r["loss"] for r in history}


@pytest.fixture(scope="module")
def uninterrupted(sample_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "whole"
    run([sys.executable, str(EXAMPLE), "--shards", str(sample_shards), "--out", str(out),
         "--per-device-batch", "8", *COMMON])
    return out


def test_the_loss_falls(uninterrupted):
    l = losses(uninterrupted)
    assert sorted(l) == list(range(1, 21))
    first, last = sum(l[s] for s in (1, 2, 3)) / 3, sum(l[s] for s in (18, 19, 20)) / 3
    assert last < first - 0.5, l
    # The held-out loss (15%, unseen sequences) is below the first steps' too: an untrained model
    # scores about ln(30522) = 10.33 there, which a fixed bound such as 11 would let pass.
    summary = json.loads((uninterrupted / "linear_0.3_0.15" / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["eval_loss"] < first - 0.5, (summary, first)


def test_resuming_from_step_10_continues_with_the_same_losses(uninterrupted, sample_shards, tmp_path):
    run_dir = tmp_path / "resumed" / "linear_0.3_0.15"
    run_dir.mkdir(parents=True)
    shutil.copytree(uninterrupted / "linear_0.3_0.15" / "checkpoint-10", run_dir / "checkpoint-10")
    run([sys.executable, str(EXAMPLE), "--shards", str(sample_shards), "--out", str(tmp_path / "resumed"),
         "--per-device-batch", "8", "--resume", *COMMON])
    whole, resumed = losses(uninterrupted), losses(tmp_path / "resumed", this_run_only=True)
    assert sorted(resumed) == list(range(11, 21)), "resumed run replayed or skipped steps"
    summary = json.loads((tmp_path / "resumed" / "linear_0.3_0.15" / "summary.json").read_text())
    assert summary["started_at_step"] == 10
    for step in range(11, 21):
        assert resumed[step] == pytest.approx(whole[step], rel=1e-6, abs=1e-6), step


def test_torchrun_two_processes_match_one(uninterrupted, sample_shards, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found beside the interpreter"
    out = tmp_path / "ddp"
    run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", str(EXAMPLE),
         "--shards", str(sample_shards), "--out", str(out), "--per-device-batch", "4", *COMMON])
    one, two = losses(uninterrupted), losses(out)
    assert sorted(two) == sorted(one)
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5), (step, one[step], two[step])


def test_lr_schedule_arguments_give_the_trainers_wsd_curve():
    """`wsd:0.2:1-sqrt` over 100 steps, warm-up 10, final ratio 0.1, through transformers' own
    scheduler: the peak held to step 80, then 0.1 + 0.9 (1 - sqrt((t - 80) / 20)) (hand-computed,
    the trainer's formula)."""
    from transformers import TrainingArguments, get_scheduler

    from maskrate.hf import lr_schedule_arguments

    kw = lr_schedule_arguments("wsd:0.2:1-sqrt", 100, warmup=0.1, final_lr_ratio=0.1)
    args = TrainingArguments(output_dir="unused", max_steps=100, learning_rate=1.0, report_to=[], **kw)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_scheduler(
        args.lr_scheduler_type, opt, num_warmup_steps=args.get_warmup_steps(100),
        num_training_steps=100, scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    for t in (10, 50, 79, 80):
        assert lrs[t] == pytest.approx(1.0), t
    for t in (85, 90, 99):
        assert lrs[t] == pytest.approx(0.1 + 0.9 * (1 - ((t - 80) / 20) ** 0.5)), t
    # The trainer's own schedule, step by step: the same curve after warm-up, whose first step
    # already takes peak / warmup_steps (transformers' starts at 0).
    trainer = maskrate.LrSchedule("wsd:0.2:1-sqrt", 100, warmup=0.1, final_lr_ratio=0.1)
    assert (trainer.warmup_steps, trainer.decay_steps, trainer.decay_shape) == (10, 20, "1-sqrt")
    assert [trainer.lr(t) for t in (0, 9)] == pytest.approx([0.1, 1.0])
    for t in range(10, 100):
        assert trainer.lr(t) == pytest.approx(lrs[t]), t
    with pytest.raises(ValueError, match='decay shape "sqrt"'):
        lr_schedule_arguments("wsd:0.2:sqrt", 100)


@pytest.mark.parametrize("layout", ["truncate", "pack-docs"])
def test_the_example_trains_modernbert(sample_shards, tmp_path, layout):
    out = tmp_path / "modern"
    args = [a for a in COMMON if a not in ("--save-every", "10")]
    run([sys.executable, str(EXAMPLE), "--shards", str(sample_shards), "--out", str(out),
         "--per-device-batch", "8", "--arch", "modernbert", "--layout", layout,
         "--save-every", "100", *args])
    config = json.loads(next(out.glob("linear_0.3_0.15/checkpoint-*/config.json")).read_text())
    assert config["model_type"] == "modernbert"
    # As test_the_loss_falls: 3-step means with a margin, and a held-out loss below the start
    # (an untrained model scores about ln(30522) = 10.33, above any fixed bound near it).
    got = losses(out)
    assert sorted(got) == list(range(1, 21))
    first, last = sum(got[s] for s in (1, 2, 3)) / 3, sum(got[s] for s in (18, 19, 20)) / 3
    assert last < first - 0.5, got
    summary = json.loads((out / "linear_0.3_0.15" / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["eval_loss"] < first - 0.5, (summary, first)



def test_the_example_trains_a_masked_diffusion_modernbert(sample_shards, tmp_path):
    """The example as a masked-diffusion run: a rate per document (stratified over the global
    batch), all [MASK], the 1/rate weight, divided by the maskable tokens; the Trainer gets
    finite losses that fall."""
    out = tmp_path / "mdlm"
    args = [a for a in COMMON if a not in ("--save-every", "10", "--schedule", "linear:0.3:0.15")]
    run([sys.executable, str(EXAMPLE), "--shards", str(sample_shards), "--out", str(out),
         "--per-device-batch", "4", "--arch", "modernbert", "--layout", "pack-docs",
         "--schedule", "constant:0.5", "--rate-dist", "stratified:0.001:1", "--rate-per-document",
         "--mask-token-fraction", "1", "--loss-weight", "inverse-rate", "--loss-norm", "token",
         "--save-every", "100", *args])
    history = json.loads((out / "constant_0.5" / "log_history.json").read_text())
    got = {r["step"]: r["loss"] for r in history}
    assert sorted(got) == list(range(1, 21)) and all(v == v and v < 1e3 for v in got.values()), got
    first, last = sum(got[s] for s in (1, 2, 3)) / 3, sum(got[s] for s in (18, 19, 20)) / 3
    assert last < first, got
