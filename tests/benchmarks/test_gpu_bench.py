"""benchmarks/gpu_bench.py (`make gpu-bench`): importable everywhere, refuses a machine without CUDA in one clear line.

The GPU runs themselves need a lent GPU; what a CPU can check is here: the refusal, the variant plan, the
report of variants that did not run, and trainer_peft.py's GPU-user flags (bf16 base, padding-free batches).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_bench  # noqa: E402
import varlen_report  # noqa: E402

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@needs_no_cuda
def test_without_cuda_it_exits_77_with_the_reason_and_writes_nothing(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_bench.py")], capture_output=True, text=True, check=False,
                          cwd=tmp_path, env={**__import__("os").environ, "OUT": str(tmp_path / "out")}, timeout=300)
    assert proc.returncode == gpu_bench.NO_GPU, proc.stderr[-2000:]
    assert "gpu_bench: not run: no CUDA GPU here" in proc.stderr and "benchmarks/varlen.py" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_output_goes_to_out_when_set(monkeypatch):
    monkeypatch.setenv("OUT", "/tmp/device-out")
    assert gpu_bench.output_dir(None) == Path("/tmp/device-out")
    monkeypatch.delenv("OUT")
    assert gpu_bench.output_dir(None) == Path("benchmarks/out/gpu_bench")
    assert gpu_bench.output_dir("x") == Path("x")


def test_variants_missing_a_package_say_which(monkeypatch):
    monkeypatch.setattr(gpu_bench.importlib.util, "find_spec", lambda name: None if name == "flash_attn" else object())
    plan = gpu_bench.trainer_variants()
    assert plan["trainer_peft_bf16"][1] is None and plan["trainer_peft_bf16_liger"][1] is None
    assert "flash-attn is not installed" in plan["trainer_peft_bf16_flash"][1]
    assert "flash-attn is not installed" in plan["trainer_peft_bf16_liger_flash"][1]
    assert "--padding-free" in plan["trainer_peft_bf16_flash"][0] and "--liger" in plan["trainer_peft_bf16_liger"][0]


def test_report_lists_variants_not_run_and_compares_with_the_fastest_trainer():
    ok = {"ok": True, "precision": "bf16", "peak_memory_bytes": 1e9, "final_eval_loss": 2.0, "threads": 16}
    results = {"tunewright_bf16": {**ok, "tokens_per_s": 300.0, "threads_auto": True},
               "trainer_peft_bf16": {**ok, "tokens_per_s": 100.0, "pad_share": 0.4},
               "trainer_peft_bf16_liger": {**ok, "tokens_per_s": 150.0},
               "trainer_peft_bf16_flash": {"ok": False, "reason": "flash-attn is not installed"}}
    varlen_report.add_ratios(results)
    tw = results["tunewright_bf16"]
    assert tw["vs_trainer_same_precision"] == pytest.approx(3.0)
    assert tw["vs_fastest_trainer"] == {"variant": "trainer_peft_bf16_liger", "ratio": pytest.approx(2.0)}
    report = {"results": results, "lengths": {"min": 60, "max": 2048, "mean": 900.0, "rows": 256}, "batch": 8,
              "max_len": 2048, "pad_share_in_order": 0.45, "random_init": "llama-3.2-1b", "model": "m", "lr": 2e-4,
              "small_rows": 64, "rows": 256, "machine": {"cpu": "H200", "cores": 16, "bf16": "CUDA bf16", "load_after": "0"},
              "command": "python benchmarks/gpu_bench.py"}
    md = varlen_report.render(report)
    assert "| Trainer + PEFT bf16 + flash-attention varlen (padding-free) | not run: flash-attn is not installed |" in md
    assert "vs the fastest Trainer variant (Trainer + PEFT bf16 + Liger kernels): 2.00x" in md
    assert "| tunewright bf16 | auto → 16 | 300.0 | 3.00x |" in md


def test_trainer_peft_with_a_bf16_base_and_padding_free_batches(tmp_path, tiny_model_dir):
    """The flags GPU users add, on CPU with SDPA: a flattened batch has no padding, and the run still validates."""
    out, validation = tmp_path / "r.json", tmp_path / "validation.jsonl"
    validation.write_text("".join((REPO / "examples/stdlib-qa/test.jsonl").read_text().splitlines(keepends=True)[:8]))
    cmd = [sys.executable, str(REPO / "benchmarks/trainer_peft.py"), "--model", str(tiny_model_dir), "--steps", "2",
           "--micro-batch", "4", "--max-len", "128", "--validation", str(validation),
           "--precision", "bf16", "--base-dtype", "bf16", "--attn", "sdpa", "--padding-free", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["steps"] == 2 and r["pad_share"] == 0 and r["packing"] is True
    assert r["base_dtype"] == "bf16" and r["attn"] == "sdpa" and r["precision"] == "bf16"
    assert r["trained_tokens"] > 0 and r["final_eval_loss"] > 0
