"""Exports and downloads of a run over HTTP, for the dashboard's buttons (and any script).

- `POST /v1/runs/{id}/exports {"format": "hf" | "gguf"}` starts `tunewright export` in a subprocess
  (a merged Hugging Face folder, or a GGUF file with its Ollama Modelfile), zipped when done;
- `GET /v1/runs/{id}/exports` lists them, `GET /v1/runs/{id}/exports/{export_id}/content` downloads one;
- `GET /v1/runs/{id}/archive` zips the run's result (adapter/ or model/, config, metrics, eval/), no checkpoints.
Results go under the server's own folder (`exports/`), never into the run folder, which stays read-only.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict
from starlette.background import BackgroundTask

from .errors import OpenAIError
from .jobs_store import new_id, now
from .runs_routes import RunIndex

FORMATS = ("hf", "gguf")
ARCHIVED = ("adapter", "model", "config.yaml", "metrics.jsonl", "data_report.json", "summary.json", "eval", "loss_curve.png")


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str


@dataclass
class Export:
    id: str
    run_id: str
    format: str
    status: str  # running | succeeded | failed
    created_at: int
    filename: str
    bytes: int | None = None
    error: str | None = None

    def to_json(self) -> dict:
        return {"object": "run.export", **asdict(self)}


class Exporter:
    """Runs exports one at a time per run, in the background; the finished zip is the record on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.exports: dict[str, Export] = {}
        self.lock = threading.Lock()

    def start(self, run_id: str, folder: Path, fmt: str) -> Export:
        if fmt not in FORMATS:
            raise OpenAIError(400, f"format must be one of {', '.join(FORMATS)}.", param="format", code="invalid_value")
        if not ((folder / "adapter").is_dir() or (folder / "model").is_dir()):
            raise OpenAIError(400, f"Run {run_id} has no trained model yet (adapter/ or model/).", param="run_id", code="invalid_state")
        with self.lock:
            if any(e.run_id == run_id and e.status == "running" for e in self.exports.values()):
                raise OpenAIError(409, f"An export of run {run_id} is already running.", param="run_id", code="export_running")
            export = Export(new_id("export"), run_id, fmt, "running", now(), f"{run_id}-{fmt}.zip")
            self.exports[export.id] = export
        threading.Thread(target=self._run, args=(export, folder), daemon=True, name=f"export-{export.id}").start()
        return export

    def _run(self, export: Export, folder: Path) -> None:
        target = self.root / export.run_id
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target) as work:
            out = Path(work) / export.format
            command = [sys.executable, "-m", "tunewright.cli", "export", str(folder), "--format", export.format, "--output", str(out)]
            env = {k: v for k, v in os.environ.items() if k != "TUNEWRIGHT_API_KEY"}  # the exporter needs no key
            done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
            if done.returncode != 0:
                lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
                export.status, export.error = "failed", (lines[-1] if lines else f"exit code {done.returncode}")
                return
            made = shutil.make_archive(str(target / export.id), "zip", root_dir=out if out.is_dir() else out.parent)
        export.bytes, export.status = Path(made).stat().st_size, "succeeded"

    def listed(self, run_id: str) -> list[Export]:
        return [e for e in self.exports.values() if e.run_id == run_id]

    def content(self, run_id: str, export_id: str) -> tuple[Export, Path]:
        export = self.exports.get(export_id)
        if export is None or export.run_id != run_id or export.status != "succeeded":
            raise OpenAIError(404, f"No finished export {export_id} of run {run_id}.", param="export_id", code="export_not_found")
        return export, self.root / run_id / f"{export.id}.zip"


def run_archive(folder: Path) -> Path:
    """A temporary zip of the run's result and records (checkpoints left out: they are for resuming, and large)."""
    with tempfile.NamedTemporaryFile(prefix="tw-run-", suffix=".zip", delete=False) as handle, \
            zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ARCHIVED:
            path = folder / name
            for item in ([path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []):
                if item.is_file():
                    archive.write(item, item.relative_to(folder))
    return Path(handle.name)


def add_export_routes(app: FastAPI, index: RunIndex, exporter: Exporter) -> None:
    @app.post("/v1/runs/{run_id}/exports")
    def start_export(run_id: str, body: ExportRequest):
        folder, _ = index.get(run_id)
        return exporter.start(run_id, folder, body.format).to_json()

    @app.get("/v1/runs/{run_id}/exports")
    def list_exports(run_id: str):
        index.get(run_id)
        return {"object": "list", "data": [e.to_json() for e in exporter.listed(run_id)], "has_more": False}

    @app.get("/v1/runs/{run_id}/exports/{export_id}/content")
    def export_content(run_id: str, export_id: str):
        export, path = exporter.content(run_id, export_id)
        return FileResponse(path, filename=export.filename, media_type="application/zip")

    @app.get("/v1/runs/{run_id}/archive")
    def archive(run_id: str):
        folder, _ = index.get(run_id)
        path = run_archive(folder)
        return FileResponse(path, filename=f"{run_id}.zip", media_type="application/zip",
                            background=BackgroundTask(path.unlink, missing_ok=True))
