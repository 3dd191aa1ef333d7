"""`tunewright estimate`: counts without loading weights, and bad sizes are user errors."""
from __future__ import annotations

import subprocess
import sys

from transformers import AutoModelForCausalLM

from tunewright.train.estimate import estimate, parse_memory


def test_parameter_count_matches_the_real_model_and_checkpointing_saves_memory(tiny_model_dir):
    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    out = estimate(str(tiny_model_dir), method="lora", seq_len=512)
    assert out["parameters"] == real
    assert out["with_checkpointing"]["activations"] < out["estimate"]["activations"]
    full = estimate(str(tiny_model_dir), method="full", seq_len=512)
    assert full["estimate"]["weights_and_optimizer"] > out["estimate"]["weights_and_optimizer"]


def test_memory_sizes_parse_and_bad_ones_exit_2(tiny_model_dir):
    assert parse_memory("16GB") == 16 * 1024**3 and parse_memory("512MiB") == 512 * 1024**2
    run = subprocess.run([sys.executable, "-m", "tunewright.cli", "estimate", "--model", str(tiny_model_dir), "--gpu-memory", "16XB"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "not a size" in run.stderr and "Traceback" not in run.stderr
