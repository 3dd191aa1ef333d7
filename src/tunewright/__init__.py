"""tunewright: fine-tune open language models on your examples, prove it beats the base, ship it."""
from __future__ import annotations

__version__ = "0.1.0"

import sys
import types

from .config import RunConfig, load_config
from .errors import UserError


def train(config, resume: bool = False):
    """Fine-tune per `config` (a RunConfig or a YAML path), then compare with the base; returns a RunResult."""
    from .workflow import train_and_evaluate

    return train_and_evaluate(config if isinstance(config, RunConfig) else load_config(config), resume=resume)


_train = train


class _CallableTrainPackage(types.ModuleType):
    """The subpackage `tunewright.train`, which calling trains exactly as the function `tunewright.train` does."""

    def __call__(self, config, resume: bool = False):
        return _train(config, resume=resume)


class _Package(types.ModuleType):
    """Keeps `tunewright.train(config)` callable once the subpackage of the same name is imported.

    Importing `tunewright.train.*` sets the subpackage as the attribute `train` of this package,
    replacing the function (the first `tunewright.train()` call does that import, so a second call
    failed with "'module' object is not callable"). The subpackage becomes callable instead, so both
    `tunewright.train(config)` and `import tunewright.train.loop` keep working.
    """

    def __setattr__(self, name: str, value) -> None:
        if name == "train" and isinstance(value, types.ModuleType):
            value.__class__ = _CallableTrainPackage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def evaluate(run_or_model: str, data, **kwargs):
    from .evaluate import evaluate as _evaluate

    return _evaluate(run_or_model, data=data, **kwargs)


def merge(run: str, output: str):
    from .export import merge as _merge

    return _merge(run, output)


def export(run: str, fmt: str = "hf", quant: str = "f16", output: str | None = None):
    from .export import export as _export

    return _export(run, fmt=fmt, quant=quant, output=output)


def serve(models, **kwargs):
    from .serve import serve as _serve

    return _serve(models, **kwargs)


__all__ = ["RunConfig", "UserError", "evaluate", "export", "load_config", "merge", "serve", "train"]
