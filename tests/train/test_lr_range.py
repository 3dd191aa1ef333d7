"""The learning-rate range test: its rule on planted curves, and a real run it leaves untouched but for the rate."""
from __future__ import annotations

import itertools
import math

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


def test_a_tenth_of_the_rate_at_the_lowest_loss_is_chosen():
    lrs = lr_schedule("lora", 30)
    best = 20  # a planted curve: falls until lrs[20], then blows up
    losses = [3.0 - 0.1 * k if k <= best else 1.0 + (k - best) ** 2 for k in range(30)]
    lr, reason = pick_learning_rate(lrs, losses)
    assert lr == pytest.approx(lrs[best] / 10, rel=0.05)
    assert "range test" in reason


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
    text = (measured / "config.yaml").read_text()
    lr = yaml.safe_load(text)["train"]["learning_rate"]
    assert 1e-6 < lr < 1e-2 and not math.isclose(lr, 2e-4)
    assert "range test" in next(line for line in text.splitlines() if "learning_rate:" in line)
    # the same run with that rate given: identical adapter, so the test put weights and random state back
    given = tmp_path / "given"
    train(load_config(model=str(tiny_model_dir), data__train=str(data), output_dir=str(given),
                      overrides=[*sets, f"train.learning_rate={lr}"]))
    assert_same_adapter(measured, given)
