"""Where a run stands: the one record a checkpoint saves, the loop updates and the summary reads.

`TrainState` is what `trainer_state.json` holds; `LoopResult` is that state at the end of the loop plus
how the loop ended. Totals (tokens, seconds) cover the whole run, resumed or not.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

# train.best_metric's choices, and whether a higher value is better
HIGHER_IS_BETTER = {"eval_loss": False, "eval_exact_match": True, "eval_token_accuracy": True, "eval_preference_accuracy": True}


def selection_error(metric: str, value: float) -> float:
    """A metric as an error to minimize: the loss itself, or 1 - an accuracy."""
    return 1.0 - value if HIGHER_IS_BETTER[metric] else value


def selection_key(metric: str, value: float, eval_loss: float) -> tuple[float, float]:
    """Smaller is better: the metric's error, then the validation loss.

    The loss breaks ties of a coarse metric: exact match over 199 rows moves in steps of 0.005 and stays level
    for several evaluations while the loss still separates them.
    """
    return selection_error(metric, value), eval_loss


@dataclass
class TrainState:
    """A run's position and totals; `step` counts finished optimizer steps (metrics.jsonl's `step` of the last one)."""

    step: int = 0
    trained_tokens: int = 0  # the tokens the loss was computed on
    real_tokens: int = 0  # non-padding tokens of the micro-batches (metrics.jsonl's cumulative `tokens`)
    padded_tokens: int = 0  # tokens including padding
    train_seconds: float = 0.0
    best_eval_loss: float | None = None  # the validation loss at the best evaluation
    best_score: float | None = None  # train.best_metric's value there (the same as best_eval_loss for eval_loss)
    best_step: int | None = None
    best_checkpoint: str | None = None  # checkpoints/step-N when the best evaluation fell on a save step
    evals_without_gain: int = 0  # evaluations since the best one (early stopping's count)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, saved: dict) -> TrainState:
        """A trainer_state.json read back; unknown keys are ignored.

        Files written before this type had `tokens`, the same count as `real_tokens`: read as that. Files
        written before `best_score` chose the best evaluation by validation loss: their score is that loss.
        """
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in saved.items() if k in known}
        if "real_tokens" not in values and "tokens" in saved:
            values["real_tokens"] = saved["tokens"]
        if "best_score" not in values:
            values["best_score"] = saved.get("best_eval_loss")
        return cls(**values)

    def record_eval(self, row: dict, metric: str = "eval_loss") -> bool:
        """Count an evaluation (a metrics row) at `self.step`; True when it is the best so far by `metric`."""
        score, loss = float(row[metric]), float(row["eval_loss"])
        if self.best_score is None or (selection_key(metric, score, loss)
                                      < selection_key(metric, self.best_score, self.best_eval_loss)):
            self.best_eval_loss, self.best_score, self.best_step, self.evals_without_gain = loss, score, self.step, 0
            self.best_checkpoint = None  # set by the loop when this step is also a save step
            return True
        self.evals_without_gain += 1
        return False


@dataclass
class LoopResult:
    """How the loop ended: its final state, the last losses, and whether early stopping ended it."""

    state: TrainState
    final_loss: float | None = None
    final_eval_loss: float | None = None
    stopped_early: bool = False
    weights_step: int | None = None  # the step whose weights are the result, when not the last (best restored)
    peak_memory_bytes: int = 0
