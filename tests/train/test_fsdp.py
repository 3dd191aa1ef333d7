"""Full fine-tuning sharded with FSDP2 (through Accelerate) on two gloo CPU processes under torchrun.

Every run pins `train.precision=fp32` (auto is bf16 on this CPU). One process and two compute the
same maths in a different summation order (FSDP reduce-scatters averaged gradient shards), so the
weights agree to ATOL/RTOL below, not bit for bit; the measured maximum difference is printed.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from distributed_runs import TORCHRUN_TIMEOUT_S, _rows, _run_bounded, torchrun_cmd
from helpers import write_jsonl
from safetensors.torch import load_file

from tunewright.train.metrics_log import metrics_path, read_metrics

ATOL, RTOL = 1e-5, 1e-4  # fp32 weights after 4 AdamW steps at lr 1e-3: measured max |diff| ~1e-7


def _args(model_dir: Path, data: Path, out: Path, max_steps: int = 4) -> list[str]:
    return ["-m", "tunewright.cli", "train", "--model", str(model_dir), "--data", str(data), "--method", "full",
            "--output", str(out), "--set", f"train.max_steps={max_steps}", "--set", "train.batch_size=8",
            "--set", "train.learning_rate=1e-3", "--set", "train.threads=1", "--set", "eval.after_train=false",
            "--set", "train.precision=fp32", "--set", "train.distributed=fsdp", "--set", "train.save_every=2",
            "--set", "train.save_total_limit=5"]


def _ok(cmd: list[str]) -> subprocess.CompletedProcess:
    done = _run_bounded(cmd, TORCHRUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _assert_close(a: dict, b: dict, label: str) -> None:
    print(f"{label}: max |diff| {_max_diff(a, b):.2e}")
    for k, value in a.items():
        torch.testing.assert_close(value, b[k], atol=ATOL, rtol=RTOL, msg=lambda m, k=k: f"{label} {k}: {m}")


@pytest.fixture(scope="module")
def fsdp_runs(tiny_model_dir, tmp_path_factory):
    """One process, and two FSDP processes, full fine-tuning the same 4 steps of batch 8 (made once)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    data = write_jsonl(tmp / "train.jsonl", _rows(32))
    _ok([sys.executable, *_args(tiny_model_dir, data, tmp / "one")])
    _ok(torchrun_cmd(_args(tiny_model_dir, data, tmp / "two")))
    return {"one": tmp / "one", "two": tmp / "two", "data": data, "base": tiny_model_dir}


def test_two_fsdp_processes_give_the_same_weights_as_one_process(fsdp_runs):
    summary = json.loads((fsdp_runs["two"] / "summary.json").read_text())
    assert summary["distributed"] == {"strategy": "fsdp", "processes": 2}, "the two-process run was not sharded"
    one, two = _weights(fsdp_runs["one"]), _weights(fsdp_runs["two"])
    base = load_file(str(fsdp_runs["base"] / "model.safetensors"))
    assert _max_diff(one, {k: base[k] for k in one}) > 1e-3, "training moved the weights"
    _assert_close(one, two, "1 vs 2 FSDP processes")


def test_the_sharded_run_saves_a_model_folder_stock_transformers_loads(fsdp_runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = fsdp_runs["two"] / "model"
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    saved = _weights(fsdp_runs["two"])
    for name, tensor in model.state_dict().items():
        if name in saved:  # the tied head is stored once, as the embedding
            assert torch.equal(tensor, saved[name]), name
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out = model.generate(**tokenizer("hello", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] > 1


def _kill_family(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and every worker (they run in sessions of their own), as a lost node would."""
    family = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=30)
    proc.wait()


def _kill_at_checkpoint(cmd: list[str], run: Path, step: int) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + TORCHRUN_TIMEOUT_S
    try:
        while not (run / "checkpoints" / f"step-{step}" / "COMPLETE").exists():
            assert proc.poll() is None, "training ended before the checkpoint"
            assert time.time() < deadline, "no checkpoint in time"
            time.sleep(0.02)
    finally:
        _kill_family(proc)
    assert not (run / "model").exists(), "killed before the end"


def _resume_and_compare(args: list[str], run: Path, reference: Path, processes: int) -> None:
    resume = [*args, "--output", str(run), "--resume"]
    _ok(torchrun_cmd(resume) if processes == 2 else [sys.executable, *resume])
    assert [r["step"] for r in read_metrics(metrics_path(run))] == [1, 2, 3, 4]
    _assert_close(_weights(reference), _weights(run), f"resumed on {processes} vs uninterrupted")


def test_a_killed_fsdp_run_resumes_exactly_on_two_processes_and_gathered_on_one(fsdp_runs, tmp_path):
    """SIGKILL both processes after the step-2 checkpoint; --resume on 2 processes, and on 1 (a copy), ends where the uninterrupted run did."""
    run = tmp_path / "killed"
    args = _args(fsdp_runs["base"], fsdp_runs["data"], run)
    _kill_at_checkpoint(torchrun_cmd(args), run, step=2)
    shutil.copytree(run, tmp_path / "on-one")
    _resume_and_compare(args, run, fsdp_runs["two"], processes=2)
    _resume_and_compare(args, tmp_path / "on-one", fsdp_runs["two"], processes=1)
