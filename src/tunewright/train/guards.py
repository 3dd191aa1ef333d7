"""Checks that run before any work: the run folder can be written, and a `--resume` request agrees with the run.

`--resume` continues the run in the folder with the settings in its `config.yaml`. Only the keys the
user gave on this invocation (flags, `--set`, the YAML passed) are compared with them; `auto` in the
request means "whatever the run resolved" and is never a conflict. A key that changes the maths
(model, method, data, LoRA shape, learning rate, batch, precision, seed...) is refused with every
difference listed: resuming would silently train a mixture of two runs. Keys that only change how
the run is watched, saved or scheduled on this machine may change. The run may be extended by
raising the key that set its length (`train.max_steps`, or `train.epochs` for a run counted in
epochs); the learning-rate schedule is then recomputed for the new total (see `extend_warning`).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console

from ..config import RunConfig, load_config, set_key
from ..errors import UserError

# keys that change how a run is watched, saved or laid out in memory, never what it computes
HARMLESS = {
    "output_dir", "trust_remote_code", "train.eval_every", "train.save_every", "train.save_total_limit", "train.log_every",
    "train.threads", "train.report_to", "train.gradient_checkpointing", "train.micro_batch_tokens",
    "train.chunked_loss", "train.bf16_base", "train.fused_lora", "train.attention", "train.early_stopping_patience", "train.eval_examples",
    "train.distributed", "train.allocator",
}
HARMLESS_SECTIONS = ("eval.", "fsdp.", "deepspeed.")  # how processes share the work: checkpoints are gathered
PATH_KEYS = {"model", "data.train", "data.validation", "eval.data"}


# --- the run folder ------------------------------------------------------------------------------------------------


def check_output_dir(run_dir: Path) -> None:
    """Refuse, before tokenizing or loading anything, a run folder that cannot be created or written.

    The probe is a real write (a temporary file in the folder, or in its nearest existing parent):
    permission bits say nothing when running as root, read-only mounts or sysfs still refuse.
    """
    target = Path(run_dir).absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"output_dir {run_dir}: {existing} is a file, not a folder, so the run folder cannot be made there",
                        "choose another --output (or output_dir), or move that file")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".tunewright-write-probe-") as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as e:
        raise UserError(f"output_dir {run_dir}: {existing} is not writable ({e.strerror or e})",
                        "choose a folder you can write to with --output (or output_dir), or fix its permissions") from None


# --- what --resume accepts -----------------------------------------------------------------------------------------


def reconcile_resume(requested: RunConfig, run_dir: Path) -> tuple[RunConfig, bool]:
    """The config to resume with (the run's own, plus allowed changes) and whether it trains past the old end."""
    saved_path = Path(run_dir) / "config.yaml"
    if not saved_path.is_file():
        return requested, False
    saved = written_before_best_metric(load_config(saved_path))
    merged = merge_resume_request(requested, saved)
    extended = _length(merged) != _length(saved)
    if extended:
        Console(stderr=True, highlight=False).print(f"[yellow]warning:[/] {extend_warning(saved, merged)}")
    return merged, extended


def written_before_best_metric(saved: RunConfig) -> RunConfig:
    """A run folder from before `train.best_metric` chose its best evaluation by the loss: it resumes doing so.

    Its config.yaml lacks the key, which would otherwise resolve afresh (exact match for short answers) and set a
    new metric against the best score its trainer_state.json holds, a loss.
    """
    if "best_metric" not in saved.train.model_fields_set:
        saved.train.best_metric = "eval_loss"
    return saved


def extend_warning(saved: RunConfig, merged: RunConfig) -> str:
    key, old, new = _length_key(saved), _length(saved), _length(merged)
    return (f"extending the run: train.{key} {old} -> {new}. The learning-rate schedule (warmup and "
            f"{merged.train.scheduler} decay) is recomputed for the new total, so the rate at the resumed step "
            f"differs from what the original run used there")


def merge_resume_request(requested: RunConfig, saved: RunConfig) -> RunConfig:
    """`saved` with the explicitly requested keys that may change; UserError listing every refused difference."""
    raw = saved.model_dump(mode="python")
    refused = []
    for key, new in explicit_values(requested).items():
        old = _get(saved, key)
        if new == "auto" or _same(key, old, new):
            continue
        problem = _refusal(key, old, new, saved)
        if problem:
            refused.append(problem)
        else:
            set_key(raw, key.split("."), new)
    if refused:
        raise UserError(
            "--resume: this request differs from the run's config.yaml in what it computes: " + "; ".join(refused) +
            "; nothing was changed",
            "drop those flags to resume the run as it was, or train a new run into another --output",
        )
    return RunConfig.model_validate(raw)


def explicit_values(cfg: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value for each key set explicitly (pydantic remembers which fields were given)."""
    out = {}
    for name in cfg.model_fields_set:
        value = getattr(cfg, name)
        if isinstance(value, BaseModel):
            out.update(explicit_values(value, f"{prefix}{name}."))
        else:
            out[prefix + name] = value
    return out


def _refusal(key: str, old: Any, new: Any, saved: RunConfig) -> str | None:
    """Why changing `key` from `old` to `new` is refused, or None when it is allowed."""
    diff = f"{key}: {old!r} -> {new!r}"
    if key in HARMLESS or key.startswith(HARMLESS_SECTIONS):
        return None
    if key in ("train.max_steps", "train.epochs"):
        length_key = f"train.{_length_key(saved)}"
        if key != length_key:
            return f"{diff} (the run's length is set by {length_key}; extend that instead)"
        if new is None or old is None or float(new) <= float(old):
            return f"{diff} (a resumed run may only be extended)"
        return None
    return diff


def _length_key(cfg: RunConfig) -> str:
    return "max_steps" if cfg.train.max_steps else "epochs"


def _length(cfg: RunConfig) -> Any:
    return cfg.train.max_steps or cfg.train.epochs


def _same(key: str, old: Any, new: Any) -> bool:
    """Equal values; for paths, the same files however they are written."""
    if old == new:
        return True
    if key in PATH_KEYS and old is not None and new is not None:
        return _resolved(old) == _resolved(new)
    return False


def _resolved(value: Any) -> Any:
    paths = value if isinstance(value, list) else [value]
    out = [str(Path(p).expanduser().resolve()) for p in paths]  # hub ids and aliases resolve alike on both sides
    return out if isinstance(value, list) else out[0]


def _get(cfg: BaseModel, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node
