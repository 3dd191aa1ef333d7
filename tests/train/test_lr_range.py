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


def _sigmoid_fall(lr: float, start: float = 6.0, floor: float = 1.5, centre: float = 3e-4) -> float:
    """A planted smoothed curve: `start` at small rates, `floor` at large ones, falling around `centre`."""
    return floor + (start - floor) / (1 + (lr / centre) ** 4)


GRID_POINT = lr_schedule("lora", 30)[1] / lr_schedule("lora", 30)[0]  # x1.27


def test_the_rate_sixty_percent_down_the_fall_in_log_loss_is_chosen():
    lrs = lr_schedule("lora", 30)
    lr, reason = pick_learning_rate(lrs, [_sigmoid_fall(x) for x in lrs])
    level = 6.0 * (1.5 / 6.0) ** 0.6  # 60% of the way from 6 down to 1.5, in log: 2.61
    there = 3e-4 * (4.5 / (level - 1.5) - 1) ** 0.25  # where 1.5 + 4.5 / (1 + x^4) comes down to it
    assert there / 1.05 < lr < there * 1.05  # interpolated between grid points, rounded to two digits
    assert "range test" in reason and "60% of the way down" in reason


def test_a_rise_after_the_bottom_does_not_move_the_pick():
    """Seed 1234's curve on stdlib-modules: two hard batches late turned it up, and the bottom-centre rule halved."""
    lrs = lr_schedule("lora", 30)
    falling = [_sigmoid_fall(x) for x in lrs]
    turned_up = [x + (2.0 if lr > 2e-3 else 0.0) for x, lr in zip(falling, lrs)]
    assert pick_learning_rate(lrs, turned_up)[0] == pick_learning_rate(lrs, falling)[0]


def test_a_curve_read_to_its_first_nan():
    lrs = lr_schedule("lora", 30)
    losses = [_sigmoid_fall(x) for x in lrs[:18]] + [math.nan] * 12  # diverged to NaN at lrs[18]
    lr, reason = pick_learning_rate(lrs, losses)
    assert lr == pick_learning_rate(lrs[:18], losses[:18])[0]
    assert "(18 steps)" in reason


def _flat(seed: int, spread: float = 0.3) -> list[float]:
    """Single batches' losses scattered by ~`spread` (log) around 2.0: no descent at all."""
    rng = random.Random(seed)
    return [2.0 * math.exp(spread * rng.gauss(0, 1)) for _ in range(30)]


def test_a_curve_with_no_fall_above_its_noise_mostly_places_no_rate():
    lrs = lr_schedule("lora", 30)
    placed = [pick_learning_rate(lrs, smoothed(raw), raw) for raw in (_flat(seed) for seed in range(40))]
    assert sum(lr is not None for lr, _ in placed) <= 4  # noise alone seldom looks like a fall
    assert "no fall above the steps' noise" in next(reason for lr, reason in placed if lr is None)
    falling = [_batch_losses(lrs, seed, 0.3) for seed in range(40)]  # the same scatter on a real curve's fall (3 -> 0.6)
    assert sum(pick_learning_rate(lrs, smoothed(raw), raw)[0] is not None for raw in falling) >= 38
    assert pick_learning_rate(lrs, [1.0 + 0.1 * k * k for k in range(30)])[0] is None  # rose from the first step


def _flat_bottomed(lr: float) -> float:
    """A realistic smoothed curve: ~3 at the smallest rates, ~0.6 from ~1e-3 to ~5e-3 (7 grid points), diverging past that."""
    return 0.6 + 2.4 / (1 + (lr / 3e-4) ** 4) + (0.6 * ((lr / 5e-3) ** 4 - 1) if lr > 5e-3 else 0.0)


@pytest.mark.parametrize("size", [0.01, 0.02, 0.03])
def test_the_pick_stays_within_a_grid_point_when_rounding_noise_moves_a_flat_bottoms_lowest_point(size):
    """Each smoothed loss off by ~`size` of itself, as a different thread count's bf16 reduction order leaves it."""
    lrs = lr_schedule("lora", 30)
    curves = [[_flat_bottomed(lr) * (1 + size * random.Random(seed * 100 + k).gauss(0, 1)) for k, lr in enumerate(lrs)]
              for seed in range(8)]
    lowest = [lrs[min(range(30), key=c.__getitem__)] for c in curves]
    assert max(lowest) / min(lowest) > GRID_POINT ** 2  # the planted noise moves the lowest point by more than 2 grid points
    picks = [pick_learning_rate(lrs, c)[0] for c in curves]
    assert max(picks) / min(picks) <= 1.1, picks


def _batch_losses(lrs: list[float], seed: int, spread: float) -> list[float]:
    """Single micro-batches' losses around a flat-bottomed curve: each off by a factor of ~exp(spread), as batches differ."""
    rng = random.Random(seed)
    return [_flat_bottomed(lr) * math.exp(spread * rng.gauss(0, 1)) for lr in lrs]


def test_single_batches_noise_moves_the_pick_by_about_a_grid_point():
    """Each step's loss off by ~15% (x exp(0.15 N(0,1))), as the descent of the real stdlib-modules curves scatters."""
    lrs = lr_schedule("lora", 30)
    clean = [_flat_bottomed(lr) for lr in lrs]
    noiseless = pick_learning_rate(lrs, smoothed(clean), clean)[0]
    picks = sorted(pick_learning_rate(lrs, smoothed(raw), raw)[0] for raw in (_batch_losses(lrs, seed, 0.15) for seed in range(16)))
    assert max(picks) / min(picks) < GRID_POINT ** 1.5, picks
    assert noiseless / 1.1 < picks[8] < noiseless * 1.1  # the median pick is the noiseless curve's


def _rows(n: int) -> list[dict]:
    words = ["apple", "river", "stone", "cloud", "green", "tiger", "paper", "light"]
    return [{"messages": [{"role": "user", "content": f"Repeat {words[i % 8]}."}, {"role": "assistant", "content": words[i % 8]}]}
            for i in range(n)]


def test_the_range_test_sets_the_rate_saves_its_curve_and_restores_the_model(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", _rows(480))
    sets = ["train.max_steps=4", "train.threads=1", "train.precision=fp32", "eval.after_train=false", "lora.dropout=0.3"]
    measured = tmp_path / "measured"
    train(load_config(model=str(tiny_model_dir), data__train=str(data), output_dir=str(measured),
                      overrides=[*sets, "train.lr_range_test=true"]))
    assert (measured / "lr_range.png").stat().st_size > 1000
    record = json.loads((measured / "lr_range.json").read_text())  # enough to re-derive the pick offline
    assert len(record["lrs"]) == len(record["raw_losses"]) == len(record["smoothed_losses"]) > 1
    assert record["smoothed_losses"] == pytest.approx(smoothed(record["raw_losses"]))
    assert pick_learning_rate(record["lrs"], record["smoothed_losses"], record["raw_losses"])[0] == record["chosen"]
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
