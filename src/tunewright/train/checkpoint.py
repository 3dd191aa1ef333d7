"""Atomic, verifiable checkpoints with everything an exact resume needs.

A checkpoint is written into `checkpoints/.tmp-step-N`, given a manifest (size and sha256 of
every file) and a marker file, then renamed to `checkpoints/step-N`: a run killed mid-write
leaves only a temporary folder that `--resume` ignores (and the next save removes). A file
damaged later (a full disk, a bad copy) fails its checksum, and `--resume` falls back to the
newest checkpoint that verifies. Checkpoints written before manifests existed are tried as they
are: a load error falls back the same way. A write that fails (a full disk) removes the temporary
folder and stops the run with one `WriteFailed` naming the last good checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from safetensors.torch import load_file, save_file

from ..errors import UserError
from .distributed import (
    Gathered,
    is_sharded,
    load_gathered,
    optimizer_state_by_index,
    optimizer_state_by_name,
    trainable_names,
)
from .state import TrainState
from .writes import WriteFailed, os_error_of, remove_quietly, replace_folder

MARKER = "COMPLETE"
MANIFEST = "manifest.json"
BEST = "best.safetensors"  # the best evaluation's weights, when they are not this checkpoint's own


class CheckpointUnusable(Exception):
    """A checkpoint that cannot be resumed from; the message says which file and why."""


@dataclass
class Checkpoint:
    """Everything a checkpoint holds, read into memory before any of it touches the model."""

    path: Path
    weights: dict[str, torch.Tensor]
    state: dict  # optimizer, scheduler, RNG
    trainer_state: TrainState
    best_weights: dict[str, torch.Tensor] | None


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Only what training changes: adapter weights for LoRA, every weight for full fine-tuning."""
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, trainer_state: TrainState,
                    best_weights: dict[str, torch.Tensor] | None = None, gathered: Gathered | None = None) -> Path:
    """Write checkpoints/step-N atomically, with a manifest; returns its path.

    `gathered` holds a sharded (FSDP) model's full weights and name-keyed optimizer state, written
    instead of the model's and optimizer's own (which are only this process's shards).

    A failed write (a full disk) removes the temporary folder and raises WriteFailed: the
    checkpoints already there are untouched.
    """
    root = Path(run_dir) / "checkpoints"
    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    with stop_if_write_fails(run_dir, final, partial=tmp):
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        _write_checkpoint_files(tmp, step, model, optimizer, scheduler, trainer_state, best_weights, gathered)
        replace_folder(tmp, final)
    _verified[_stats_key(final)] = None  # just hashed from disk by _write_manifest: rotation need not read it again
    return final


def _write_checkpoint_files(tmp: Path, step: int, model, optimizer, scheduler, trainer_state: TrainState,
                            best_weights: dict[str, torch.Tensor] | None, gathered: Gathered | None = None) -> None:
    save_file(gathered.weights if gathered else trainable_state(model), str(tmp / "trainable.safetensors"))
    if best_weights is not None:
        save_file({k: v.contiguous() for k, v in best_weights.items()}, str(tmp / BEST))
    with open(tmp / "state.pt", "wb") as fh:  # an open file: a failed write keeps its errno (a path loses it)
        optimizer_state = gathered.optimizer if gathered else optimizer.state_dict()
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng": rng_state()}, fh)
    (tmp / "trainer_state.json").write_text(json.dumps({**trainer_state.to_json(), "step": step}, indent=2))
    _write_manifest(tmp)
    _fsync_dir(tmp)
    (tmp / MARKER).write_text("ok")


@contextmanager
def stop_if_write_fails(run_dir: Path, path: Path, partial: Path | None = None):
    """Turn a failed write of `path` (full disk, quota, I/O error) into one WriteFailed.

    `partial`, the temporary file or folder being written, is removed first, so what is left
    is exactly what was there before. Errors that are not about writing pass through unchanged.
    """
    try:
        yield
    except WriteFailed:
        raise
    except Exception as e:
        if partial is not None:
            remove_quietly(partial)
        error = os_error_of(e)
        if error is None:
            raise
        raise WriteFailed(path, error.errno, error.strerror or str(error), latest_checkpoint(run_dir)) from e


def _write_manifest(folder: Path) -> None:
    """Size and sha256 of every file, written last but before the marker: the marker vouches for it."""
    files = {f.name: {"size": f.stat().st_size, "sha256": _sha256(f)} for f in sorted(folder.iterdir()) if f.is_file()}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=2))


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints (marker present; contents not checked), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / MARKER).is_file() and p.name.split("-")[1].isdigit()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


_verified: dict[tuple, str | None] = {}  # (path, file stats) -> problem: each file is hashed once per process


def checkpoint_problem(path: Path) -> str | None:
    """Why this checkpoint's files do not match its manifest, or None.

    A checkpoint without a manifest (written by an older tunewright) is not checked here:
    loading it tells.
    """
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        return None
    key = _stats_key(path)
    if key not in _verified:
        _verified[key] = _compare_with_manifest(path, manifest)
    return _verified[key]


def _stats_key(path: Path) -> tuple:
    stats = [(f.name, f.stat()) for f in sorted(path.iterdir()) if f.is_file()]
    return str(path.resolve()), tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats)


def _compare_with_manifest(path: Path, manifest: Path) -> str | None:
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{name} checksum mismatch ({size:,} bytes, {want['size']:,} written: truncated or overwritten)"
        if _sha256(f) != want["sha256"]:
            return f"{name} checksum mismatch"
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint whose files match their manifest."""
    for path in reversed(complete_checkpoints(run_dir)):
        if checkpoint_problem(path) is None:
            return path
    return None


def resume_checkpoint(run_dir: Path, report: bool | None = None) -> Path:
    """The newest checkpoint that verifies; says on stderr which newer ones were skipped and why.

    None verifies (or none exists): a UserError naming each one, so the CLI exits 2.
    """
    report = os.environ.get("RANK", "0") == "0" if report is None else report  # one warning, not one per process
    skipped = []
    for path in reversed(complete_checkpoints(run_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            _report_skipped(skipped, report)
            return path
        skipped.append((path, problem))
    raise _nothing_to_resume(run_dir, skipped)


def _nothing_to_resume(run_dir: Path, skipped: list[tuple[Path, str]]) -> UserError:
    if not skipped:
        return UserError(f"{run_dir}: no complete checkpoint to resume from", "run without --resume to start fresh")
    reasons = "; ".join(f"{_name(p)}: {why}" for p, why in skipped)
    return UserError(f"{run_dir}: no checkpoint can be resumed from ({reasons})",
                     "restore the checkpoint files from a backup, or start fresh in another --output")


def _name(path: Path) -> str:
    return f"checkpoints/{Path(path).name}"


def _report_skipped(skipped: list[tuple[Path, str]], report: bool) -> None:
    if not report:
        return
    console = Console(stderr=True, soft_wrap=True, highlight=False)
    for path, why in skipped:
        console.print(f"[yellow]warning:[/] skipped {escape(_name(path))}: {escape(why)}")


def read_checkpoint(path: Path) -> Checkpoint:
    """Every file of a checkpoint, verified and parsed; CheckpointUnusable names the first bad one."""
    path = Path(path)
    problem = checkpoint_problem(path)
    if problem is not None:
        raise CheckpointUnusable(problem)
    best = path / BEST
    return Checkpoint(
        path=path,
        weights=_read(path / "trainable.safetensors", lambda f: load_file(str(f))),
        state=_read(path / "state.pt", lambda f: torch.load(f, weights_only=False)),
        trainer_state=_read(path / "trainer_state.json", lambda f: TrainState.from_json(json.loads(f.read_text()))),
        best_weights=_read(best, lambda f: load_file(str(f))) if best.is_file() else None,
    )


def _read(file: Path, parse):
    try:
        return parse(file)
    except Exception as e:
        raise CheckpointUnusable(f"{file.name} is unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def restore_checkpoint(ck: Checkpoint, model, optimizer, scheduler) -> TrainState:
    """Put weights, optimizer, scheduler and RNG back; returns the trainer state (step, data position, best...)."""
    try:
        _restore_weights_and_optimizer(ck, model, optimizer)
        scheduler.load_state_dict(ck.state["scheduler"])
        set_rng_state(ck.state["rng"])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointUnusable(f"state.pt does not fit this run ({type(e).__name__}: {e})") from e
    return ck.trainer_state


def _restore_weights_and_optimizer(ck: Checkpoint, model, optimizer) -> None:
    """Full tensors into a plain or a sharded model: checkpoints resume on any number of processes."""
    names = trainable_names(model)
    if is_sharded(model):
        copy_weights(ck.weights, model, ck.path, check_only=True)
        load_gathered(model, optimizer, ck.weights, optimizer_state_by_name(ck.state["optimizer"], names))
        return
    copy_weights(ck.weights, model, ck.path)
    optimizer.load_state_dict(optimizer_state_by_index(ck.state["optimizer"], names))


def load_resumable(run_dir: Path, start: Path, model, optimizer, scheduler, report: bool = True) -> Checkpoint:
    """Restore `start`, or the newest older checkpoint that loads; says which were skipped and why."""
    candidates = [p for p in reversed(complete_checkpoints(run_dir)) if _step(p) <= _step(start)]
    skipped = []
    for path in candidates:
        try:
            ck = read_checkpoint(path)
            restore_checkpoint(ck, model, optimizer, scheduler)
        except CheckpointUnusable as e:
            skipped.append((path, str(e)))
            continue
        _report_skipped(skipped, report)
        return ck
    raise _nothing_to_resume(run_dir, skipped)


def _step(path: Path) -> int:
    return int(Path(path).name.split("-")[1])


def copy_weights(weights: dict[str, torch.Tensor], model, source: Path | str = "saved weights", check_only: bool = False) -> None:
    """Copy named tensors into the model's parameters (checked first, so a mismatch changes nothing)."""
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise CheckpointUnusable(f"{source} does not match the model (e.g. {missing[0]})")
    if check_only:
        return
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def rotate_checkpoints(run_dir: Path, keep: int, protect: Path | None = None) -> None:
    """Keep the newest `keep` checkpoints, the best one when it is older, and always one that verifies."""
    done = complete_checkpoints(run_dir)
    kept, old = done[-keep:], done[:-keep]
    spared = {Path(protect).resolve()} if protect is not None else set()
    if not any(checkpoint_problem(p) is None for p in reversed(kept)):
        good = next((p for p in reversed(old) if checkpoint_problem(p) is None), None)
        if good is not None:
            spared.add(good.resolve())
    for path in old:
        if path.resolve() not in spared:
            shutil.rmtree(path, ignore_errors=True)
