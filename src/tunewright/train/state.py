"""Where a run stands: the one record a checkpoint saves, the loop updates and the summary reads.

`TrainState` is what `trainer_state.json` holds; `LoopResult` is that state at the end of the loop plus
how the loop ended. Totals (tokens, seconds) cover the whole run, resumed or not.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class TrainState:
    """A run's position and totals; `step` counts finished optimizer steps (metrics.jsonl's `step` of the last one)."""

    step: int = 0
    trained_tokens: int = 0  # the tokens the loss was computed on
    real_tokens: int = 0  # non-padding tokens of the micro-batches (metrics.jsonl's cumulative `tokens`)
    padded_tokens: int = 0  # tokens including padding
    train_seconds: float = 0.0
    best_eval_loss: float | None = None
    best_step: int | None = None
    best_checkpoint: str | None = None  # checkpoints/step-N when the best evaluation fell on a save step
    evals_without_gain: int = 0  # evaluations since the best one (early stopping's count)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, saved: dict) -> TrainState:
        """A trainer_state.json read back; unknown keys are ignored.

        Files written before this type had `tokens`, the same count as `real_tokens`: read as that.
        """
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in saved.items() if k in known}
        if "real_tokens" not in values and "tokens" in saved:
            values["real_tokens"] = saved["tokens"]
        return cls(**values)

    def record_eval(self, eval_loss: float) -> bool:
        """Count an evaluation at `self.step`; True when it is the best so far."""
        if self.best_eval_loss is None or eval_loss < self.best_eval_loss:
            self.best_eval_loss, self.best_step, self.evals_without_gain = eval_loss, self.step, 0
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
