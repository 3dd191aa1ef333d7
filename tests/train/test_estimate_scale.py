"""`tunewright estimate --gpus N --strategy ...`: the per-device memory and time arithmetic, against numbers worked by hand."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tunewright.errors import UserError
from tunewright.train.estimate import estimate
from tunewright.train.estimate_scale import (
    Shape,
    flops_per_token,
    per_device_bytes,
    training_seconds,
)
from tunewright.train.methods import ParamCounts

GB = 1024**3
# a 1e9-parameter model, 32 layers, hidden 4096, one 1024-token row, bf16
ACTIVATIONS = 34 * 4096 * 1024 * 32  # 34 x hidden x tokens x 2 bytes / 2, for each of 32 layers = 4,563,402,752
OVERHEAD = GB // 2


def _shape(trainable: int, method: str) -> Shape:
    return Shape(ParamCounts(trainable=trainable, total=10**9), hidden=4096, layers=32, method=method, seq_len=1024)


def test_ddp_replicates_everything_on_each_device():
    got = per_device_bytes(_shape(10**9, "full"), gpus=8, strategy="ddp")
    # 4 (fp32 weights) + 4 (gradients) + 8 (AdamW moments) bytes for each of 1e9 trained parameters
    assert (got["weights"], got["gradients"], got["optimizer"], got["gathered_blocks"]) == (4e9, 4e9, 8e9, 0)
    assert got["activations"] == ACTIVATIONS
    assert got["total"] == 16e9 + ACTIVATIONS + OVERHEAD == 21_100_273_664


@pytest.mark.parametrize("strategy", ["fsdp", "zero3"])
def test_fsdp_and_zero3_split_weights_gradients_and_optimizer_over_the_devices(strategy):
    got = per_device_bytes(_shape(10**9, "full"), gpus=8, strategy=strategy)
    assert (got["weights"], got["gradients"], got["optimizer"]) == (5e8, 5e8, 1e9)
    assert got["gathered_blocks"] == 2 * (10**9 / 32) * 2 == 125_000_000  # the block computed + the one prefetched, bf16
    assert got["total"] == 2e9 + 125e6 + ACTIVATIONS + OVERHEAD == 7_225_273_664


def test_lora_shards_the_frozen_base_and_the_small_adapter_state():
    got = per_device_bytes(_shape(10**7, "lora"), gpus=4, strategy="fsdp")
    # frozen base 1e9 x 2 bytes + adapter 1e7 x 4, over 4 devices; adapter gradients 4 and moments 8 bytes each
    assert (got["weights"], got["gradients"], got["optimizer"]) == (5.1e8, 1e7, 2e7)


def test_checkpointing_keeps_one_layer_of_activations():
    got = per_device_bytes(Shape(ParamCounts(10**9, 10**9), 4096, 32, "full", 1024, checkpointing=True), 1, "ddp")
    assert got["activations"] == ACTIVATIONS / 32


def test_flops_and_time_from_a_stated_or_measured_throughput():
    full, lora = ParamCounts(10**9, 10**9), ParamCounts(10**7, 10**9)
    assert flops_per_token(full, "full") == 6e9  # 2P forward + 2P activation gradients + 2P weight gradients
    assert flops_per_token(full, "full", checkpointing=True) == 8e9  # + a second forward
    assert flops_per_token(lora, "lora") == 4e9 + 2e7  # weight gradients for the adapter only
    # 1e9 tokens x 6e9 FLOPs / (8 devices x 100 TFLOP/s) = 7500 s
    assert training_seconds(10**9, full, "full", gpus=8, tflops=100) == pytest.approx(7500)
    assert training_seconds(10**9, full, "full", gpus=8, tokens_per_s=5000) == pytest.approx(25_000)
    with pytest.raises(UserError, match="one device throughput"):
        training_seconds(10**9, full, "full", gpus=8)


def test_estimate_of_a_real_config_divides_the_sharded_parts_by_the_devices(tiny_model_dir):
    ddp = estimate(str(tiny_model_dir), method="full", gpus=2, strategy="ddp")["per_device"]
    fsdp = estimate(str(tiny_model_dir), method="full", gpus=2, strategy="fsdp")["per_device"]
    for key in ("weights", "gradients", "optimizer"):
        assert fsdp[key] == ddp[key] / 2
    assert fsdp["activations"] == ddp["activations"]


def test_estimate_cli_prints_per_device_memory_and_time_and_refuses_a_bad_strategy(tiny_model_dir):
    cmd = [sys.executable, "-m", "tunewright.cli", "estimate", "--model", str(tiny_model_dir), "--method", "full"]
    ok = subprocess.run([*cmd, "--gpus", "2", "--strategy", "zero3", "--tokens", "1000000", "--tflops", "50"],
                        check=False, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "per device: 2 GPU(s), zero3" in ok.stdout and "time: 1,000,000 tokens on 2 device(s)" in ok.stdout
    bad = subprocess.run([*cmd, "--gpus", "2", "--strategy", "zero2"], check=False, capture_output=True, text=True)
    assert bad.returncode == 2 and "--strategy zero2" in bad.stderr and "Traceback" not in bad.stderr
