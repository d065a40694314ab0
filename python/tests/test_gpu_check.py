"""scripts/gpu-check.sh, the GPU bundle's checks, run here with --cpu-only (what the GPU machine
runs, sizes cut to seconds): the wheel installed with --no-index, the candle trainer, the PyTorch
route and the schedule sweep's orchestration and report; a failing step is reported and the later
steps still run; a bundle over 60 MiB is refused, naming what is large."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import maskrate

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu-check.sh"
SECTIONS = {"env", "steps", "device_check", "candle", "torch_route", "sweep"}


def wheel() -> Path:
    """The wheel under test: $MASKRATE_WHEEL (scripts/python-tests.sh sets it), else dist/."""
    if os.environ.get("MASKRATE_WHEEL"):
        return Path(os.environ["MASKRATE_WHEEL"])
    found = sorted((REPO / "dist").glob("maskrate-*.whl"))
    assert found, "no wheel: run scripts/build-wheel.sh"
    return found[-1]


def check(tmp_path: Path, trainer: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    env = {**os.environ, "TRAINER": str(trainer), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        ["bash", str(SCRIPT), "check", "--cpu-only", "--out", str(out), "--wheel", str(wheel()), *extra],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert (out / "gpu-check.json").exists(), r.stdout[-3000:] + r.stderr[-3000:]
    return r, json.loads((out / "gpu-check.json").read_text())


def statuses(result: dict) -> dict[str, str]:
    return {s["step"]: s["status"] for s in result["steps"]}


def test_cpu_only_check_writes_every_section(tmp_path, trainer_bin):
    r, result = check(tmp_path, trainer_bin)
    assert SECTIONS <= set(result), result.keys()
    assert statuses(result) == {
        "env": "ok", "wheel": "ok", "shards": "ok", "device-check": "ok", "candle-throughput": "skipped",
        "torch-route": "ok", "candle-cpu": "ok", "candle-cuda": "skipped", "sweep": "ok",
    }, r.stdout[-3000:]
    assert result["env"]["cpu_only"] is True
    # The device check ran every check (here the CPU against itself) and passed them.
    checks = result["device_check"]["checks"]
    assert len(checks) == 27 and all(c["pass"] for c in checks), checks
    assert checks[0]["name"] == "Philox4x32-10 known answers"
    # The per-op table: each kernel's forward and backward against its CPU twin.
    assert [c["name"] for c in checks[7:]] == [
        "gelu forward F32 256x3072", "gelu backward F32 256x3072",
        "bias+gelu forward F32 256x3072", "bias+gelu backward F32 256x3072",
        "residual dropout forward F32 256x768", "residual dropout backward F32 256x768",
        "geglu forward F32 256x2304", "geglu backward F32 256x2304",
        "rotary forward F32 256x2304", "rotary backward F32 256x2304",
        "layer norm forward F32 256x768", "layer norm backward F32 256x768",
        "embedding forward F32 256x768", "embedding backward F32 256x768",
        "cross-entropy forward F32 64x30522", "cross-entropy backward F32 64x30522",
        "attention forward F32 1x128 (padded keys)", "attention backward F32 1x128 (padded keys)",
        "attention forward F32 2x160 (documents, window 64)",
        "attention backward F32 2x160 (documents, window 64)"]
    # The candle run trained the untrained tiny model it names: 4 finite losses, the first at
    # the uniform prediction's ln(30522) = 10.33 (init σ = 0.02 moves it by < 0.1).
    cpu_losses = result["candle"]["cpu_losses"]
    assert len(cpu_losses) == 4 and all(map(math.isfinite, cpu_losses)), cpu_losses
    assert cpu_losses[0] == pytest.approx(math.log(30522), abs=0.1), cpu_losses
    assert {row["arch"] for row in result["torch_route"]} == {"bert", "modernbert"}
    for row in result["torch_route"]:
        assert row["finite"] and 0 <= row["data_wait_share"] < 1 and row["tokens_per_sec"] > 0
    sweep = result["sweep"]
    assert {run["schedule"] for run in sweep["runs"]} == {
        "constant:0.15", "constant:0.3", "linear:0.3:0.15", "cosine:0.3:0.15", "linear:0.15:0.3"
    }
    # The schedule each run trained with is the one it names: its rates at the first, middle and
    # last step are the schedule's.
    by_name = {run["schedule"]: run for run in sweep["runs"]}
    assert by_name["linear:0.3:0.15"]["rates"][0] == pytest.approx(0.3)
    assert by_name["linear:0.3:0.15"]["rates"][-1] == pytest.approx(0.15)
    assert by_name["linear:0.15:0.3"]["rates"][-1] == pytest.approx(0.3)
    # ...and the masks the model saw were drawn at those rates: the realised fraction of maskable
    # tokens within 5 binomial standard deviations of the schedule's rate at that step.
    for name, run in by_name.items():
        schedule = maskrate.Schedule(name, run["steps"])
        assert len(run["realised_rates"]) == 3, run
        for step, masked, maskable in run["realised_rates"]:
            p = schedule.rate(step)
            assert maskable > 300, run["realised_rates"]
            assert abs(masked / maskable - p) <= 5 * math.sqrt(p * (1 - p) / maskable), (name, step)
    first = lambda name: by_name[name]["realised_rates"][0]
    assert first("constant:0.3")[1] / first("constant:0.3")[2] > first("constant:0.15")[1] / first("constant:0.15")[2]
    assert len(sweep["table"]) == 5 and not sweep["failed"]
    # Every run's model was fine-tuned on the five GLUE tasks by `trainer glue`; scores in 0-100.
    for run in sweep["runs"]:
        assert set(run["glue"]["tasks"]) == {"CoLA", "SST-2", "MRPC", "STS-B", "RTE"}, run["glue"]
        assert all(-100 <= v <= 100 for v in run["glue"]["tasks"].values()), run["glue"]
    assert sweep["passes_over_corpus"] == pytest.approx(4 * 8 * 64 / sweep["corpus_tokens"])
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "`cosine:0.3:0.15`" in report
    assert "| GLUE avg | CoLA | SST-2 | MRPC | STS-B | RTE |" in report, report
    assert "passes over a corpus of" in report
    markdown = (tmp_path / "out" / "gpu-check.md").read_text()
    assert "| candle-cpu | ok |" in markdown and "PyTorch route modernbert" in markdown
    assert "| device dropout BF16 n=1000003 p=0.1 | 0 of 1000003 values differ" in markdown


def test_mfu_counts_the_flops_executed_against_the_exact_gpu_peak():
    """BERT-base at 128 tokens executes ~545 M FLOPs per token with the head on 15% of rows
    (../shared/notes/gpu-training.md); charging the decoder to every token gives ~668 M, 18% more.
    Hand count: 6 x 12 x (4 d^2 + 2 d i) + 12 x 12 d s + 6 x 0.15 (d^2 + d V), d = 768, i = 3072."""
    sys.path.insert(0, str(REPO / "scripts"))
    import gpu_check

    executed = gpu_check.executed_flops_per_token("bert", 12, 768, 3072, 30522, 128, 0.15)
    assert executed == 6 * 12 * 7_077_888 + 14_155_776 + 0.9 * 24_030_720
    assert round(executed / 1e6) == 545
    every_token = gpu_check.executed_flops_per_token("bert", 12, 768, 3072, 30522, 128, 1.0)
    assert round(every_token / 1e6) == 668 and every_token / executed == pytest.approx(1.225, abs=0.005)
    # ModernBERT's gated feed-forward has three matrices.
    modern = gpu_check.executed_flops_per_token("modernbert", 22, 768, 1152, 50368, 128, 0.0)
    assert modern == 6 * 22 * (4 * 768**2 + 3 * 768 * 1152) + 12 * 22 * 768 * 128
    peaks = {name: gpu_check.peak_tflops(name) for name in [
        "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200",
        "NVIDIA GH200 480GB", "NVIDIA A100-SXM4-80GB", "Tesla T4"]}
    assert peaks == {"NVIDIA H100 80GB HBM3": 989, "NVIDIA H100 PCIe": 756, "NVIDIA H100 NVL": 835,
                     "NVIDIA H200": 989, "NVIDIA GH200 480GB": 989, "NVIDIA A100-SXM4-80GB": 312,
                     "Tesla T4": None}


def test_a_failing_step_is_reported_and_the_later_steps_still_run(tmp_path):
    r, result = check(tmp_path, Path("/bin/false"), "--steps", "env,wheel,shards,candle-cpu,torch-route")
    got = statuses(result)
    assert got["candle-cpu"] == "fail" and got["torch-route"] == "ok", got
    assert got["sweep"] == "skipped"
    failed = next(s for s in result["steps"] if s["step"] == "candle-cpu")
    assert failed["note"].startswith("exit 1")
    assert "| candle-cpu | fail |" in (tmp_path / "out" / "gpu-check.md").read_text()


def test_a_bundle_over_60_mib_is_refused_naming_the_large_file(tmp_path):
    stage = tmp_path / "gpu-check"
    (stage / "shards").mkdir(parents=True)
    (stage / "gpu-check.sh").write_text("#!/bin/sh\n")
    with open(stage / "shards" / "big.bin", "wb") as f:  # random bytes: gzip cannot shrink them
        for _ in range(61):
            f.write(os.urandom(1 << 20))
    bundle = tmp_path / "bundle.tar.gz"
    r = subprocess.run(["bash", str(SCRIPT), "pack", str(stage), str(bundle)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "over the 60 MiB limit" in r.stderr and "shards/big.bin" in r.stderr, r.stderr
    assert not bundle.exists() and not Path(str(bundle) + ".tmp").exists()
    # Under the limit it is written.
    (stage / "shards" / "big.bin").write_bytes(os.urandom(1 << 20))
    r = subprocess.run(["bash", str(SCRIPT), "pack", str(stage), str(bundle)], capture_output=True, text=True)
    assert r.returncode == 0 and bundle.exists(), r.stderr


def test_candle_results_pass_and_fail_at_their_thresholds(tmp_path):
    """The bundle's verdicts from made-up metrics: CUDA vs CPU losses apart by 1e-4 relative pass
    and by 1e-2 fail (threshold 2e-3); bf16 vs fp32 final losses apart by 1% pass, 5% fail (2%)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import gpu_check

    def write(run: str, losses: list[float]):
        (tmp_path / run).mkdir(exist_ok=True)
        rows = [json.dumps({"kind": "train", "step": i + 1, "loss": x}) for i, x in enumerate(losses)]
        (tmp_path / run / "metrics.jsonl").write_text("\n".join(rows) + "\n")

    def verdicts(cuda_rel: float, bf16_rel: float) -> dict[str, str]:
        cpu = [10.3, 9.8, 9.1, 8.7]
        write("cpu", cpu)
        write("cuda", [x * (1 + cuda_rel) for x in cpu])
        write("bf16", [x * (1 + cuda_rel) * (1 + bf16_rel) for x in cpu])
        result = gpu_check.candle_results(str(tmp_path), "NVIDIA H100 80GB HBM3")
        return {label: verdict for label, _, verdict in result["rows"] if verdict}

    good = verdicts(1e-4, 0.01)
    assert list(good.values()) == ["PASS", "PASS"], good
    bad = verdicts(1e-2, 0.05)
    assert list(bad.values()) == ["FAIL", "FAIL"], bad


def test_throughput_rows_report_tokens_mfu_phases_and_launches(tmp_path):
    """A throughput run's row from made-up metrics and --profile summary: tokens/s averaged after
    the first two steps, MFU from the executed FLOPs at the runs' mean masking rate against the
    H100 SXM peak, the phases in ms and the launch count."""
    sys.path.insert(0, str(REPO / "scripts"))
    import gpu_check

    run = tmp_path / "bert-base"
    run.mkdir()
    rows = [{"kind": "train", "step": i, "loss": 9.0, "tokens_per_sec": tps, "mask_rate": 0.15}
            for i, tps in enumerate([1.0, 2.0, 100_000.0, 300_000.0])]
    (run / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    profile = {"forward_sec": 0.05, "backward_sec": 0.1, "all_reduce_sec": 0.0, "optimizer_sec": 0.01,
               "steady_uploads": 4.0, "steady_reads": 0, "steady_launches": 2345.0}
    (run / "summary.json").write_text(json.dumps({"profile": profile}))
    [row] = gpu_check.candle_throughput(str(tmp_path), "NVIDIA H100 80GB HBM3")
    flops = gpu_check.executed_flops_per_token("bert", 12, 768, 3072, 30522, 128, 0.15)
    assert row["tokens_per_sec"] == 200_000.0
    assert row["mfu"] == pytest.approx(200_000.0 * flops / 989e12)
    assert row["phases_ms"]["backward"] == pytest.approx(100.0) and row["launches_per_step"] == 2345.0
    text = dict((label, value) for label, value, _ in gpu_check.candle_results(str(tmp_path), "NVIDIA H100 80GB HBM3")["rows"])
    assert "2345 launches/step" in text["candle bert-base bf16 tokens/s"], text
