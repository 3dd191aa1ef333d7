"""metrics.jsonl: one JSON object per logged optimizer step, the one writer and the one reader.

The loop appends a whole line per logged step (or none, on a full disk); the summary, the eval
report, the jobs API and the bench read it back here. A line that does not parse (a kill during
an append, or a line being written right now) or has no integer `step` is skipped.
"""
from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import stop_if_write_fails
from .writes import append_line, write_text_atomic

METRICS_FILE = "metrics.jsonl"


def metrics_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / METRICS_FILE


def parse_row(line: str) -> dict | None:
    """One logged step, or None for a line that is not one."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("step"), int) else None


def read_metrics(path: str | Path) -> list[dict]:
    """The logged steps in file order; [] when there is no file yet."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = (parse_row(line) for line in path.read_text(encoding="utf-8", errors="replace").splitlines())
    return [row for row in rows if row is not None]


def append_metrics(path: Path, row: dict) -> None:
    """One whole line or none: a full disk stops the run with one message, not a half line."""
    with stop_if_write_fails(path.parent, path):
        append_line(path, json.dumps(row))


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop logged steps after the checkpoint so metrics.jsonl has each step once.

    A line that does not parse (what a kill during the append leaves) is dropped too.
    """
    if not path.is_file():
        return
    before = path.read_text(encoding="utf-8", errors="replace")
    rows = [(line, parse_row(line)) for line in before.splitlines()]
    after = "".join(line + "\n" for line, row in rows if row is not None and row["step"] <= step)
    if after != before:  # rewritten whole or not at all: a resume on a still-full disk loses no line
        with stop_if_write_fails(path.parent, path):
            write_text_atomic(path, after)
