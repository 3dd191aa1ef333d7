"""What the user sees while training: a live bar with loss, learning rate, tokens/s and ETA."""
from __future__ import annotations

import resource
import sys

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    def __init__(self, total: int, start: int = 0, enabled: bool = True):
        self.enabled = enabled
        self._tokens = 0.0
        self._progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not enabled, transient=False, refresh_per_second=2,
        )
        self._task = self._progress.add_task("train", total=total, completed=start, loss="-", lr="-", tps="-")
        self._plain = enabled and not sys.stderr.isatty()
        self._total = total

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def update(self, row: dict) -> None:
        if not self.enabled:
            return
        self._progress.update(self._task, completed=row["step"], loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}",
                              tps=f"{row['tokens_per_s']:.0f}")
        if self._plain and (row["step"] % 10 == 0 or row["step"] == self._total or "eval_loss" in row):
            extra = f" eval_loss {row['eval_loss']:.4f}" if "eval_loss" in row else ""
            print(f"step {row['step']}/{self._total} loss {row['loss']:.4f} lr {row['lr']:.2e} "
                  f"{row['tokens_per_s']:.0f} tok/s{extra}", file=sys.stderr, flush=True)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated on CUDA; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
