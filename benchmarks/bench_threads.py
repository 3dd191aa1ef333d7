"""The thread count each benchmarked run trained with, and the warning when `threads: auto` left cores idle.

A speed number means little without it: on an idle 2-core machine `auto` once resolved to 1 thread and
halved tunewright's speed (issue 13). tunewright writes the resolved value and its reason into the run's
config.yaml (`threads: 2  # auto: 2: 2 cores, 0.1 busy ...`); the baselines record torch's thread count.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from tunewright.train.cpu_usage import usable_cores

_AUTO_NOTE = re.compile(r"^\s+threads:\s*\S+\s+# auto: (?P<reason>.*)$", re.MULTILINE)


def resolved_threads(run_dir: Path) -> dict:
    """{"threads": N, "threads_auto": bool, "threads_reason": str | None} from a tunewright run's config.yaml.

    None where the run wrote no config.yaml (a run folder from before it did): the table says `-`.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {"threads": None, "threads_auto": False, "threads_reason": None}
    text = path.read_text()
    threads = (yaml.safe_load(text).get("train") or {}).get("threads")
    note = _AUTO_NOTE.search(text)
    return {"threads": threads, "threads_auto": note is not None, "threads_reason": note["reason"] if note else None}


def threads_cell(result: dict) -> str:
    """The table cell: `auto → 2` for a resolved auto, the plain count otherwise."""
    threads = result.get("threads")
    if threads is None:
        return "-"
    return f"auto → {threads}" if result.get("threads_auto") else str(threads)


def fewer_threads_warnings(results: dict[str, dict], cores: int | None = None) -> list[str]:
    """One line per run whose `threads: auto` resolved below the cores this process may use (CPU training only)."""
    import torch

    if torch.cuda.is_available():  # next to a GPU auto takes torch's default, and CPU threads do not set the speed
        return []
    cores = cores or usable_cores()
    lines = []
    for name, r in results.items():
        threads = r.get("threads")
        if r.get("threads_auto") and isinstance(threads, int) and threads < cores:
            lines.append(f"warning: {name}: threads: auto picked {threads} of {cores} cores ({r.get('threads_reason')}); "
                         f"its speed is not this machine's best: measure on a quiet machine or pass --threads {cores}")
    return lines


def print_warnings(lines: list[str]) -> None:
    """Each warning as one yellow line on stderr (plain text where stderr is not a terminal)."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    for line in lines:
        console.print(f"[yellow]{escape(line)}[/]")
