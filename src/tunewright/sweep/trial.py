"""One sweep trial: a normal `tunewright train` subprocess in its own folder, watched through its metrics.jsonl.

A subprocess keeps the training loop untouched and makes each trial exactly the run the user would
get from the command line. Every validation loss the run logs is passed to `on_eval`; when that says
the trial is hopeless (Optuna's pruner), or the sweep's deadline passes, the trainer gets SIGTERM.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..train.metrics_log import metrics_path, read_metrics

POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 10  # a trainer that ignores SIGTERM this long is killed
LOG_TAIL_LINES = 8


@dataclass
class TrialOutcome:
    """How a trial ended: complete | pruned | budget (stopped at the deadline) | failed."""

    state: str
    run_dir: Path
    seconds: float
    evals: list[tuple[float, float]] = field(default_factory=list)  # (epoch, eval_loss) as logged
    value: float | None = None  # validation loss of the weights the run kept (complete runs)
    message: str = ""


def train_command(config_path: Path, run_dir: Path, overrides: list[str]) -> list[str]:
    sets = [arg for kv in overrides for arg in ("--set", kv)]
    return [sys.executable, "-m", "tunewright.cli", "train", str(config_path), "--output", str(run_dir), *sets]


class MetricsTail:
    """Rows of a growing metrics.jsonl not seen before (the one reader skips a line still being written)."""

    def __init__(self, path: Path):
        self.path, self.last_step = path, 0

    def new_rows(self) -> list[dict]:
        rows = [row for row in read_metrics(self.path) if row["step"] > self.last_step]
        if rows:
            self.last_step = rows[-1]["step"]
        return rows


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the trainer has not exited within the grace period."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kept_eval_loss(run_dir: Path, evals: list[tuple[float, float]]) -> float | None:
    """The validation loss of the weights the run saved: the best one after early stopping, else the last."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return evals[-1][1] if evals else None
    key = "best_eval_loss" if summary.get("stopped_early") else "final_eval_loss"
    return summary.get(key) if summary.get(key) is not None else (evals[-1][1] if evals else None)


def log_tail(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(line for line in lines[-LOG_TAIL_LINES:] if line.strip())


def run_trial(command: list[str], run_dir: Path, on_eval: Callable[[float, float], bool], deadline: float) -> TrialOutcome:
    """Run one trainer to its end, its pruning, or the deadline (time.monotonic()); stdout/stderr go to train.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "train.log"
    started = time.monotonic()
    evals: list[tuple[float, float]] = []
    tail = MetricsTail(metrics_path(run_dir))
    state = None
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            while state is None:
                exited = proc.poll() is not None
                for row in tail.new_rows():
                    if "eval_loss" in row:
                        evals.append((float(row["epoch"]), float(row["eval_loss"])))
                        if on_eval(*evals[-1]) and not exited:
                            state = "pruned"
                            break
                if state is None and exited:
                    state = "complete" if proc.returncode == 0 else "failed"
                elif state is None and time.monotonic() >= deadline:
                    state = "budget"
                elif state is None:
                    time.sleep(POLL_SECONDS)
        finally:
            stop(proc)
    outcome = TrialOutcome(state, run_dir, time.monotonic() - started, evals)
    if state == "complete":
        outcome.value = kept_eval_loss(run_dir, evals)
    elif state == "failed":
        outcome.message = log_tail(log_path)
    return outcome
