"""HTTP routes of the files and fine-tuning jobs API; the logic lives in `jobs.JobsService`.

Handlers are plain `def`s: FastAPI runs them in its thread pool, so SQLite calls and file
validation never block the event loop that streams tokens to other clients.
"""
from __future__ import annotations

from fastapi import FastAPI, File, Form, Query, UploadFile

from .errors import OpenAIError
from .jobs import JobsService, file_object, file_response
from .jobs_request import CreateJob


def _multipart_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("multipart") is not None or importlib.util.find_spec("python_multipart") is not None


def add_routes(app: FastAPI, service: JobsService) -> None:
    store = service.store
    _add_upload_route(app, service)

    def file_or_404(file_id: str) -> dict:
        row = store.file(file_id)
        if row is None:
            raise OpenAIError(404, f"No such File object: {file_id}", param="id", code="file_not_found")
        return row

    def job_or_404(job_id: str) -> dict:
        job = store.job(job_id)
        if job is None:
            raise OpenAIError(404, f"Fine-tuning job {job_id} not found.", param="fine_tuning_job_id", code="job_not_found")
        return job

    @app.get("/v1/files")
    def list_files(purpose: str | None = None):
        return {"object": "list", "data": [file_object(r) for r in store.files(purpose)], "has_more": False}

    @app.get("/v1/files/{file_id}")
    def get_file(file_id: str):
        return file_object(file_or_404(file_id))

    @app.get("/v1/files/{file_id}/content")
    def file_content(file_id: str):
        return file_response(file_or_404(file_id))

    @app.delete("/v1/files/{file_id}")
    def delete_file(file_id: str):
        from pathlib import Path

        row = file_or_404(file_id)
        in_use = [j["id"] for j in store.jobs(("validating_files", "queued", "running"))
                  if file_id in (j["training_file"], j["validation_file"])]
        if in_use:
            raise OpenAIError(400, f"File {file_id} is used by active job(s) {', '.join(in_use)}.", param="id", code="file_in_use")
        store.delete_file(file_id)
        Path(row["path"]).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    @app.post("/v1/fine_tuning/jobs")
    def create_job(body: CreateJob):
        return service.create_job(body)

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(after: str | None = None, limit: int = Query(20, ge=1, le=100)):
        listed = service.list_page(store.jobs(), after, limit)
        listed["data"] = [service.job_object(j) for j in listed["data"]]
        return listed

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def get_job(job_id: str):
        return service.job_object(job_or_404(job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel_job(job_id: str):
        return service.cancel(job_or_404(job_id))

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def job_events(job_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=100)):
        job_or_404(job_id)
        events = [{"object": "fine_tuning.job.event", "id": e["id"], "created_at": e["created_at"], "level": e["level"],
                   "message": e["message"], "type": e["type"], "data": e["data"]} for e in store.events(job_id)]
        return service.list_page(events, after, limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def job_checkpoints(job_id: str, after: str | None = None, limit: int = Query(10, ge=1, le=100)):
        return service.list_page(service.checkpoints(job_or_404(job_id)), after, limit)


def _add_upload_route(app: FastAPI, service: JobsService) -> None:
    """POST /v1/files needs python-multipart to parse the form; without it the route says so."""
    if not _multipart_available():
        @app.post("/v1/files")
        def upload_unavailable():
            raise OpenAIError(501, "File uploads need the python-multipart package on the server (pip install python-multipart).",
                              type="server_error", code="not_implemented")
        return

    @app.post("/v1/files")
    def upload_file(file: UploadFile = File(...), purpose: str = Form(...)):
        return file_object(service.save_upload(file, purpose))
