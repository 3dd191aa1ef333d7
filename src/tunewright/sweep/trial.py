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
from ..train.state import selection_error

POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 10  # a trainer that ignores SIGTERM this long is killed
LOG_TAIL_LINES = 8
MIN_PACE_SECONDS = 15.0  # of logged steps before a trial's pace is trusted to project its end
PACE_SHARE = 0.05  # ... and at least this share of the budget: a busy minute must not end a 30-minute sweep's trial


@dataclass
class Pace:
    """When a trial will end, projected from how far (in epochs) its logged steps got and how fast."""

    planned_epochs: float
    trust_after_s: float = MIN_PACE_SECONDS  # seconds of logged steps before the pace is trusted
    first: tuple[float, float] | None = None  # (time, epoch) of the first logged step: model loading excluded
    last: tuple[float, float] | None = None  # (time, epoch) of the latest one

    def projected_end(self, now: float, epoch: float) -> float | None:
        self.last = (now, epoch)
        if self.first is None:
            self.first = (now, epoch)
            return None
        t0, e0 = self.first
        if epoch <= e0 or now - t0 < self.trust_after_s:
            return None
        return now + (now - t0) / (epoch - e0) * max(0.0, self.planned_epochs - epoch)

    def stepping(self) -> tuple[float, float]:
        """(seconds, epochs) between the first and the latest logged step: the pace without start-up."""
        if self.first is None or self.last is None:
            return 0.0, 0.0
        return self.last[0] - self.first[0], self.last[1] - self.first[1]


@dataclass
class TrialOutcome:
    """How a trial ended: complete | pruned | budget (stopped at the deadline) | failed."""

    state: str
    run_dir: Path
    seconds: float
    evals: list[tuple[float, float]] = field(default_factory=list)  # (epoch, eval_loss) as logged
    value: float | None = None  # the kept weights' validation error by the run's best_metric: Optuna minimizes it
    metric: str = "eval_loss"  # the run's train.best_metric
    score: float | None = None  # that metric's value for the kept weights (the loss, or an accuracy)
    kept_eval_loss: float | None = None  # their validation loss: breaks ties of a coarse metric between trials
    message: str = ""
    startup_s: float | None = None  # from launch to the first logged step (loading, tokenizing, range test)
    stepping: tuple[float, float] = (0.0, 0.0)  # (seconds, epochs) of logged steps: the budget's pace


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


@dataclass(frozen=True)
class Kept:
    """The validation of the weights a run kept, by its best_metric."""

    metric: str
    score: float
    eval_loss: float

    @property
    def error(self) -> float:
        return selection_error(self.metric, self.score)


def kept_validation(run_dir: Path, last_eval: dict | None) -> Kept | None:
    """The kept weights' validation: the best evaluation's when the run kept it (early stopping), else the last one's."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    metric = summary.get("best_metric") or "eval_loss"
    best_kept = summary.get("stopped_early") or (summary.get("best_step") is not None and summary.get("weights_step") == summary.get("best_step"))
    if best_kept and summary.get("best_eval_loss") is not None:
        score = summary.get("best_score", summary["best_eval_loss"])
        return Kept(metric, float(score), float(summary["best_eval_loss"]))
    if last_eval is None or metric not in last_eval:
        return None
    return Kept(metric, float(last_eval[metric]), float(last_eval["eval_loss"]))


def log_tail(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(line for line in lines[-LOG_TAIL_LINES:] if line.strip())


class Watch:
    """Judges a running trial's logged rows: stop it when Optuna prunes it or its pace overruns the deadline."""

    def __init__(self, on_eval: Callable[[float, float], bool], deadline: float, planned_epochs: float,
                 trust_after_s: float = MIN_PACE_SECONDS):
        self.on_eval, self.deadline, self.pace = on_eval, deadline, Pace(planned_epochs, trust_after_s)
        self.evals: list[tuple[float, float]] = []
        self.last_eval: dict | None = None  # the latest evaluation's row, every metric in it
        self.message = ""

    @property
    def epochs_done(self) -> float:
        """How far training got: the epoch of the last logged step (the pace keeps it)."""
        return self.pace.last[1] if self.pace.last else 0.0

    def verdict(self, row: dict, judge: bool) -> str | None:
        """"pruned", "budget" or None; with judge False (the trainer already exited) only record the row."""
        end = self.pace.projected_end(time.monotonic(), float(row["epoch"]))
        if judge and end is not None and end > self.deadline:
            self.message = f"stopped: at its pace it would end {(end - self.deadline) / 60:.1f} min after the budget"
            return "budget"
        if "eval_loss" in row:
            self.last_eval = row
            self.evals.append((float(row["epoch"]), float(row["eval_loss"])))
            if self.on_eval(*self.evals[-1]) and judge:
                return "pruned"
        return None

    def state(self, proc: subprocess.Popen, tail: MetricsTail) -> str | None:
        """The trial's end state, or None while it should go on."""
        exited = proc.poll() is not None
        for row in tail.new_rows():
            verdict = self.verdict(row, judge=not exited)
            if verdict:
                return verdict
        if exited:
            return "complete" if proc.returncode == 0 else "failed"
        return "budget" if time.monotonic() >= self.deadline else None


def run_trial(command: list[str], run_dir: Path, on_eval: Callable[[float, float], bool], deadline: float,
              planned_epochs: float, trust_after_s: float = MIN_PACE_SECONDS) -> TrialOutcome:
    """Run one trainer to its end, its pruning, or the deadline (time.monotonic()); stdout/stderr go to train.log.

    A trial whose pace says it would end after the deadline is stopped as soon as that is clear,
    not at the deadline: the rest of the budget goes to trials that can finish.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "train.log"
    started = time.monotonic()
    tail, watch, state = MetricsTail(metrics_path(run_dir)), Watch(on_eval, deadline, planned_epochs, trust_after_s), None
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            while (state := watch.state(proc, tail)) is None:
                time.sleep(POLL_SECONDS)
        finally:
            stop(proc)
    first = watch.pace.first
    outcome = TrialOutcome(state, run_dir, time.monotonic() - started, watch.evals, message=watch.message,
                           startup_s=first[0] - started if first else None,
                           stepping=watch.pace.stepping())
    kept = kept_validation(run_dir, watch.last_eval) if state == "complete" else None
    if kept is not None:
        outcome.value, outcome.metric, outcome.score, outcome.kept_eval_loss = kept.error, kept.metric, kept.score, kept.eval_loss
    elif state == "failed":
        outcome.message = log_tail(log_path)
    return outcome
