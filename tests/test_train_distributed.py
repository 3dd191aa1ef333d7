"""The distributed path: the same `train` command under torchrun, two CPU processes on gloo."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import write_jsonl


def _rows(n):
    words = ["apple", "river", "stone", "cloud", "green", "tiger", "paper", "light"]
    return [{"messages": [{"role": "user", "content": f"Say {words[i % 8]} {i % 5} times."},
                          {"role": "assistant", "content": " ".join([words[i % 8]] * (i % 5 + 1))}]} for i in range(n)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_give_the_same_adapter_as_one_process(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "train.jsonl", _rows(32))
    args = ["-m", "tunewright.cli", "train", "--model", str(tiny_model_dir), "--data", str(data),
            "--set", "train.max_steps=4", "--set", "train.batch_size=8", "--set", "train.learning_rate=1e-2",
            "--set", "lora.dropout=0", "--set", "train.threads=1", "--set", "eval.after_train=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *args, "--output", str(tmp_path / "one")], capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = Path(sys.executable).with_name("torchrun")
    multi = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()), *args, "--output", str(tmp_path / "two")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    a = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k), "training moved the adapter"
