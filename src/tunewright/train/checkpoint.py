"""Atomic checkpoints with everything an exact resume needs.

A checkpoint is written into `checkpoints/.tmp-step-N`, completed with a marker file, then
renamed to `checkpoints/step-N`: a run killed mid-write leaves only a temporary folder that
`--resume` ignores (and the next save removes).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

MARKER = "COMPLETE"


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


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, trainer_state: dict) -> Path:
    """Write checkpoints/step-N atomically; returns its path."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-step-{step}"
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}, tmp / "state.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({**trainer_state, "step": step}, indent=2))
    _fsync_dir(tmp)
    (tmp / MARKER).write_text("ok")
    final = root / f"step-{step}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / MARKER).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG; returns the trainer state (step, data position, best...)."""
    load_trainable_weights(path, model)
    state = torch.load(path / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return json.loads((path / "trainer_state.json").read_text())


def load_trainable_weights(path: Path, model) -> None:
    weights = load_file(str(Path(path) / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise RuntimeError(f"checkpoint {path} does not match the model (e.g. {missing[0]})")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def rotate_checkpoints(run_dir: Path, keep: int, protect: Path | None = None) -> None:
    """Keep the newest `keep` checkpoints, plus the best one when it is older."""
    done = complete_checkpoints(run_dir)
    for old in done[:-keep] if keep else done:
        if protect is not None and old.resolve() == Path(protect).resolve():
            continue
        shutil.rmtree(old, ignore_errors=True)
