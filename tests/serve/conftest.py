"""Fixtures of the serve tests: a real run folder for the dashboard's --runs, and one dashboard server.

The run folder is a few LoRA steps of the tiny model trained from the Python API (as `tunewright train`
does) with a validation file, so it has everything a CLI run has: config.yaml, metrics.jsonl with
eval_loss, adapter/, eval/results.json and eval/report.html. Helpers are in tests/servers.py.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import write_jsonl
from servers import (
    DASHBOARD_KEY,
    free_port,
    start_server,
    stop_server,
    sum_rows,
    train_cli_run,
)


@pytest.fixture(scope="session")
def cli_runs(tmp_path_factory, tiny_model_dir) -> Path:
    """RUNS/cli-a: a finished CLI run with an evaluation report."""
    root = tmp_path_factory.mktemp("cli-runs")
    data, val = write_jsonl(root / "train.jsonl", sum_rows(16)), write_jsonl(root / "val.jsonl", sum_rows(3, start=40))
    runs = root / "runs"
    train_cli_run(runs, "cli-a", tiny_model_dir, data, val, 2e-4)
    return runs


@pytest.fixture(scope="module")
def dashboard_server(tmp_path_factory, tiny_model_dir, cli_runs) -> Iterator[str]:
    """`tunewright serve MODEL --runs RUNS --api-key DASHBOARD_KEY` with the jobs API on; its base URL.

    One server per test module (as before the move): the browser test's live-curve check needs a server whose
    runner is not busy with the HTTP tests' jobs.
    """
    tmp = tmp_path_factory.mktemp("dashboard-server")
    port = free_port()
    proc = start_server([str(tiny_model_dir), "--runs", str(cli_runs), "--api-key", DASHBOARD_KEY,
                         "--database", f"sqlite:///{tmp / 'jobs.db'}"], port, tmp / "server.log", {"TUNEWRIGHT_JOBS": "1"})
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)
