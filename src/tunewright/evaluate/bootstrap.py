"""Paired bootstrap confidence intervals for "tuned minus base", and the verdict they support.

Both models answered the same examples, so each resample draws examples (with replacement) and
recomputes both sides on that same draw: the interval reflects how much the difference depends on
which examples happened to be in the test set. Resamples are drawn as multinomial counts, so any
metric that reduces from column sums (means, ratios, corpus BLEU/chrF) works unchanged.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np

from .metrics import Reducer, mean_reducer

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
_CHUNK = 250  # resamples per block: bounds memory at _CHUNK * n counts

BETTER, WORSE, UNCLEAR = "better", "worse", "no clear difference"


@dataclass(frozen=True)
class DeltaInterval:
    delta: float  # tuned - base on the full test set
    low: float
    high: float
    verdict: str  # better | worse | no clear difference | higher | lower

    def to_dict(self) -> dict:
        return asdict(self)


def resample_counts(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Iterator[np.ndarray]:
    """Blocks of `(b, n)` counts: how often each example appears in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < resamples:
        b = min(_CHUNK, resamples - done)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)
        done += b


def paired_bootstrap(
    base: np.ndarray,
    tuned: np.ndarray,
    reduce: Reducer = mean_reducer,
    higher_is_better: bool | None = True,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = 0.95,
) -> DeltaInterval:
    """Percentile interval of reduce(tuned) - reduce(base) over paired resamples of the examples."""
    base, tuned = _as_stats(base), _as_stats(tuned)
    if base.shape[0] != tuned.shape[0]:
        raise ValueError(f"paired bootstrap needs the same examples on both sides ({base.shape[0]} vs {tuned.shape[0]})")
    n = base.shape[0]
    delta = float(reduce(tuned.sum(0, keepdims=True), n)[0] - reduce(base.sum(0, keepdims=True), n)[0])
    if n == 0 or not math.isfinite(delta):
        return DeltaInterval(_finite_or_nan(delta), math.nan, math.nan, UNCLEAR)
    deltas = np.concatenate([reduce(c @ tuned, n) - reduce(c @ base, n) for c in resample_counts(n, resamples, seed)])
    low, high = _percentile_interval(deltas, delta, confidence)
    return DeltaInterval(delta, low, high, verdict(low, high, higher_is_better))


def _percentile_interval(deltas: np.ndarray, delta: float, confidence: float) -> tuple[float, float]:
    """The central `confidence` share of the resampled deltas; exactly `delta` when they all agree."""
    if np.allclose(deltas, delta, rtol=1e-12, atol=1e-12):
        return delta, delta  # float noise from summing in another order must not read as uncertainty
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.nanpercentile(deltas, [tail, 100 - tail])
    return float(low), float(high)


def verdict(low: float, high: float, higher_is_better: bool | None) -> str:
    """Better or worse only when the whole interval sits on one side of zero."""
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0.0 <= high:
        return UNCLEAR
    up = low > 0.0
    if higher_is_better is None:
        return "higher" if up else "lower"
    return BETTER if up == higher_is_better else WORSE


def _as_stats(values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return arr.reshape(-1, 1) if arr.ndim == 1 else arr


def _finite_or_nan(x: float) -> float:
    return x if math.isfinite(x) else math.nan
