"""The bf16 path, run on purpose: `train.precision=bf16` trains in bf16 autocast and follows fp32.

Tests that compare numbers exactly pin `train.precision=fp32` (on CPUs with avx512_bf16/amx_bf16
`auto` means bf16, whose rounding is far above their tolerances); this one runs bf16 explicitly,
where the processor has it, and states the tolerance bf16 is held to. Both runs share one process,
so this also proves a second `train()` may change precision (accelerate's process-wide state refused).
"""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers import repeat_word_rows, write_jsonl

from tunewright.config import load_config
from tunewright.train import train
from tunewright.train.hparams import native_bf16

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where train() runs
pytestmark = pytest.mark.skipif(
    not native_bf16(DEVICE),
    reason=f"no native bf16 on {DEVICE.type} (CPU: no avx512_bf16/amx_bf16): emulated bf16 is about 100x slower and auto never picks it",
)

# Per-step training loss, bf16 against fp32 from the same seed, as max |bf16 - fp32| / fp32.
# Measured on an amx_bf16 CPU: 7.2e-5 over 6 steps (loss 6.55 -> 6.14). The loss is an fp32 sum over
# every trained token, so bf16's per-operation rounding (2^-8 = 3.9e-3) mostly averages out; the bound
# is about 14x the measurement and a quarter of one bf16 rounding step, room for other CPUs' kernels.
BF16_LOSS_RTOL = 1e-3



def _train(model_dir, data, out, precision: str):
    overrides = [f"train.precision={precision}", "train.max_steps=6", "train.batch_size=8", "train.learning_rate=1e-2",
                 "lora.dropout=0", "train.threads=1", "eval.after_train=false"]
    return train(load_config(model=str(model_dir), data__train=str(data), output_dir=str(out), overrides=overrides))


def test_bf16_training_runs_in_bf16_autocast_and_follows_the_fp32_loss_curve(tiny_model_dir, tmp_path, monkeypatch):
    from tunewright.train import loop

    autocast_seen: list[torch.dtype | None] = []
    select = loop.select_trained_positions

    def spy(hidden, labels):  # called inside the loss module's forward, where autocast is on or off
        device = hidden.device.type
        autocast_seen.append(torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None)
        return select(hidden, labels)

    monkeypatch.setattr(loop, "select_trained_positions", spy)
    data = write_jsonl(tmp_path / "train.jsonl", repeat_word_rows(48))
    losses, seen = {}, {}
    for precision in ("fp32", "bf16"):
        autocast_seen.clear()
        run = tmp_path / precision
        _train(tiny_model_dir, data, run, precision)
        assert yaml.safe_load((run / "config.yaml").read_text())["train"]["precision"] == precision
        losses[precision] = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        seen[precision] = set(autocast_seen)
    assert seen == {"fp32": {None}, "bf16": {torch.bfloat16}}, "bf16 must run every forward in bf16 autocast, fp32 none"
    fp32, bf16 = torch.tensor(losses["fp32"]), torch.tensor(losses["bf16"])
    assert len(fp32) == len(bf16) == 6
    assert fp32[-1] < fp32[0], "training lowered the loss"
    relative = ((bf16 - fp32).abs() / fp32).max().item()
    print(f"largest per-step relative loss difference bf16 vs fp32: {relative:.2e}")
    assert not torch.equal(fp32, bf16), "bf16 rounding must show: the two runs cannot be bit-identical"
    assert relative < BF16_LOSS_RTOL, (losses, relative)
