"""What a sweep searches and how long it may take: the budget, the search space, one trial's config overrides."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..config import RunConfig
from ..errors import UserError

EVALS_PER_EPOCH = 2  # validation passes per epoch: what pruning compares trials on (~10-15% of training time)
ADAPTER_METHODS = ("lora", "dora", "qlora")
_BUDGET_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_budget(text: str) -> float:
    """'30m', '1h', '1h30m', '90s' or a bare number of minutes -> seconds."""
    spec = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", spec):
        return float(spec) * 60
    m = _BUDGET_RE.match(spec)
    if not spec or not m or not any(m.groups()):
        raise UserError(f"--budget {text!r}: not a duration", "write it as 30m, 1h, 1h30m or 90s")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise UserError(f"--budget {text!r}: must be longer than zero", "give the sweep some time, e.g. --budget 30m")
    return total


@dataclass(frozen=True)
class SearchSpace:
    """The ranges trials are drawn from (Optuna TPE); LoRA rank only for adapter methods."""

    learning_rate: tuple[float, float] = (3e-5, 2e-3)  # log-uniform
    lora_r: tuple[int, ...] = (4, 8, 16, 32)  # alpha follows as 2 x r, the usual ratio
    batch_size: tuple[int, ...] = (4, 8, 16, 32)
    epochs: tuple[int, int] = (1, 4)  # the upper end shrinks to what the remaining budget affords

    def as_dict(self) -> dict:
        return {"learning_rate": list(self.learning_rate), "lora_r": list(self.lora_r),
                "batch_size": list(self.batch_size), "epochs": list(self.epochs)}


def distributions(space: SearchSpace, method: str, max_epochs: int | None = None) -> dict:
    """The space as Optuna distributions (LoRA rank only for adapter methods), epochs capped at `max_epochs`.

    One definition for what TPE draws (`sample_params`) and for the points it is told (`study.tell_known`).
    """
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    top = space.epochs[1] if max_epochs is None else max(space.epochs[0], min(space.epochs[1], max_epochs))
    dists = {"learning_rate": FloatDistribution(*space.learning_rate, log=True),
             "batch_size": CategoricalDistribution(list(space.batch_size)),
             "epochs": IntDistribution(space.epochs[0], top)}
    if method in ADAPTER_METHODS:
        dists["lora_r"] = CategoricalDistribution(list(space.lora_r))
    return dists


def sample_params(trial, space: SearchSpace, method: str, max_epochs: int) -> dict:
    """One trial's hyperparameters, drawn by Optuna (an enqueued trial gets its fixed values back)."""
    return {name: _suggest(trial, name, dist) for name, dist in distributions(space, method, max_epochs).items()}


def _suggest(trial, name: str, dist):
    from optuna.distributions import FloatDistribution, IntDistribution

    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high)
    return trial.suggest_categorical(name, list(dist.choices))


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, math.ceil(n_train / batch_size))


def trial_overrides(params: dict, n_train: int) -> list[str]:
    """`--set` values for one trial: its hyperparameters, an evaluation every 1/EVALS_PER_EPOCH epoch, no checkpoints."""
    every = max(1, math.ceil(steps_per_epoch(n_train, params["batch_size"]) / EVALS_PER_EPOCH))
    sets = [f"train.learning_rate={params['learning_rate']!r}", f"train.batch_size={params['batch_size']}",
            f"train.epochs={params['epochs']}", "train.max_steps=null", f"train.eval_every={every}",
            f"train.save_every={10**9}", "eval.after_train=false"]
    if "lora_r" in params:
        sets += [f"lora.r={params['lora_r']}", f"lora.alpha={2 * params['lora_r']}"]
    return sets


def count_train_examples(cfg: RunConfig) -> int:
    """Training rows after the validation split (what one epoch goes through), to size evaluations and budgets."""
    from ..data import load_conversations, load_pairs

    if cfg.objective == "sft":
        n = len(load_conversations(cfg.data.train, cfg.data.format).conversations)
    else:
        n = len(load_pairs(cfg.data.train, cfg.data.format).pairs)
    from ..data.dataset import with_split_resolved

    split = with_split_resolved(cfg.data, n).validation_split
    if not cfg.data.validation and split > 0:
        n -= min(n - 1, max(1, round(n * split)))
    return max(1, n)


def require_validation(cfg: RunConfig, source: str) -> None:
    """Trials are compared and pruned on validation loss: without validation data there is nothing to compare."""
    if not cfg.data.validation and cfg.data.validation_split in (0, "auto"):  # auto splits only large sets: ask
        raise UserError(f"{source}: sweep needs validation data (data.validation or data.validation_split)",
                        "add data.validation: val.jsonl, or --set data.validation_split=0.1")
