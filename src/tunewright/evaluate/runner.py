"""Step 6, evaluate vs base: `evaluate()` for the CLI and API, `evaluate_after_training()` for the trainer.

Both check their inputs before loading any model (a typo in a path fails in a second, not after a
minute of loading), score the same examples on every side, then write eval/ and print the table.
Preference pairs (detected per file, as training detects them) are scored as pairs (evaluate/preference.py)
and their prompt + chosen answer as the reference for loss and generation metrics.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from ..data.conversation import Conversation
from ..errors import UserError
from ..models import describe_run
from ..train.validation import LossSettings
from .generate import SamplingSettings
from .loss import max_context, run_config, run_loss_settings
from .metrics import load_scorer
from .preference import (
    HeldOutPairs,
    held_out_from_rows,
    load_test_pairs,
    run_beta,
    tokenize_test_pairs,
)
from .report import print_summary, write_outputs
from .results import EvalSettings, run_evaluation
from .sides import TUNED, Side, base_side, default_compare_base, load_sides

console = Console()  # the table
notes = Console(stderr=True)  # warnings and notes: stdout stays clean for --json


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

    Sampling settings left as None come from the run's own `eval:` section (a classification run that set
    `max_new_tokens: 8` is scored as it was trained to answer), else the config defaults.
    """
    paths = [str(data)] if isinstance(data, (str, Path)) else [str(p) for p in data]
    run_dir = run_folder(run_or_model)
    run_cfg = run_config(run_dir)
    given = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
    sampling = {**run_sampling(run_cfg), **{k: v for k, v in given.items() if v is not None}}
    settings = EvalSettings(SamplingSettings(sampling["max_new_tokens"], sampling["temperature"], sampling["top_p"], batch_size, seed),
                            limit, resamples, seed, scorer=scorer, loss=run_loss_settings(run_cfg))
    check_settings(settings)
    scorer_fn = load_scorer(scorer) if scorer else None
    files = read_test_files(paths)
    rows = apply_limit(load_test_pairs(files, " ".join(paths)), limit) if is_preference(files) else None
    conversations = apply_limit(load_test_conversations(paths, files), limit) if rows is None else []
    sides = load_sides(run_or_model, default_compare_base(run_or_model, compare_base))
    pairs = None
    if rows is not None:
        tuned = sides[-1]
        rows, tokenized = tokenize_test_pairs(rows, tuned.tokenizer, max_context(tuned.model), " ".join(paths))
        conversations, pairs = held_out_from_rows(rows, tokenized, run_beta(run_cfg))
    results = run_evaluation(sides, conversations, settings, scorer_fn, pairs)
    results["model"] = model_record(run_or_model, sides)
    results["data"] = paths
    out = Path(output_dir) if output_dir else (run_dir or default_output_dir(run_or_model))
    _, html_path = write_outputs(results, out / "eval", run_dir / "metrics.jsonl" if run_dir else None)
    if as_json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        print_summary(results, console, html_path)
    return results


def evaluate_after_training(run_dir: str | Path, model, tokenizer, conversations: list[Conversation], cfg_eval: Any, base_spec: str,
                            pairs: HeldOutPairs | None = None, loss: LossSettings | None = None) -> dict:
    """Compare the just-trained model with its base, reusing the loaded model (adapter off for the base).

    `cfg_eval` is the run config's `eval` section (EvalConfig or a dict); the caller decides whether to
    run at all (`eval.after_train`). With `pairs`, `conversations` are their prompt + chosen answer, in the
    same order. `loss`: the run's tokenization for the loss (LossSettings.of its config). Returns
    results.json's content, or {} when nothing could be scored.
    """
    get = (lambda k, d: cfg_eval.get(k, d)) if isinstance(cfg_eval, dict) else (lambda k, d: getattr(cfg_eval, k, d))
    sampling = SamplingSettings(get("max_new_tokens", 256), get("temperature", 0.0), get("top_p", 1.0), get("batch_size", 8))
    settings = EvalSettings(sampling, get("limit", None), loss=loss or LossSettings())
    check_settings(settings)
    if pairs is not None:  # every chosen conversation is scorable: keep them aligned with their pairs
        examples = apply_limit(conversations, settings.limit)
        pairs = HeldOutPairs(apply_limit(pairs.pairs, settings.limit), apply_limit(pairs.rejected, settings.limit), pairs.beta)
    else:
        examples = apply_limit(scorable(conversations, "the evaluation split"), settings.limit) if conversations else []
    if not examples:
        notes.print("[yellow]evaluation skipped: no held-out examples with a reference answer[/]")
        return {}
    run_dir = Path(run_dir)
    tuned = Side(TUNED, run_dir.name, model, tokenizer)
    sides = [base_side(model, tokenizer, base_spec), tuned] if get("compare_base", True) else [tuned]
    results = run_evaluation(sides, examples, settings, pairs=pairs)
    results["model"] = {"name": run_dir.name, "path": str(run_dir), "base": base_spec}
    results["data"] = [str(d) for d in _as_list(get("data", None))]
    _, html_path = write_outputs(results, run_dir / "eval", run_dir / "metrics.jsonl")
    print_summary(results, console, html_path)
    return results


# --- inputs -------------------------------------------------------------------------------------


def check_settings(settings: EvalSettings) -> None:
    """Reject impossible generation settings before any model is loaded."""
    s = settings.sampling
    if settings.limit is not None and settings.limit < 1:
        raise UserError(f"--limit {settings.limit}: must be at least 1", "leave it out to use every example")
    if s.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {s.max_new_tokens}: must be at least 1", "use e.g. --max-new-tokens 256")
    if s.temperature < 0:
        raise UserError(f"--temperature {s.temperature}: must not be negative", "0 means greedy decoding")
    if not 0 < s.top_p <= 1:
        raise UserError(f"--top-p {s.top_p}: must be in (0, 1]", "1 keeps the whole distribution")
    if s.batch_size < 1:
        raise UserError(f"batch_size {s.batch_size}: must be at least 1", "use e.g. 8")


def read_test_files(paths: list[str]) -> list:
    """The test files read and their formats detected; a missing path is a UserError."""
    if not paths:
        raise UserError("no test data given", "pass held-out examples with --data test.jsonl")
    for p in paths:
        if not Path(p).exists():
            raise UserError(f"--data {p}: no such file or folder", "check the path to the held-out examples")
    from ..data import read_detected

    return read_detected(paths)[0]


def is_preference(files: list) -> bool:
    """True for preference pairs (a mix of pairs and instruction data is one UserError)."""
    from ..data import data_kind

    return data_kind(files) == "preference"


def load_test_conversations(paths: list[str], files: list | None = None) -> list[Conversation]:
    """Held-out conversations from files in any format the data layer reads; bad rows are an error."""
    from ..data import load_conversations

    if files is None:
        files = read_test_files(paths)
    loaded = load_conversations(paths, files=files)
    if loaded.bad_rows:
        first = loaded.bad_rows[0]
        raise UserError(f"{len(loaded.bad_rows)} bad row(s) in the test data, first: {first.source}: {first.field}: {first.reason}",
                        f"{first.fix} (`tunewright data check {' '.join(paths)}` lists them all)")
    return scorable(loaded.conversations, ", ".join(paths))


def scorable(conversations: list[Conversation], where: str) -> list[Conversation]:
    """Chat examples that end in an assistant answer: the only ones with a prompt and a reference."""
    kept = [c for c in conversations if not c.is_text and c.messages and c.messages[-1].role == "assistant" and c.prompt_messages()]
    if conversations and not kept:
        raise UserError(f"{where}: no example has a prompt followed by an assistant answer to compare with",
                        "evaluation needs chat, alpaca, sharegpt or completion rows, not raw text")
    if len(kept) < len(conversations):
        notes.print(f"[yellow]{len(conversations) - len(kept)} example(s) without a final assistant answer are not scored[/]")
    return kept


def apply_limit(conversations: list[Conversation], limit: int | None) -> list[Conversation]:
    """The first `limit` examples: deterministic, so runs evaluated with the same limit compare."""
    return conversations[:limit] if limit else conversations


# --- where things go ----------------------------------------------------------------------------


def run_sampling(run_cfg: dict) -> dict:
    """max_new_tokens, temperature and top_p from the run's `eval:` section (`loss.run_config`), else the config defaults."""
    from ..config import EvalConfig

    section = EvalConfig.model_validate(run_cfg.get("eval") or {})
    return {"max_new_tokens": section.max_new_tokens, "temperature": section.temperature, "top_p": section.top_p}


def run_folder(run_or_model: str) -> Path | None:
    """The run directory that owns eval/ and metrics.jsonl, when `run_or_model` is a run."""
    run = describe_run(run_or_model)
    if run is None:
        return None
    result = Path(run.get("adapter") or run.get("model"))
    return result.parent if result.name in ("adapter", "model") else result


def default_output_dir(model_spec: str) -> Path:
    """runs/eval-<model> for a plain model, which has no run directory of its own."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_spec.rstrip("/")).name or model_spec).strip("-") or "model"
    return Path("runs") / f"eval-{slug}"


def model_record(run_or_model: str, sides: list[Side]) -> dict:
    labels = {side.key: side.label for side in sides}
    run = describe_run(run_or_model)
    return {"name": labels[TUNED], "path": run_or_model, "base": (run or {}).get("base") or labels.get("base")}


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
