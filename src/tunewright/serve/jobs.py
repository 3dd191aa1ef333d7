"""The OpenAI fine-tuning API on local hardware: /v1/files and /v1/fine_tuning/jobs.

Existing client code (`client.files.create`, `client.fine_tuning.jobs.create`, ...) runs unchanged;
each job becomes a tunewright run folder, and a succeeded job's `fine_tuned_model` id is served by
this same server at once. tunewright-only knobs travel in an optional `tunewright` object
(`extra_body={"tunewright": {"method": "dora", "settings": {"train.max_steps": 50}}}`), limited to
keys that cannot point the trainer at other files.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from .errors import OpenAIError
from .jobs_runner import JobRunner, job_config
from .jobs_store import ACTIVE, JobStore, new_id, now, page
from .registry import BASE_ADAPTER, Registry

ALLOWED_SETTINGS = {
    "train.max_steps", "train.seed", "train.warmup_ratio", "train.scheduler", "train.eval_every", "train.save_every",
    "train.weight_decay", "lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "data.max_seq_len",
    "data.packing", "eval.after_train",
}
# Upper bounds for settings a client could otherwise use to tie the machine up for days or run it out of memory.
SETTING_LIMITS = {"train.max_steps": (1, 100_000), "lora.r": (1, 256), "data.max_seq_len": (16, 32_768)}
SEED_MAX = 2**32 - 1  # what torch, numpy and random all accept; SQLite's INTEGER holds it
METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512
UPLOAD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def _auto_or(kinds: tuple[type, ...], what: str) -> PlainValidator:
    """'auto' or a JSON number of the given kind: "3" and true are refused, not coerced to 3 and 1."""
    def check(value: Any) -> Any:
        if value == "auto" and isinstance(value, str):
            return value
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValueError(f"must be 'auto' or {what}, got {json.dumps(value)}")
        return float(value) if float in kinds else value
    return PlainValidator(check)


def _check_metadata(value: Any) -> dict[str, str] | None:
    """OpenAI's metadata rules: at most 16 string pairs, keys up to 64 characters, values up to 512."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("must be an object of string keys and string values")
    if len(value) > METADATA_PAIRS:
        raise ValueError(f"has {len(value)} pairs; at most {METADATA_PAIRS} are allowed")
    for key, item in value.items():
        if len(key) > METADATA_KEY_CHARS:
            raise ValueError(f"key '{key[:20]}...' is longer than {METADATA_KEY_CHARS} characters")
        if not isinstance(item, str):
            raise ValueError(f"value of '{key}' must be a string, got {json.dumps(item)}")
        if len(item) > METADATA_VALUE_CHARS:
            raise ValueError(f"value of '{key}' is longer than {METADATA_VALUE_CHARS} characters")
    return value


def _check_seed(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise ValueError(f"must be an integer from 0 to {SEED_MAX}, got {json.dumps(value)}")
    return value


AutoInt = Annotated[Any, _auto_or((int,), "an integer")]
AutoFloat = Annotated[Any, _auto_or((int, float), "a number")]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: AutoInt = Field("auto", description="1..50")
    batch_size: AutoInt = "auto"
    learning_rate_multiplier: AutoFloat = "auto"

    def check(self, where: str) -> "Hyperparameters":
        for name, value, low, high in (("n_epochs", self.n_epochs, 1, 50), ("batch_size", self.batch_size, 1, 1024),
                                       ("learning_rate_multiplier", self.learning_rate_multiplier, 1e-6, 100)):
            if value != "auto" and not low <= value <= high:
                raise OpenAIError(400, f"{where}.{name} must be 'auto' or between {low} and {high}.",
                                  param=f"{where}.{name}", code="invalid_value")
        return self


class Supervised(BaseModel):
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    type: str = "supervised"
    supervised: Supervised | None = None


class Extras(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["lora", "dora", "qlora", "full", "freeze"] = "lora"
    settings: dict[str, Any] = Field(default_factory=dict)


class CreateJob(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: Annotated[Any, PlainValidator(_check_seed)] = None
    metadata: Annotated[Any, PlainValidator(_check_metadata)] = None
    tunewright: Extras | None = None


def _hyperparameters(body: CreateJob) -> tuple[Hyperparameters, str]:
    """The job's hyperparameters and where they came from (for the `param` of an error)."""
    supervised = body.method and body.method.supervised
    if supervised and supervised.hyperparameters is not None:
        return supervised.hyperparameters, "method.supervised.hyperparameters"
    return body.hyperparameters or Hyperparameters(), "hyperparameters"


def _check_setting_limits(settings: dict[str, Any]) -> None:
    """Integer settings must be JSON integers within SETTING_LIMITS (train.max_steps may also be null)."""
    for key, (low, high) in SETTING_LIMITS.items():
        if key not in settings or (key == "train.max_steps" and settings[key] is None):
            continue
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise OpenAIError(400, f"tunewright.settings {key} must be an integer from {low} to {high}, got {json.dumps(value)}.",
                              param=f"tunewright.settings.{key}", code="invalid_value")


def file_object(row: dict) -> dict:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed", "status_details": None,
            "expires_at": None}


class JobsService:
    """Files, jobs and the runner thread, bound to one store, registry and engine."""

    def __init__(self, store: JobStore, registry: Registry, engine) -> None:
        self.store, self.registry, self.engine = store, registry, engine
        self.runner = JobRunner(store, self._serve_result)

    @classmethod
    def open(cls, database: str | None, registry: Registry, engine) -> "JobsService":
        service = cls(JobStore(database), registry, engine)
        service.runner.recover()
        for job in service.store.jobs(("succeeded",)):  # fine-tuned models stay servable across restarts
            if job["fine_tuned_model"] and Path(job["run_dir"] or "").is_dir():
                service._serve_result(job)
        service.runner.start()
        return service

    def close(self) -> None:
        self.runner.stop()

    def _serve_result(self, job: dict) -> None:
        """Load a finished run into the server under its fine_tuned_model id (on the engine thread)."""
        model_id = job["fine_tuned_model"] or self._fine_tuned_id(job)
        if self.registry.get(model_id) is None:
            self.engine.call(lambda: self.registry.add(job["run_dir"], model_id)).result(timeout=900)
        self.store.update_job(job["id"], fine_tuned_model=model_id)
        job["fine_tuned_model"] = model_id

    @staticmethod
    def _fine_tuned_id(job: dict) -> str:
        base = Path(job["model"]).name if "/" in job["model"] else job["model"]
        return f"ft:{base}:tunewright:{job['suffix'] or ''}:{job['id'][-8:]}"

    # --- validation ---------------------------------------------------------------------------

    def _base_spec(self, model: str) -> str:
        """The model a job trains from: a served base (not an adapter), or the embedded default."""
        from ..models import EMBEDDED_DEFAULT, describe_run

        served = self.registry.get(model)
        if served is not None and served.adapter in (None, BASE_ADAPTER):
            run = describe_run(served.spec)
            return run["model"] if run and "model" in run else served.spec
        if model == EMBEDDED_DEFAULT:
            return model
        usable = [m for m in self.registry.ids() if self.registry.get(m).adapter in (None, BASE_ADAPTER)]
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

    def _checked_config(self, job: dict, training: dict, validation: dict | None) -> None:
        """Refuse at creation what the trainer would refuse later: every setting must make a valid RunConfig."""
        from ..config import RunConfig

        settings = (job["extras"] or {}).get("settings") or {}
        unknown = sorted(set(settings) - ALLOWED_SETTINGS)
        if unknown:
            raise OpenAIError(400, f"tunewright.settings may not set {', '.join(unknown)}; allowed: {', '.join(sorted(ALLOWED_SETTINGS))}.",
                              param="tunewright.settings", code="invalid_value")
        _check_setting_limits(settings)
        try:
            RunConfig.model_validate(job_config(job, training["path"], validation["path"] if validation else None, None))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise OpenAIError(400, f"Invalid training setting {where}: {first['msg']}.", param="tunewright.settings",
                              code="invalid_value") from None

    def create_job(self, body: CreateJob) -> dict:
        if body.method is not None and body.method.type != "supervised":
            raise OpenAIError(400, f"Fine-tuning method '{body.method.type}' is not supported; only 'supervised'.",
                              param="method.type", code="unsupported_parameter")
        if body.suffix is not None and not re.fullmatch(r"[A-Za-z0-9_.-]*", body.suffix):
            raise OpenAIError(400, "suffix may hold only letters, digits, '-', '_' and '.'.", param="suffix", code="invalid_value")
        hp, where = _hyperparameters(body)
        hp = hp.check(where)
        training = self._file_or_400(body.training_file, "training_file")
        validation = self._file_or_400(body.validation_file, "validation_file")
        job_id = new_id("ftjob")
        job = {"id": job_id, "model": body.model, "base_spec": self._base_spec(body.model),
               "training_file": training["id"], "validation_file": validation["id"] if validation else None,
               "hyperparameters": hp.model_dump(), "extras": (body.tunewright or Extras()).model_dump(),
               "suffix": body.suffix, "seed": body.seed if body.seed is not None else 42, "metadata": body.metadata,
               "status": "validating_files",
               "created_at": now(), "run_dir": str((self.store.root / "ft-jobs" / job_id).resolve())}
        self._checked_config(job, training, validation)
        self.store.add_job(job)
        self.store.add_event(job_id, f"Validating training file: {training['id']}")
        self.store.update_job(job_id, status="queued")
        self.store.add_event(job_id, "Files validated, moving job to queued state")
        return self.job_object(self.store.job(job_id))

    # --- output shapes ------------------------------------------------------------------------

    def job_object(self, job: dict) -> dict:
        hp = dict(job["hyperparameters"] or {})
        resolved = _resolved_train(job["run_dir"])
        if resolved:
            hp["n_epochs"] = resolved.get("epochs", hp.get("n_epochs"))
            hp["batch_size"] = resolved.get("batch_size", hp.get("batch_size"))
            if hp.get("learning_rate_multiplier") == "auto":
                hp["learning_rate_multiplier"] = 1.0
        return {"object": "fine_tuning.job", "id": job["id"], "model": job["model"], "created_at": job["created_at"],
                "finished_at": job["finished_at"], "status": job["status"],
                "fine_tuned_model": job["fine_tuned_model"] if job["status"] == "succeeded" else None,
                "organization_id": "org-tunewright", "result_files": [], "training_file": job["training_file"],
                "validation_file": job["validation_file"], "hyperparameters": hp, "trained_tokens": job["trained_tokens"],
                "error": job["error"], "seed": job["seed"], "estimated_finish": None, "integrations": [],
                "user_provided_suffix": job["suffix"], "metadata": job.get("metadata"),
                "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}}

    def checkpoints(self, job: dict) -> list[dict]:
        """Complete checkpoints of the job's run, newest first, with the metrics logged at that step."""
        from ..train.checkpoint import complete_checkpoints

        run_dir = Path(job["run_dir"] or "")
        if not run_dir.is_dir():
            return []
        metrics = _metrics_by_step(run_dir)
        model_id = job["fine_tuned_model"] or self._fine_tuned_id(job)
        out = []
        for path in reversed(complete_checkpoints(run_dir)):
            step = int(path.name.rsplit("-", 1)[-1])
            row = metrics.get(step, {})
            out.append({"object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{job['id'][-8:]}-{step}",
                        "created_at": int(path.stat().st_mtime), "fine_tuned_model_checkpoint": f"{model_id}:ckpt-step-{step}",
                        "step_number": step, "fine_tuning_job_id": job["id"],
                        "metrics": {"step": step, "train_loss": row.get("loss"), "valid_loss": row.get("eval_loss")}})
        return out

    # --- routes -------------------------------------------------------------------------------

    def install(self, app: FastAPI) -> None:
        from .jobs_routes import add_routes

        add_routes(app, self)

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
            rows = _validate_training_file(path, name)
        except OpenAIError:
            path.unlink(missing_ok=True)
            raise
        return self.store.add_file({"id": file_id, "filename": name, "purpose": purpose, "bytes": path.stat().st_size,
                                    "created_at": now(), "path": str(path), "rows": rows})

    def cancel(self, job: dict) -> dict:
        if job["status"] not in ACTIVE:
            raise OpenAIError(400, f"Job {job['id']} has already finished ({job['status']}); it cannot be cancelled.",
                              param="fine_tuning_job_id", code="invalid_state")
        self.store.update_job(job["id"], status="cancelled", finished_at=now())
        self.runner.cancel(job["id"])
        if self.runner.job_id != job["id"]:
            self.store.add_event(job["id"], "Job cancelled")
        return self.job_object(self.store.job(job["id"]))

    def list_page(self, items: list[dict], after: str | None, limit: int) -> dict:
        data, more = page(items, after, max(1, min(limit, 100)))
        return {"object": "list", "data": data, "has_more": more}


def _validate_training_file(path: Path, name: str) -> int:
    """Rows of a training file, or a 400 quoting its first bad rows (file:line and reason)."""
    from ..data import load_conversations
    from ..errors import UserError

    try:
        loaded = load_conversations(str(path))
    except UserError as exc:
        raise OpenAIError(400, f"Invalid file {name}: {exc.message}", param="file", code="invalid_file") from None
    if loaded.bad_rows:
        shown = "; ".join(str(b).replace(str(path), name) for b in loaded.bad_rows[:3])
        raise OpenAIError(400, f"Invalid file {name}: {len(loaded.bad_rows)} bad row(s): {shown}", param="file", code="invalid_file")
    if not loaded.conversations:
        raise OpenAIError(400, f"Invalid file {name}: no training examples found.", param="file", code="invalid_file")
    return len(loaded.conversations)


def _resolved_train(run_dir: str | None) -> dict:
    import yaml

    cfg = Path(run_dir or "") / "config.yaml"
    if not cfg.is_file():
        return {}
    return (yaml.safe_load(cfg.read_text()) or {}).get("train") or {}


def _metrics_by_step(run_dir: Path) -> dict[int, dict]:
    import json

    path = run_dir / "metrics.jsonl"
    rows: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows.setdefault(int(row.get("step", 0)), {}).update(row)
    return rows


def file_response(row: dict) -> FileResponse:
    return FileResponse(row["path"], filename=row["filename"], media_type="application/octet-stream")
