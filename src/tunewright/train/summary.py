"""The end of a run: summary.json, a printed table, and a loss-curve PNG."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .metrics_log import read_metrics
from .state import LoopResult


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def build_summary(result: LoopResult, wall_seconds: float, params, cfg) -> dict:
    s = result.state
    tps = s.real_tokens / s.train_seconds if s.train_seconds else 0.0
    return {
        "method": cfg.method,
        "model": cfg.model,
        "steps": s.step,
        "wall_seconds": round(wall_seconds, 2),
        "train_seconds": round(s.train_seconds, 2),
        "trained_tokens": s.trained_tokens,
        "real_tokens": s.real_tokens,
        "padded_tokens": s.padded_tokens,
        "pad_share": round(1 - s.real_tokens / s.padded_tokens, 4) if s.padded_tokens else 0.0,
        "tokens_per_s": round(tps, 1),
        "peak_memory_bytes": result.peak_memory_bytes,
        "trainable_params": params.trainable,
        "total_params": params.total,
        "final_train_loss": result.final_loss,
        "final_eval_loss": result.final_eval_loss,
        "best_eval_loss": s.best_eval_loss,
        "best_metric": cfg.train.best_metric,  # what chose the best evaluation
        "best_score": s.best_score,  # its value there
        "best_checkpoint": s.best_checkpoint,
        "best_step": s.best_step,
        "stopped_early": result.stopped_early,
        "weights_step": result.weights_step or s.step,  # adapter/ or model/ hold this step's weights
    }


def print_summary(summary: dict, run_dir: Path, console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    table = Table(title=f"training summary: {run_dir}", show_header=False)
    fmt = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v))
    rows = [
        ("method", summary["method"]), ("steps", summary["steps"]),
        ("wall time", f"{summary['wall_seconds']:.1f} s (training {summary['train_seconds']:.1f} s)"),
        ("trained tokens", summary["trained_tokens"]), ("tokens/s (real, non-pad)", f"{summary['tokens_per_s']:.0f}"),
        ("pad share", f"{summary['pad_share']:.1%}"), ("peak memory", human_bytes(summary["peak_memory_bytes"])),
        ("trainable params", f"{summary['trainable_params']:,} of {summary['total_params']:,}"),
        ("final train loss", fmt(summary["final_train_loss"])), ("final validation loss", fmt(summary["final_eval_loss"])),
    ]
    if summary.get("best_step") is not None:
        best = (f"step {summary['best_step']}: {summary['best_metric']} {fmt(summary['best_score'])} "
                f"(weights kept from step {summary['weights_step']})")
        rows.append(("best evaluation", best))
    for k, v in rows:
        table.add_row(k, fmt(v) if not isinstance(v, str) else v)
    console.print(table)


def already_finished(run_dir: Path) -> dict | None:
    """The summary of a run that reached its end (summary.json beside adapter/ or model/), said on stderr.

    `--resume` on such a run must not train the last step again and overwrite the result.
    """
    path = Path(run_dir) / "summary.json"
    if not path.is_file() or not any((Path(run_dir) / d).is_dir() for d in ("adapter", "model")):
        return None
    try:
        summary = json.loads(path.read_text())
    except ValueError:
        return None  # written by a run killed mid-write: the run did not finish cleanly
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"{run_dir}: already finished ({summary.get('steps', '?')} steps); nothing to resume, nothing changed")
    return summary


def plot_loss_curve(metrics_path: Path, out_png: Path) -> Path | None:
    """Train and validation loss against step; None when there is nothing to plot."""
    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss", linewidth=1.2)
    ev = [r for r in rows if "eval_loss" in r]
    if ev:
        ax.plot([r["step"] for r in ev], [r["eval_loss"] for r in ev], "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per trained token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
