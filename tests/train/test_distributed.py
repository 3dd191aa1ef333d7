"""The distributed path: the same `train` command under torchrun, two CPU processes on gloo.

Every run here pins `train.precision=fp32`: `auto` resolves to bf16 on CPUs with avx512_bf16 or
amx_bf16, and bf16 rounding (about 1e-2 on these adapters) is far above the 1e-5 tolerance that
proves one process and two compute the same maths. The bf16 path has its own test,
tests/train/test_bf16.py, with a tolerance stated for bf16.
"""
from __future__ import annotations

from pathlib import Path

import torch
from distributed_runs import _rows, train_one_and_two_processes
from helpers import write_jsonl


def _train_args(model_dir: Path, data: Path, max_steps: int) -> list[str]:
    return ["-m", "tunewright.cli", "train", "--model", str(model_dir), "--data", str(data),
            "--set", f"train.max_steps={max_steps}", "--set", "train.batch_size=8", "--set", "train.learning_rate=1e-2",
            "--set", "lora.dropout=0", "--set", "train.threads=1", "--set", "eval.after_train=false",
            "--set", "train.precision=fp32"]


def _one_and_two_processes(model_dir: Path, data: Path, max_steps: int, tmp_path: Path) -> tuple[dict, dict]:
    """Adapter tensors from one process and from two gloo processes under torchrun."""
    from safetensors.torch import load_file

    args = _train_args(model_dir, data, max_steps)
    one, two = train_one_and_two_processes(args, tmp_path)
    return (load_file(str(one / "adapter" / "adapter_model.safetensors")),
            load_file(str(two / "adapter" / "adapter_model.safetensors")))


def _assert_same_adapter(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        torch.testing.assert_close(v, b[k], atol=1e-5, rtol=1e-4)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k), "training moved the adapter"


def test_two_gloo_processes_give_the_same_adapter_as_one_process(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", _rows(32))
    _assert_same_adapter(*_one_and_two_processes(tiny_model_dir, data, 4, tmp_path))


def test_a_step_with_fewer_examples_than_processes_neither_hangs_nor_changes_the_maths(tiny_model_dir, tmp_path):
    # 9 examples, batch 8: step 2 holds one example, so rank 1 has none for that step
    data = write_jsonl(tmp_path / "train.jsonl", _rows(9))
    _assert_same_adapter(*_one_and_two_processes(tiny_model_dir, data, 2, tmp_path))
