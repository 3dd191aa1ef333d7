"""The learning-rate range test: its rule on planted curves, and a real run it leaves untouched but for the rate."""
from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import yaml
from helpers import assert_same_adapter, write_jsonl

from tunewright.config import load_config
from tunewright.train import train
from tunewright.train.lr_range import lr_schedule, pick_learning_rate, smoothed


def test_the_schedule_spans_the_methods_range_exponentially():
    lrs = lr_schedule("lora", 30)
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-2)
    ratios = {round(b / a, 9) for a, b in itertools.pairwise(lrs)}
    assert len(ratios) == 1


def test_smoothing_is_bias_corrected():
    assert smoothed([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])


def test_a_tenth_of_the_rate_at_a_sharp_minimum_is_chosen():
    lrs = lr_schedule("lora", 30)
    best = 20  # a planted curve: falls until lrs[20], then blows up
    losses = [3.0 - 0.1 * k if k <= best else 1.0 + (k - best) ** 2 for k in range(30)]
    lr, reason = pick_learning_rate(lrs, losses)
    assert lrs[best - 1] / 10 < lr <= lrs[best] / 10  # a sharp bottom is its lowest point, to within a grid point
    assert "range test" in reason


def test_a_curve_that_never_turns_up_is_read_to_its_last_rate():
    lrs = lr_schedule("lora", 30)
    lr, _ = pick_learning_rate(lrs, [3.0 - 0.08 * k for k in range(30)])
    assert lrs[-2] / 10 < lr <= lrs[-1] / 10


def test_a_curve_that_rises_from_the_first_step_gives_about_a_tenth_of_the_first_rate():
    lrs = lr_schedule("lora", 30)
    lr, _ = pick_learning_rate(lrs, [1.0 + 0.1 * k * k for k in range(30)])
    assert lr == pytest.approx(lrs[0] / 10, rel=0.1)


def test_the_curve_is_read_up_to_its_first_nan():
    lrs = lr_schedule("lora", 30)
    losses = [3.0 - 0.1 * k for k in range(18)] + [math.nan] * 12  # diverged to NaN at lrs[18]
    lr, _ = pick_learning_rate(lrs, losses)
    assert lr == pick_learning_rate(lrs[:18], losses[:18])[0]
    assert lrs[16] / 10 < lr <= lrs[17] / 10


def _flat_bottomed(lr: float) -> float:
    """A realistic smoothed curve: ~3 at the smallest rates, ~0.6 from ~1e-3 to ~5e-3 (7 grid points), diverging past that."""
    return 0.6 + 2.4 / (1 + (lr / 3e-4) ** 4) + (0.6 * ((lr / 5e-3) ** 4 - 1) if lr > 5e-3 else 0.0)


def _with_noise(losses: list[float], seed: int, size: float) -> list[float]:
    """Each loss off by ~`size` of itself, as a different thread count's bf16 reduction order leaves it."""
    rng = random.Random(seed)
    return [x * (1 + size * rng.gauss(0, 1)) for x in losses]


GRID_POINT = lr_schedule("lora", 30)[1] / lr_schedule("lora", 30)[0]  # x1.27


@pytest.mark.parametrize("size", [0.01, 0.02, 0.03])
def test_the_pick_stays_within_a_grid_point_when_noise_moves_a_flat_bottoms_lowest_point(size):
    lrs = lr_schedule("lora", 30)
    curves = [_with_noise([_flat_bottomed(lr) for lr in lrs], seed, size) for seed in range(8)]
    lowest = [lrs[min(range(30), key=c.__getitem__)] for c in curves]
    assert max(lowest) / min(lowest) > GRID_POINT ** 2  # the planted noise moves the lowest point by more than 2 grid points
    picks = [pick_learning_rate(lrs, c)[0] for c in curves]
    assert max(picks) / min(picks) <= 1.3, picks


def _rows(n: int) -> list[dict]:
    words = ["apple", "river", "stone", "cloud", "green", "tiger", "paper", "light"]
    return [{"messages": [{"role": "user", "content": f"Repeat {words[i % 8]}."}, {"role": "assistant", "content": words[i % 8]}]}
            for i in range(n)]


def test_the_range_test_sets_the_rate_saves_its_curve_and_restores_the_model(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", _rows(64))
    sets = ["train.max_steps=4", "train.threads=1", "train.precision=fp32", "eval.after_train=false", "lora.dropout=0.3"]
    measured = tmp_path / "measured"
    train(load_config(model=str(tiny_model_dir), data__train=str(data), output_dir=str(measured),
                      overrides=[*sets, "train.lr_range_test=true"]))
    assert (measured / "lr_range.png").stat().st_size > 1000
    record = json.loads((measured / "lr_range.json").read_text())  # enough to re-derive the pick offline
    assert len(record["lrs"]) == len(record["raw_losses"]) == len(record["smoothed_losses"]) > 1
    assert record["smoothed_losses"] == pytest.approx(smoothed(record["raw_losses"]))
    assert pick_learning_rate(record["lrs"], record["smoothed_losses"])[0] == record["chosen"]
    text = (measured / "config.yaml").read_text()
    lr = yaml.safe_load(text)["train"]["learning_rate"]
    assert 1e-6 < lr < 1e-2 and not math.isclose(lr, 2e-4)
    assert "range test" in next(line for line in text.splitlines() if "learning_rate:" in line)
    assert lr == record["chosen"]
    # the same run with that rate given: identical adapter, so the test put weights and random state back
    given = tmp_path / "given"
    train(load_config(model=str(tiny_model_dir), data__train=str(data), output_dir=str(given),
                      overrides=[*sets, f"train.learning_rate={lr}"]))
    assert_same_adapter(measured, given)
