"""`POST /v1/files/check`: the report `tunewright data check --json` gives, for a file sent over HTTP.

Nothing is stored: the file is checked in a temporary folder under its own name, so bad rows read
`train.jsonl:3: messages: ...` exactly as on the command line, and no server path leaks into the
report. Uploading (`POST /v1/files`) stays a separate step, which a clean file can then take.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fastapi import FastAPI, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from ..errors import UserError
from .errors import OpenAIError
from .registry import Registry

CHECK_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def tokenizer_spec(registry: Registry, model: str | None) -> str:
    """The model whose tokenizer measures the data: a served model's base (default: the first served)."""
    from ..models import EMBEDDED_DEFAULT

    if model == EMBEDDED_DEFAULT:
        return model
    served = registry.get(model) if model else registry.get(registry.ids()[0])
    if served is None:
        raise OpenAIError(404, f"The model `{model}` does not exist or you do not have access to it.", param="model",
                          code="model_not_found")
    return served.base or served.spec


def checked_report(upload: UploadFile, spec: str, max_seq_len: int) -> dict:
    """check_data on a private copy of the upload, with the temporary folder scrubbed from every string."""
    from ..data.check import check_data

    name = Path(upload.filename or "upload.jsonl").name
    if Path(name).suffix.lower() not in CHECK_SUFFIXES:
        raise OpenAIError(400, f"{name}: not a data file; send .jsonl, .json, .csv or .parquet.", param="file",
                          code="invalid_file")
    with tempfile.TemporaryDirectory(prefix="tw-check-") as folder:
        path = Path(folder) / name
        with open(path, "wb") as out:
            shutil.copyfileobj(upload.file, out, length=2**20)
        try:
            report = check_data([str(path)], _own_tokenizer(spec), spec, max_seq_len=max_seq_len)
        except UserError as exc:
            text = exc.message + (f" (fix: {exc.fix})" if exc.fix else "")
            raise OpenAIError(400, text.replace(folder + "/", ""), param="file", code="invalid_file") from None
        return _scrub(report, folder + "/")


def _own_tokenizer(spec: str):
    """A fresh copy of the model's tokenizer: the served one is shared under a lock, which a long check would hold."""
    from ..models import load_tokenizer, local_model_dir

    return load_tokenizer(local_model_dir(spec))


def _scrub(value, prefix: str):
    if isinstance(value, str):
        return value.replace(prefix, "")
    if isinstance(value, list):
        return [_scrub(v, prefix) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, prefix) for k, v in value.items()}
    return value


def add_data_routes(app: FastAPI, registry: Registry) -> None:
    @app.post("/v1/files/check")
    async def check_file(file: UploadFile = File(...), model: str | None = Form(None), max_seq_len: int = Form(1024)):
        if not 16 <= max_seq_len <= 32_768:
            raise OpenAIError(400, "max_seq_len must be between 16 and 32768.", param="max_seq_len", code="invalid_value")
        spec = tokenizer_spec(registry, model)
        return await run_in_threadpool(checked_report, file, spec, max_seq_len)
