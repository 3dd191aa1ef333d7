"""tunewright: fine-tune open language models on your examples, prove it beats the base, ship it."""
from __future__ import annotations

__version__ = "0.1.0"

import sys
import types
from collections.abc import Sequence
from pathlib import Path

from .config import RunConfig, load_config
from .errors import UserError


def train(config, resume: bool = False):
    """Fine-tune per `config` (a RunConfig or a YAML path), then compare with the base; returns a RunResult."""
    from .workflow import train_and_evaluate

    return train_and_evaluate(config if isinstance(config, RunConfig) else load_config(config), resume=resume)


def evaluate(
    run_or_model: str,
    data: str | Path | Sequence[str | Path],
    compare_base: bool | None = None,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    scorer: str | None = None,
    output_dir: str | Path | None = None,
    as_json: bool = False,
    batch_size: int = 8,
    resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Evaluate a run or model on held-out examples (against its base for runs); returns results.json's content.

    `scorer` is "module:function(prompt, reference, answer) -> float"; `resamples` paired bootstrap
    resamples give the confidence intervals. Sampling settings left as None come from the run's `eval:`
    section, else 256 new tokens, greedy.
    """
    from .evaluate import evaluate as _evaluate

    return _evaluate(run_or_model, data, compare_base=compare_base, limit=limit, max_new_tokens=max_new_tokens,
                     temperature=temperature, top_p=top_p, scorer=scorer, output_dir=output_dir, as_json=as_json,
                     batch_size=batch_size, resamples=resamples, seed=seed)


def merge(run: str, output: str):
    from .export import merge as _merge

    return _merge(run, output)


def export(run: str, fmt: str = "hf", quant: str = "f16", output: str | None = None):
    from .export import export as _export

    return _export(run, fmt=fmt, quant=quant, output=output)


def serve(models: list[str], host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          database: str | None = None, max_batch_size: int = 16, engine: str = "torch", runs_dir: str | None = None,
          storage: str | None = None) -> None:
    """Serve runs, adapters or models with an OpenAI-compatible API (and the jobs API) until interrupted."""
    from .serve import serve as _serve

    return _serve(models, host=host, port=port, api_key=api_key, database=database, max_batch_size=max_batch_size,
                  engine=engine, runs_dir=runs_dir, storage=storage)


# public functions that share their name with a subpackage (tunewright.train is also tunewright/train/)
_SHADOWED = {"train": train, "evaluate": evaluate, "export": export, "serve": serve}


class _CallableSubpackage(types.ModuleType):
    """A subpackage named like a public function (train, evaluate, export, serve): calling it calls that function."""

    def __call__(self, *args, **kwargs):
        return _SHADOWED[self.__name__.rpartition(".")[2]](*args, **kwargs)


class _Package(types.ModuleType):
    """Keeps `tunewright.train(config)`, `tunewright.evaluate(...)`, ... callable once their subpackage is imported.

    Importing `tunewright.evaluate.*` sets the subpackage as the attribute `evaluate` of this package,
    replacing the function (`tunewright.train()` imports tunewright.evaluate, so a later
    `tunewright.evaluate()` failed with "'module' object is not callable"). The subpackage becomes
    callable instead, and shows the function's signature (`__wrapped__`) to `inspect` and `help`.
    """

    def __setattr__(self, name: str, value) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            value.__class__ = _CallableSubpackage
            value.__wrapped__ = _SHADOWED[name]
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["RunConfig", "UserError", "evaluate", "export", "load_config", "merge", "serve", "train"]
