"""A real run folder trained from the Python API (as `tunewright train` does), for the dashboard's --runs tests.

A few LoRA steps of the tiny model with a validation file, so the folder has everything a CLI run
has: config.yaml, metrics.jsonl with eval_loss, adapter/, eval/results.json and eval/report.html.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_jsonl

DASHBOARD_KEY = "dashboard-key"


def sum_rows(n: int, start: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(start, start + n)]


def bad_file(path: Path) -> Path:
    """Five chats; line 3 has messages as a string: the one bad row."""
    lines = [json.dumps(r) for r in sum_rows(5)]
    lines[2] = json.dumps({"messages": "nope"})
    path.write_text("\n".join(lines) + "\n")
    return path


def train_cli_run(runs: Path, name: str, model_dir: Path, data: Path, val: Path, learning_rate: float) -> Path:
    import tunewright

    cfg = tunewright.load_config(overrides=[
        "train.max_steps=3", "train.threads=1", "train.precision=fp32", f"train.learning_rate={learning_rate}",
        "train.batch_size=4", "eval.max_new_tokens=4", "eval.limit=3", f"data.validation={val}"],
        model=str(model_dir), data__train=str(data), output_dir=str(runs / name))
    tunewright.train(cfg)
    return runs / name


@pytest.fixture(scope="session")
def cli_runs(tmp_path_factory, tiny_model_dir) -> Path:
    """RUNS/cli-a: a finished CLI run with an evaluation report."""
    root = tmp_path_factory.mktemp("cli-runs")
    data, val = write_jsonl(root / "train.jsonl", sum_rows(16)), write_jsonl(root / "val.jsonl", sum_rows(3, start=40))
    runs = root / "runs"
    train_cli_run(runs, "cli-a", tiny_model_dir, data, val, 2e-4)
    return runs


@pytest.fixture(scope="session")
def dashboard_server(tmp_path_factory, tiny_model_dir, cli_runs) -> Iterator[str]:
    """`tunewright serve MODEL --runs RUNS --api-key DASHBOARD_KEY` with the jobs API on; its base URL.

    One server for the HTTP and the browser tests: starting it costs more than either module's checks.
    """
    from test_serve import free_port, start_server, stop_server

    tmp = tmp_path_factory.mktemp("dashboard-server")
    port = free_port()
    proc = start_server([str(tiny_model_dir), "--runs", str(cli_runs), "--api-key", DASHBOARD_KEY,
                         "--database", f"sqlite:///{tmp / 'jobs.db'}"], port, tmp / "server.log", {"TUNEWRIGHT_JOBS": "1"})
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)
