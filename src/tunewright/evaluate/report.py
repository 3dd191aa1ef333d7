"""Show the results: eval/results.json, one self-contained eval/report.html, and a table in the terminal.

The HTML page carries everything inline (CSS, the loss curve as a base64 PNG, interval bars as SVG)
so it can be mailed, attached to a ticket or opened offline and look the same.
"""
from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup
from rich.console import Console
from rich.table import Table

from .bootstrap import BETTER, WORSE
from .sides import BASE, TUNED

TEMPLATE = "report.html.j2"
EXAMPLES_IN_REPORT = 200  # the full list is in results.json


def fmt(results: dict, key: str, value, signed: bool = False) -> str:
    """A metric value with the decimals its metric deserves; missing values as a dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    digits = results["metric_info"].get(key, {}).get("digits", 3)
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_interval(results: dict, key: str, row: dict) -> str:
    if row.get("low") is None or row.get("high") is None:
        return "–"
    return f"[{fmt(results, key, row['low'], True)}, {fmt(results, key, row['high'], True)}]"


# --- training curve ----------------------------------------------------------------------------


def read_training_curve(metrics_path: Path | None) -> dict[str, list[tuple[float, float]]]:
    """(step, loss) and (step, eval_loss) points from a run's metrics.jsonl; unreadable lines are skipped."""
    from ..train.metrics_log import read_metrics

    curve: dict[str, list[tuple[float, float]]] = {"train": [], "eval": []}
    for row in read_metrics(metrics_path) if metrics_path is not None else []:
        for name, key in (("train", "loss"), ("eval", "eval_loss")):
            if isinstance(row.get(key), (int, float)) and math.isfinite(row[key]):
                curve[name].append((row["step"], float(row[key])))
    return curve


def loss_curve_png(curve: dict[str, list[tuple[float, float]]]) -> str | None:
    """The training and validation loss over steps as a base64 PNG, or None without data."""
    if not curve["train"] and not curve["eval"]:
        return None
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(7.5, 3.2), dpi=110)
    ax = fig.add_subplot()
    if curve["train"]:
        ax.plot(*zip(*curve["train"]), lw=1.3, color="#4477aa", label="train loss")
    if curve["eval"]:
        ax.plot(*zip(*curve["eval"]), "o-", lw=1.6, ms=4, color="#ee6677", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# --- HTML --------------------------------------------------------------------------------------


def interval_svg(row: dict) -> Markup:
    """A tiny forest-plot bar: the interval around the delta, with zero marked."""
    values = [row.get(k) for k in ("delta", "low", "high")]
    if any(v is None for v in values):
        return Markup("")
    delta, low, high = values
    span = max(abs(low), abs(high), abs(delta)) or 1.0
    x = lambda v: 60 + 55 * v / span  # noqa: E731 - maps [-span, span] onto [5, 115]
    colour = {BETTER: "#228833", WORSE: "#cc3311"}.get(row.get("verdict"), "#777777")
    return Markup(
        f'<svg class="ci" width="120" height="14" viewBox="0 0 120 14" role="img" aria-label="interval">'
        f'<line x1="60" y1="0" x2="60" y2="14" stroke="#bbb"/>'
        f'<line x1="{x(low):.1f}" y1="7" x2="{x(high):.1f}" y2="7" stroke="{colour}" stroke-width="3"/>'
        f'<circle cx="{x(delta):.1f}" cy="7" r="3.5" fill="{colour}"/></svg>'
    )


def render_report(results: dict, curve: dict[str, list[tuple[float, float]]] | None = None) -> str:
    """The whole report page as one HTML string."""
    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent)), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(fmt=lambda key, value, signed=False: fmt(results, key, value, signed),
                       fmt_interval=lambda key, row: fmt_interval(results, key, row), interval_svg=interval_svg)
    examples = results["examples"]
    changed = results.get("changed_most", {})
    return env.get_template(TEMPLATE).render(
        r=results,
        comparing=bool(results.get("comparison")),
        loss_png=loss_curve_png(curve or {"train": [], "eval": []}),
        improved=[examples[i] for i in changed.get("improved", [])],
        regressed=[examples[i] for i in changed.get("regressed", [])],
        shown_examples=examples[:EXAMPLES_IN_REPORT],
    )


def write_outputs(results: dict, eval_dir: Path, metrics_path: Path | None = None) -> tuple[Path, Path]:
    """Write results.json and report.html into `eval_dir`; returns both paths."""
    eval_dir = Path(eval_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = eval_dir / "results.json", eval_dir / "report.html"
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False), encoding="utf-8")
    html_path.write_text(render_report(results, read_training_curve(metrics_path)), encoding="utf-8")
    return json_path, html_path


# --- terminal ----------------------------------------------------------------------------------

_VERDICT_STYLE = {BETTER: "bold green", WORSE: "bold red"}


def results_table(results: dict) -> Table:
    """The metric table: base, tuned, delta, interval and verdict per metric (just values without a base)."""
    sides = results["sides"]
    title = f"{sides[TUNED]} vs {sides[BASE]}" if BASE in sides else sides[TUNED]
    table = Table(title=f"{title} · {results['n_examples']} examples", title_justify="left")
    table.add_column("metric", no_wrap=True)
    if not results.get("comparison"):
        table.add_column("value", justify="right", no_wrap=True)
        for key, value in results["metrics"][TUNED].items():
            table.add_row(results["metric_info"][key]["label"], fmt(results, key, value))
        return table
    confidence = round(results["settings"]["bootstrap"]["confidence"] * 100)
    for name in ("base", "tuned", "Δ"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column(f"{confidence}% CI", justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    for key, row in results["comparison"].items():
        style = _VERDICT_STYLE.get(row["verdict"], "dim")
        table.add_row(results["metric_info"][key]["label"], fmt(results, key, row["base"]), fmt(results, key, row["tuned"]),
                      fmt(results, key, row["delta"], True), fmt_interval(results, key, row), f"[{style}]{row['verdict']}[/]")
    return table


def print_summary(results: dict, console: Console | None = None, report_path: Path | None = None) -> None:
    """The table, what was cut off at max_new_tokens, and where the report is."""
    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 110)  # logs and pipes: a wide table beats a wrapped one
    console.print(results_table(results))
    for side, gen in results.get("generation", {}).items():
        if gen.get("cut_off_at_max_new_tokens"):
            console.print(f"[yellow]{side}: {gen['cut_off_at_max_new_tokens']} of {results['n_examples']} answers hit "
                          f"max_new_tokens={results['settings']['max_new_tokens']} (raise --max-new-tokens if answers look cut off)[/]")
    if report_path is not None:
        console.print(f"report: {report_path}")
