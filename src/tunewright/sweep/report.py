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


def ranking_metric(trials: list[dict]) -> str:
    """The best_metric the complete trials were ranked by (every trial resolves it from the same data)."""
    return next((t["metric"] for t in trials if t.get("score") is not None), "eval_loss")


SHORT_NAMES = {"eval_exact_match": "exact", "eval_token_accuracy": "tok acc", "eval_preference_accuracy": "pref acc"}


def print_table(trials: list[dict], best_number: int | None, console: Console | None = None) -> None:
    """One row a trial; a column for the ranking metric where it is not the validation loss."""
    console = console or Console(stderr=True)
    metric = ranking_metric(trials)
    extra = metric in SHORT_NAMES
    table = Table(title=f"sweep trials, ranked by {metric}" + (" (ties: val loss)" if extra else ""))
    for col in ("trial", "state", "lr", "r", "batch", "epochs", "val loss", *([SHORT_NAMES[metric]] if extra else []), "evals", "min"):
        table.add_column(col, justify="left" if col == "state" else "right", no_wrap=True)
    for t in trials:
        p = t["params"]
        mark = (" auto" if t.get("auto") else "") + (" *" if t["number"] == best_number else "")
        loss = t.get("kept_eval_loss") if t.get("kept_eval_loss") is not None else t["last_eval_loss"]
        table.add_row(f"{t['number']}{mark}", f"[{STATE_STYLE.get(t['state'], 'white')}]{t['state']}[/]",
                      _fmt(p.get("learning_rate"), ".2e"), str(p.get("lora_r", "-")), str(p.get("batch_size", "-")),
                      str(p.get("epochs", "-")), _fmt(loss, ".4f"), *([_fmt(t.get("score"), ".3f")] if extra else []),
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
