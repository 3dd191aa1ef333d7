"""The paired bootstrap on constructed cases whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from tunewright.evaluate.bootstrap import (
    BETTER,
    UNCLEAR,
    WORSE,
    paired_bootstrap,
    resample_counts,
    verdict,
)
from tunewright.evaluate.metrics import loss_reducer


def test_constant_deltas_collapse_the_interval_to_the_constant():
    base = np.random.default_rng(1).uniform(0, 1, 50)
    interval = paired_bootstrap(base, base + 0.25)
    assert interval.delta == pytest.approx(0.25)
    assert interval.low == pytest.approx(0.25) and interval.high == pytest.approx(0.25)
    assert interval.verdict == BETTER


def test_identical_answers_are_no_clear_difference():
    scores = np.random.default_rng(2).uniform(0, 1, 30)
    interval = paired_bootstrap(scores, scores.copy())
    assert (interval.delta, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert interval.verdict == UNCLEAR


def test_symmetric_noise_around_zero_contains_zero():
    deltas = np.tile([1.0, -1.0], 100)  # mean exactly 0
    interval = paired_bootstrap(np.zeros(200), deltas)
    assert interval.delta == 0.0
    assert interval.low < 0.0 < interval.high
    assert interval.verdict == UNCLEAR


def test_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(3)
    deltas = rng.normal(0.5, 1.0, 400)
    base = rng.uniform(0, 1, 400)
    interval = paired_bootstrap(base, base + deltas, resamples=2000)
    half_width = 1.96 * deltas.std(ddof=1) / np.sqrt(len(deltas))
    assert interval.delta == pytest.approx(deltas.mean())
    assert interval.low == pytest.approx(deltas.mean() - half_width, abs=0.2 * half_width)
    assert interval.high == pytest.approx(deltas.mean() + half_width, abs=0.2 * half_width)
    assert interval.verdict == BETTER


def test_lower_is_better_for_loss_and_the_ratio_is_resampled_as_a_ratio():
    rng = np.random.default_rng(4)
    tokens = rng.integers(5, 50, 60).astype(float)
    base = np.column_stack([tokens * 2.0, tokens])  # loss 2.0 per token everywhere
    tuned = np.column_stack([tokens * 1.5, tokens])  # loss 1.5 per token everywhere
    interval = paired_bootstrap(base, tuned, loss_reducer, higher_is_better=False)
    assert interval.delta == pytest.approx(-0.5)
    assert interval.low == pytest.approx(-0.5) and interval.high == pytest.approx(-0.5)
    assert interval.verdict == BETTER
    assert paired_bootstrap(tuned, base, loss_reducer, higher_is_better=False).verdict == WORSE


def test_seeded_and_reproducible():
    rng = np.random.default_rng(5)
    base, tuned = rng.uniform(0, 1, 40), rng.uniform(0, 1, 40)
    assert paired_bootstrap(base, tuned, seed=7) == paired_bootstrap(base, tuned, seed=7)
    assert paired_bootstrap(base, tuned, seed=7).low != paired_bootstrap(base, tuned, seed=8).low


def test_pairing_removes_the_between_example_spread():
    # examples differ wildly in difficulty but tuned is always exactly 0.01 better: an unpaired
    # comparison would call this noise, the paired one must not
    difficulty = np.random.default_rng(6).uniform(0, 1, 100)
    assert paired_bootstrap(difficulty, difficulty + 0.01).verdict == BETTER


def test_resample_counts_are_bootstrap_draws():
    blocks = list(resample_counts(12, resamples=600, seed=0))
    counts = np.concatenate(blocks)
    assert counts.shape == (600, 12)
    assert (counts.sum(axis=1) == 12).all()
    assert counts.mean() == pytest.approx(1.0, abs=0.05)


def test_verdict_rules():
    assert verdict(0.1, 0.3, True) == BETTER
    assert verdict(0.1, 0.3, False) == WORSE
    assert verdict(-0.3, -0.1, False) == BETTER
    assert verdict(-0.1, 0.3, True) == UNCLEAR
    assert verdict(0.0, 0.3, True) == UNCLEAR  # touching zero is not excluding it
    assert verdict(0.1, 0.3, None) == "higher" and verdict(-0.3, -0.1, None) == "lower"
    assert verdict(float("nan"), 0.3, True) == UNCLEAR


def test_mismatched_sides_are_refused():
    with pytest.raises(ValueError, match="same examples"):
        paired_bootstrap(np.zeros(3), np.zeros(4))
