"""The OpenAI fine-tuning API on local hardware: /v1/files and /v1/fine_tuning/jobs.

Existing client code (`client.files.create`, `client.fine_tuning.jobs.create`, ...) runs unchanged;
each job becomes a tunewright run folder, and a succeeded job's `fine_tuned_model` id is served by
this same server at once. `method.type` "supervised" trains on instruction data and "dpo" on
preference pairs (objective dpo); a file of the other kind is refused when the job is created.
tunewright-only knobs travel in an optional `tunewright` object
(`extra_body={"tunewright": {"method": "dora", "settings": {"train.max_steps": 50}}}`), limited to
keys that cannot point the trainer at other files.
"""
from __future__ import annotations

import logging
import re
import shutil
import threading
from pathlib import Path

from fastapi.responses import FileResponse
from pydantic import ValidationError

from .errors import OpenAIError
from .jobs_request import (
    ALLOWED_SETTINGS,
    METHOD_DATA,
    CreateJob,
    Extras,
    check_setting_limits,
    hyperparameters_of,
    method_type_of,
)
from .jobs_runner import JobRunner, fine_tuned_id, job_config
from .jobs_store import ACTIVE, JobStore, new_id, now, page
from .jobs_store_pg import open_store
from .registry import BASE_ADAPTER, Registry, ServedModel

UPLOAD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# How to describe each kind of data (data.formats kinds) in an error, and what to upload instead.
KIND_WORDS = {"sft": "instruction data (one answer per prompt)", "preference": "preference pairs (a chosen and a rejected answer)"}
KIND_FIX = {"sft": 'rows like {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}',
            "preference": 'rows like {"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", ...}], '
                          '"non_preferred_output": [{"role": "assistant", ...}]}'}


def file_object(row: dict) -> dict:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed", "status_details": None,
            "expires_at": None}


RESULTS_POLL_SECONDS = 1.0  # how often a server on a shared database looks for results the workers finished
log = logging.getLogger("tunewright.serve.jobs")


class JobsService:
    """Files, jobs and the job runner, bound to one store, registry and engine.

    On SQLite the runner is a thread of this server (the embedded default). On a shared database
    (PostgreSQL) `tunewright worker`s run the jobs and this server only serves: a thread loads each
    result a worker finished, so its `fine_tuned_model` id answers here.
    """

    def __init__(self, store: JobStore, registry: Registry, engine) -> None:
        self.store, self.registry, self.engine = store, registry, engine
        self.runner = None if store.shared else JobRunner(store, self._serve_result)
        self._closed = threading.Event()
        self._unloadable: set[str] = set()  # results that failed to load: logged once, not retried every poll
        self._results = threading.Thread(target=self._load_results_loop, name="tunewright-results", daemon=True)

    @classmethod
    def open(cls, database: str | None, registry: Registry, engine, storage: str | None = None) -> JobsService:
        service = cls(open_store(database, storage), registry, engine)
        if service.runner is not None:
            service.runner.recover()
        service._load_results()  # fine-tuned models stay servable across restarts
        if service.runner is not None:
            service.runner.start()
        else:
            service._results.start()
        return service

    def close(self) -> None:
        self._closed.set()
        if self.runner is not None:
            self.runner.stop()

    def _load_results(self) -> None:
        """Serve every succeeded job's model that this server has not loaded yet."""
        for job in self.store.jobs(("succeeded",)):
            model_id = job["fine_tuned_model"]
            if not model_id or model_id in self._unloadable or self.registry.get(model_id) is not None:
                continue
            if Path(job["run_dir"] or "").is_dir():
                try:
                    self._serve_result(job)
                except Exception:  # a broken run folder must not stop later results from loading
                    log.exception("could not load %s (job %s)", model_id, job["id"])
                    self._unloadable.add(model_id)

    def _load_results_loop(self) -> None:
        while not self._closed.wait(RESULTS_POLL_SECONDS):
            try:
                self._load_results()
            except Exception:  # e.g. the database restarting: try again next time
                log.exception("could not list finished jobs")

    def _serve_result(self, job: dict) -> None:
        """Load a finished run into the server under its fine_tuned_model id (on the engine thread)."""
        model_id = job["fine_tuned_model"] or fine_tuned_id(job)
        if self.registry.get(model_id) is None:
            self.engine.call(lambda: self.registry.add(job["run_dir"], model_id)).result(timeout=900)
        self.store.update_job(job["id"], fine_tuned_model=model_id)
        job["fine_tuned_model"] = model_id

    # --- validation ---------------------------------------------------------------------------

    def _base_spec(self, model: str) -> str:
        """The model a job trains from: what a served model was loaded from, or the embedded default.

        A served fine-tune (a job's `fine_tuned_model`, or a run or adapter folder given to `serve`)
        trains from its folder, which `model:` accepts (a LoRA run is merged into its base), so
        OpenAI's flow of a DPO job on a supervised job's `fine_tuned_model` runs unchanged.
        """
        from ..models import EMBEDDED_DEFAULT

        served = self.registry.get(model)
        spec = _trainable_spec(served) if served is not None else None
        if spec is not None:
            return spec
        if model == EMBEDDED_DEFAULT:
            return model
        usable = [m for m in self.registry.ids() if _trainable_spec(self.registry.get(m)) is not None]
        raise OpenAIError(400, f"Model '{model}' cannot be fine-tuned here. Fine-tunable models: "
                          f"{', '.join(usable + [EMBEDDED_DEFAULT])}.", param="model", code="model_not_available")

    def _file_or_400(self, file_id: str | None, param: str) -> dict | None:
        if file_id is None:
            return None
        row = self.store.file(file_id)
        if row is None:
            raise OpenAIError(400, f"File '{file_id}' does not exist.", param=param, code="invalid_file")
        if row["purpose"] != "fine-tune":
            raise OpenAIError(400, f"File '{file_id}' was not uploaded with purpose 'fine-tune'.", param=param, code="invalid_file")
        return row

    def _require_kind(self, row: dict | None, method_type: str, param: str) -> None:
        """A supervised job needs instruction data and a dpo job preference pairs: refuse the other kind now."""
        if row is None:
            return
        wanted = METHOD_DATA[method_type]
        kind, fmt = row.get("kind"), row.get("format")
        if kind is None:  # uploaded by a version that did not record it
            kind, fmt = _file_kind(Path(row["path"]))
        if kind == wanted:
            return
        other = next(t for t, k in METHOD_DATA.items() if k == kind)
        raise OpenAIError(400, f"File '{row['id']}' ({row['filename']}) holds {KIND_WORDS[kind]} in the {fmt} format, but a "
                          f"'{method_type}' job trains on {KIND_WORDS[wanted]}. Upload {KIND_FIX[wanted]}, or create the job "
                          f"with method.type '{other}'.", param=param, code="invalid_file")

    def _checked_config(self, job: dict, training: dict, validation: dict | None) -> None:
        """Refuse at creation what the trainer would refuse later: every setting must make a valid RunConfig."""
        from ..config import RunConfig

        settings = (job["extras"] or {}).get("settings") or {}
        unknown = sorted(set(settings) - ALLOWED_SETTINGS)
        if unknown:
            raise OpenAIError(400, f"tunewright.settings may not set {', '.join(unknown)}; allowed: {', '.join(sorted(ALLOWED_SETTINGS))}.",
                              param="tunewright.settings", code="invalid_value")
        check_setting_limits(settings)
        try:
            RunConfig.model_validate(job_config(job, training["path"], validation["path"] if validation else None, None))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise OpenAIError(400, f"Invalid training setting {where}: {first['msg']}.", param="tunewright.settings",
                              code="invalid_value") from None

    def create_job(self, body: CreateJob) -> dict:
        job, training, _ = self.validated_job(body)
        job_id = job["id"]
        self.store.add_job(job)
        self.store.add_event(job_id, f"Validating training file: {training['id']}")
        self.store.update_job(job_id, status="queued")
        self.store.add_event(job_id, "Files validated, moving job to queued state")
        return self.job_object(self.store.job(job_id))

    def validated_job(self, body: CreateJob) -> tuple[dict, dict, dict | None]:
        """The job row `body` asks for, and its training and validation file rows; any fault is a 400 (nothing is stored)."""
        method_type = method_type_of(body)
        if body.suffix is not None and not re.fullmatch(r"[A-Za-z0-9_.-]*", body.suffix):
            raise OpenAIError(400, "suffix may hold only letters, digits, '-', '_' and '.'.", param="suffix", code="invalid_value")
        hp, where = hyperparameters_of(body, method_type)
        hp = hp.check(where)
        training = self._file_or_400(body.training_file, "training_file")
        validation = self._file_or_400(body.validation_file, "validation_file")
        self._require_kind(training, method_type, "training_file")
        self._require_kind(validation, method_type, "validation_file")
        job_id = new_id("ftjob")
        job = {"id": job_id, "model": body.model, "base_spec": self._base_spec(body.model),
               "training_file": training["id"], "validation_file": validation["id"] if validation else None,
               "hyperparameters": hp.model_dump(), "extras": (body.tunewright or Extras()).model_dump(),
               "method_type": method_type, "suffix": body.suffix, "seed": body.seed if body.seed is not None else 42, "metadata": body.metadata,
               "status": "validating_files",
               "created_at": now(), "run_dir": str((self.store.root / "ft-jobs" / job_id).resolve())}
        self._checked_config(job, training, validation)
        return job, training, validation

    # --- output shapes ------------------------------------------------------------------------

    def job_object(self, job: dict) -> dict:
        """OpenAI's job object; once the run has resolved its config, `auto` hyperparameters show their values."""
        method_type = job.get("method_type") or "supervised"
        hp = dict(job["hyperparameters"] or {})
        resolved = _resolved_config(job["run_dir"])
        train = resolved.get("train") or {}
        if train:
            hp["n_epochs"] = train.get("epochs", hp.get("n_epochs"))
            hp["batch_size"] = train.get("batch_size", hp.get("batch_size"))
            if hp.get("learning_rate_multiplier") == "auto":
                hp["learning_rate_multiplier"] = 1.0
        if method_type == "dpo" and hp.get("beta") == "auto":
            hp["beta"] = (resolved.get("preference") or {}).get("beta", "auto")
        top = {k: v for k, v in hp.items() if k != "beta"}  # the top-level object has no beta in OpenAI's API
        return {"object": "fine_tuning.job", "id": job["id"], "model": job["model"], "created_at": job["created_at"],
                "finished_at": job["finished_at"], "status": job["status"],
                "fine_tuned_model": job["fine_tuned_model"] if job["status"] == "succeeded" else None,
                "organization_id": "org-tunewright", "result_files": [], "training_file": job["training_file"],
                "validation_file": job["validation_file"], "hyperparameters": top, "trained_tokens": job["trained_tokens"],
                "error": job["error"], "seed": job["seed"], "estimated_finish": None, "integrations": [],
                "user_provided_suffix": job["suffix"], "metadata": job.get("metadata"),
                "method": {"type": method_type, method_type: {"hyperparameters": hp}}}

    def checkpoints(self, job: dict) -> list[dict]:
        """Complete checkpoints of the job's run, newest first, with the metrics logged at that step."""
        from ..train.checkpoint import complete_checkpoints

        run_dir = Path(job["run_dir"] or "")
        if not run_dir.is_dir():
            return []
        metrics = _metrics_by_step(run_dir)
        model_id = job["fine_tuned_model"] or fine_tuned_id(job)
        out = []
        for path in reversed(complete_checkpoints(run_dir)):
            step = int(path.name.rsplit("-", 1)[-1])
            row = metrics.get(step, {})
            out.append({"object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{job['id'][-8:]}-{step}",
                        "created_at": int(path.stat().st_mtime), "fine_tuned_model_checkpoint": f"{model_id}:ckpt-step-{step}",
                        "step_number": step, "fine_tuning_job_id": job["id"],
                        "metrics": {"step": step, "train_loss": row.get("loss"), "valid_loss": row.get("eval_loss"),
                                    "valid_mean_token_accuracy": row.get("eval_token_accuracy")}})
        return out

    def save_upload(self, upload, purpose: str) -> dict:
        """Store an uploaded file and validate it as training data before answering."""
        if purpose != "fine-tune":
            raise OpenAIError(400, f"purpose '{purpose}' is not supported; this server takes 'fine-tune' files.",
                              param="purpose", code="invalid_value")
        name = Path(upload.filename or "upload.jsonl").name
        suffix = Path(name).suffix.lower() if Path(name).suffix.lower() in UPLOAD_SUFFIXES else ".jsonl"
        file_id = new_id("file")
        folder = self.store.root / "files"
        folder.mkdir(parents=True, exist_ok=True)
        path = (folder / f"{file_id}{suffix}").resolve()
        with open(path, "wb") as out:
            shutil.copyfileobj(upload.file, out, length=2**20)
        try:
            rows, kind, fmt = _validate_training_file(path, name)
        except OpenAIError:
            path.unlink(missing_ok=True)
            raise
        return self.store.add_file({"id": file_id, "filename": name, "purpose": purpose, "bytes": path.stat().st_size,
                                    "created_at": now(), "path": str(path), "rows": rows, "kind": kind, "format": fmt})

    def cancel(self, job: dict) -> dict:
        if job["status"] not in ACTIVE:
            raise OpenAIError(400, f"Job {job['id']} has already finished ({job['status']}); it cannot be cancelled.",
                              param="fine_tuning_job_id", code="invalid_state")
        self.store.update_job(job["id"], status="cancelled", finished_at=now(), cancel_requested=1)
        if self.runner is not None:
            self.runner.cancel(job["id"])
        if job["status"] != "running":  # a running job's runner (here or on a worker) records it when the trainer stops
            self.store.add_event(job["id"], "Job cancelled")
        return self.job_object(self.store.job(job["id"]))

    def list_page(self, items: list[dict], after: str | None, limit: int) -> dict:
        data, more = page(items, after, max(1, min(limit, 100)))
        return {"object": "list", "data": data, "has_more": more}


def _trainable_spec(served: ServedModel) -> str | None:
    """The spec a job on `served` trains from, or None when `model:` would not accept it.

    A base is its own spec; a run folder (adapter or full) or a bare adapter folder is given by its
    absolute path, so the trainer finds it whatever its working directory.
    """
    from ..errors import UserError
    from ..models import describe_run, resolve_model

    if describe_run(served.spec) is None:
        return served.spec if served.adapter in (None, BASE_ADAPTER) else None
    try:
        source = resolve_model(served.spec)
    except UserError:  # the folder changed since it was loaded
        return None
    return source.path if source.kind == "run" else None


def _file_kind(path: Path) -> tuple[str | None, str | None]:
    """("sft" | "preference", its format) of a stored file, detected as the trainer will detect it."""
    from ..data import read_detected
    from ..errors import UserError

    try:
        files, _ = read_detected(str(path))
    except UserError:
        return None, None
    known = [f for f in files if f.kind is not None]
    return (known[0].kind, known[0].fmt) if known else (None, None)


def _validate_training_file(path: Path, name: str) -> tuple[int, str, str]:
    """Rows, kind ("sft" or "preference") and format of a training file, or a 400 quoting its first bad rows."""
    from ..data import data_kind, load_conversations, load_pairs, read_detected
    from ..errors import UserError

    try:
        files, _ = read_detected(str(path))
        kind = data_kind(files) or "sft"
        loaded = load_pairs(str(path), files=files) if kind == "preference" else load_conversations(str(path), files=files)
    except UserError as exc:
        message = exc.message.replace(str(path), name)  # the server's own paths are not the client's business
        raise OpenAIError(400, f"Invalid file {name}: {message}", param="file", code="invalid_file") from None
    if loaded.bad_rows:
        shown = "; ".join(str(b).replace(str(path), name) for b in loaded.bad_rows[:3])
        raise OpenAIError(400, f"Invalid file {name}: {len(loaded.bad_rows)} bad row(s): {shown}", param="file", code="invalid_file")
    examples = loaded.pairs if kind == "preference" else loaded.conversations
    if not examples:
        raise OpenAIError(400, f"Invalid file {name}: no training examples found.", param="file", code="invalid_file")
    return len(examples), kind, files[0].fmt


def _resolved_config(run_dir: str | None) -> dict:
    """The run's config.yaml (every `auto` resolved), or {} before the trainer has written it."""
    import yaml

    cfg = Path(run_dir or "") / "config.yaml"
    if not cfg.is_file():
        return {}
    return yaml.safe_load(cfg.read_text()) or {}


def _metrics_by_step(run_dir: Path) -> dict[int, dict]:
    from ..train.metrics_log import metrics_path, read_metrics

    rows: dict[int, dict] = {}
    for row in read_metrics(metrics_path(run_dir)):
        rows.setdefault(row["step"], {}).update(row)
    return rows


def file_response(row: dict) -> FileResponse:
    return FileResponse(row["path"], filename=row["filename"], media_type="application/octet-stream")
