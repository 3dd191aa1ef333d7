"""A sweep's results: sweep.json, the best trial's folder as `best`, a rich table and a plot of every trial."""
from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

STATE_STYLE = {"complete": "green", "pruned": "yellow", "budget": "yellow", "failed": "red"}


def write_sweep_json(out_dir: Path, record: dict) -> Path:
    path = out_dir / "sweep.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    os.replace(tmp, path)  # rewritten after every trial: whole or not at all
    return path


def link_best(out_dir: Path, best_run: Path) -> Path:
    """`<out>/best` -> the best trial's folder (relative, so the sweep folder can move)."""
    link = out_dir / "best"
    tmp = out_dir / ".best.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(best_run.name, target_is_directory=True)
    os.replace(tmp, link)
    return link


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(trials: list[dict], best_number: int | None, console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    table = Table(title="sweep trials (validation loss: lower is better)")
    for col in ("trial", "state", "lr", "r", "batch", "epochs", "val loss", "evals", "min"):
        table.add_column(col, justify="left" if col == "state" else "right", no_wrap=True)
    for t in trials:
        p = t["params"]
        mark = (" auto" if t.get("auto") else "") + (" *" if t["number"] == best_number else "")
        table.add_row(f"{t['number']}{mark}", f"[{STATE_STYLE.get(t['state'], 'white')}]{t['state']}[/]",
                      _fmt(p.get("learning_rate"), ".2e"), str(p.get("lora_r", "-")), str(p.get("batch_size", "-")),
                      str(p.get("epochs", "-")), _fmt(t["value"] if t["value"] is not None else t["last_eval_loss"], ".4f"),
                      str(len(t["evals"])), f"{t['seconds'] / 60:.1f}")
    console.print(table)


def plot_trials(trials: list[dict], best_number: int | None, path: Path) -> Path | None:
    """Validation loss against epochs for every trial; the best one drawn thick. None when nothing was evaluated."""
    if not any(t["evals"] for t in trials):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in trials:
        if not t["evals"]:
            continue
        epochs, losses = zip(*t["evals"])
        p = t["params"]
        label = (f"#{t['number']}{' auto' if t.get('auto') else ''} {t['state']} lr {p.get('learning_rate', 0):.1e} "
                 f"bs {p.get('batch_size', '-')}" + (f" r {p['lora_r']}" if "lora_r" in p else ""))
        best = t["number"] == best_number
        ax.plot(epochs, losses, marker="o", linewidth=2.8 if best else 1.0, alpha=1.0 if best else 0.7,
                linestyle="-" if t["state"] == "complete" else "--", label=label + (" (best)" if best else ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss")
    ax.set_title("tunewright sweep")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
