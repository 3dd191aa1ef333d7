"""Run folders over HTTP, read-only: `GET /v1/runs`, `/v1/runs/{id}`, `/v1/runs/{id}/metrics`, `/v1/runs/{id}/report`.

A run is either a folder under `serve --runs DIR` (trained from the command line; its id is the
folder's name) or the run folder of a fine-tuning job (its id is the job id). Both answer with the
same shape, so the dashboard, and any script, draws CLI runs and jobs with the same code. Nothing
here writes to a run folder, and ids are looked up among the listed runs only, never joined onto a
path, so a request cannot reach outside them.
"""
from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, Query
from fastapi.responses import FileResponse

from ..models import RUN_MARKERS
from ..train.metrics_log import metrics_path, read_metrics
from .errors import OpenAIError

CONFIG_KEYS = ("model", "method", "objective")
HYPERPARAMETER_SECTIONS = ("train", "lora", "data", "preference")


class RunIndex:
    """The runs this server can show: folders under `runs_dir` and the run folders of jobs in `jobs`."""

    def __init__(self, runs_dir: str | None, jobs=None) -> None:
        self.runs_dir = Path(runs_dir).resolve() if runs_dir else None
        self.jobs = jobs

    def folders(self) -> dict[str, tuple[Path, dict | None]]:
        """id -> (run folder, its job row or None), CLI runs first, newest job last."""
        found: dict[str, tuple[Path, dict | None]] = {}
        if self.runs_dir is not None and self.runs_dir.is_dir():
            for child in sorted(self.runs_dir.iterdir()):
                if child.is_dir() and any((child / m).exists() for m in RUN_MARKERS):
                    found[child.name] = (child, None)
        if self.jobs is not None:
            for job in reversed(self.jobs.store.jobs()):
                if job["run_dir"]:
                    found[job["id"]] = (Path(job["run_dir"]), job)
        return found

    def get(self, run_id: str) -> tuple[Path, dict | None]:
        run = self.folders().get(run_id)
        if run is None:
            raise OpenAIError(404, f"No such run: {run_id}", param="run_id", code="run_not_found")
        return run


def run_object(run_id: str, folder: Path, job: dict | None) -> dict:
    """What the dashboard lists and compares: resolved config, last metrics, eval metrics, report presence."""
    config = _read_yaml(folder / "config.yaml")
    metrics = read_metrics(metrics_path(folder))
    losses = [r for r in metrics if r.get("loss") is not None]
    results = _read_json(folder / "eval" / "results.json")
    return {
        "id": run_id, "object": "run", "source": "job" if job else "folder", "name": folder.name if not job else job["id"],
        "created_at": job["created_at"] if job else _created_at(folder), "status": _status(folder, job),
        **{k: config.get(k) for k in CONFIG_KEYS},
        "hyperparameters": {k: config[k] for k in HYPERPARAMETER_SECTIONS if isinstance(config.get(k), dict)},
        "steps": metrics[-1]["step"] if metrics else 0, "last_loss": losses[-1]["loss"] if losses else None,
        "tokens": metrics[-1].get("tokens") if metrics else None,
        "tokens_per_s": metrics[-1].get("tokens_per_s") if metrics else None,
        "eval": {"sides": results.get("sides"), "metrics": results.get("metrics"), "comparison": results.get("comparison")}
        if results else None,
        "has_report": (folder / "eval" / "report.html").is_file(),
        "fine_tuned_model": job.get("fine_tuned_model") if job else None,
    }


def _status(folder: Path, job: dict | None) -> str:
    if job is not None:
        return job["status"]
    if (folder / "adapter").is_dir() or (folder / "model").is_dir():
        return "succeeded"
    return "incomplete"


def _created_at(folder: Path) -> int:
    marker = next((folder / m for m in RUN_MARKERS if (folder / m).exists()), folder)
    return int(marker.stat().st_mtime)


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _read_json(path: Path) -> dict:
    try:
        loaded = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def add_run_routes(app: FastAPI, index: RunIndex) -> None:
    @app.get("/v1/runs")
    def list_runs():
        return {"object": "list", "data": [run_object(i, f, j) for i, (f, j) in index.folders().items()], "has_more": False}

    @app.get("/v1/runs/{run_id}")
    def get_run(run_id: str):
        folder, job = index.get(run_id)
        return run_object(run_id, folder, job)

    @app.get("/v1/runs/{run_id}/metrics")
    def run_metrics(run_id: str, after_step: int = Query(-1, ge=-1)):
        """Every logged step after `after_step`: a page polls with the last step it has, and gets only new points."""
        folder, _ = index.get(run_id)
        rows = read_metrics(metrics_path(folder))
        return {"object": "list", "data": [r for r in rows if r["step"] > after_step], "has_more": False}

    @app.get("/v1/runs/{run_id}/report")
    def run_report(run_id: str):
        folder, _ = index.get(run_id)
        report = folder / "eval" / "report.html"
        if not report.is_file():
            raise OpenAIError(404, f"Run {run_id} has no evaluation report yet (eval/report.html).", param="run_id",
                              code="report_not_found")
        return FileResponse(report, media_type="text/html")
