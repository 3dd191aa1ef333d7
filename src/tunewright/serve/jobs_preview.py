"""`POST /v1/fine_tuning/jobs/validate`: what a job would run, before it runs.

Takes the same body as `POST /v1/fine_tuning/jobs` and refuses it with the same 400s, but stores
nothing. It answers with the values every `auto` resolves to for this data and model (the rules
the trainer applies, `train.hparams.resolve_auto`), the optimizer steps, a memory estimate from
the model's architecture alone (`train.estimate`), and a time estimate from the seconds per step
of the last finished job on the same base model, when there is one.
"""
from __future__ import annotations

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from .jobs_request import CreateJob
from .jobs_runner import base_learning_rate, job_config

RESOLVED_KEYS = ("epochs", "batch_size", "learning_rate", "max_steps", "warmup_ratio", "scheduler", "precision",
                 "micro_batch_tokens", "eval_every", "save_every", "seed")


def preview(service, body: CreateJob) -> dict:
    from ..config import RunConfig
    from ..train.distributed import resolve_strategy
    from ..train.hparams import DataShape, resolve_auto, total_steps

    job, training, validation = service.validated_job(body)
    hp, extras = job["hyperparameters"] or {}, job["extras"] or {}
    method, objective = extras.get("method", "lora"), "dpo" if job["method_type"] == "dpo" else "sft"
    multiplier = hp.get("learning_rate_multiplier", "auto")
    lr = None if multiplier == "auto" else float(multiplier) * base_learning_rate(job["base_spec"], method, objective)
    cfg = RunConfig.model_validate(job_config(job, training["path"], validation["path"] if validation else None, lr))
    cfg = resolve_strategy(cfg, cfg.model)  # as train does before resolve_auto: the server is one process, so ddp
    architecture, params = _architecture(cfg)
    device = _device()
    n_examples = training.get("rows") or 0
    # row counts only (no tokens yet): epochs, early stopping and patience follow the trainer's rules
    shape = DataShape(n_examples, validation_examples=(validation or {}).get("rows") or 0)
    resolved = resolve_auto(cfg, shape, params.total, device)
    steps = total_steps(resolved, n_examples)
    per_step = _seconds_per_step(service, job["base_spec"])
    return {
        "object": "fine_tuning.job.preview", "model": job["model"], "method": method, "training_examples": n_examples,
        "device": device.type,
        "resolved": {"train": {k: getattr(resolved.train, k) for k in RESOLVED_KEYS},
                     "lora": resolved.lora.model_dump(), "data": {"max_seq_len": resolved.data.max_seq_len},
                     **({"preference": {"beta": resolved.preference.beta}} if objective == "dpo" else {})},
        "estimate": {"steps": steps, "parameters": params.total, "trainable_parameters": params.trainable,
                     "memory_bytes": _memory(resolved, architecture, params)["total"],
                     "seconds_per_step": per_step, "seconds": round(per_step * steps, 1) if per_step else None},
    }


def _architecture(cfg):
    """The model's config and its parameter counts for the job's method, with no weight loaded."""
    from ..train.estimate import model_config, parameter_counts

    config = model_config(cfg.model, cfg.trust_remote_code)
    return config, parameter_counts(config, cfg)


def _memory(cfg, config, params) -> dict:
    from ..train.estimate import estimate_bytes

    text = getattr(config, "text_config", None) or config
    precision_bytes = 4 if cfg.train.precision == "fp32" else 2
    return estimate_bytes(params, text.hidden_size, getattr(text, "num_hidden_layers", 1), cfg.method, cfg.data.max_seq_len,
                          1, precision_bytes=precision_bytes, checkpointing=cfg.train.gradient_checkpointing)


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _seconds_per_step(service, base_spec: str) -> float | None:
    """Measured on this server: the newest succeeded job on the same base model (start to finish, per step)."""
    for job in service.store.jobs(("succeeded",)):
        if job["base_spec"] == base_spec and job["started_at"] and job["finished_at"] and job["last_step"]:
            return round((job["finished_at"] - job["started_at"]) / job["last_step"], 2)
    return None


def add_preview_route(app: FastAPI, service) -> None:
    @app.post("/v1/fine_tuning/jobs/validate")
    async def validate_job(body: CreateJob):
        return await run_in_threadpool(preview, service, body)
