"""The body of `POST /v1/fine_tuning/jobs`: OpenAI's fields, checked as strictly as OpenAI checks them.

Numbers must be JSON numbers ("3" and true are refused, not coerced), every range error names its
`param`, and `method` is "supervised" or "dpo" with its hyperparameters under `method.<type>`.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator

from .errors import OpenAIError

METHOD_DATA = {"supervised": "sft", "dpo": "preference"}  # the data (data.formats kind) each method.type trains on
ALLOWED_SETTINGS = {
    "train.max_steps", "train.seed", "train.warmup_ratio", "train.scheduler", "train.eval_every", "train.save_every",
    "train.weight_decay", "lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "data.max_seq_len",
    "data.packing", "eval.after_train", "preference.loss", "preference.sft_weight",
}
# Upper bounds for settings a client could otherwise use to tie the machine up for days or run it out of memory.
SETTING_LIMITS = {"train.max_steps": (1, 100_000), "lora.r": (1, 256), "data.max_seq_len": (16, 32_768)}
SEED_MAX = 2**32 - 1  # what torch, numpy and random all accept; SQLite's INTEGER holds it
METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512
BETA_MAX = 100.0


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

    def check(self, where: str) -> Hyperparameters:
        for name, value, low, high in (("n_epochs", self.n_epochs, 1, 50), ("batch_size", self.batch_size, 1, 1024),
                                       ("learning_rate_multiplier", self.learning_rate_multiplier, 1e-6, 100)):
            if value != "auto" and not low <= value <= high:
                raise OpenAIError(400, f"{where}.{name} must be 'auto' or between {low} and {high}.",
                                  param=f"{where}.{name}", code="invalid_value")
        return self


class DpoHyperparameters(Hyperparameters):
    beta: AutoFloat = "auto"

    def check(self, where: str) -> DpoHyperparameters:
        super().check(where)
        if self.beta != "auto" and not 0 < self.beta <= BETA_MAX:  # NaN fails this too
            raise OpenAIError(400, f"{where}.beta must be 'auto' or a number greater than 0 and at most {BETA_MAX:g}, "
                              f"got {json.dumps(self.beta)}.", param=f"{where}.beta", code="invalid_value")
        return self


class Supervised(BaseModel):
    hyperparameters: Hyperparameters | None = None


class Dpo(BaseModel):
    hyperparameters: DpoHyperparameters | None = None


class Method(BaseModel):
    type: str = "supervised"
    supervised: Supervised | None = None
    dpo: Dpo | None = None


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


def method_type_of(body: CreateJob) -> str:
    """"supervised" or "dpo"; any other type, or settings for a method other than the one named, is a 400."""
    method = body.method or Method()
    if method.type not in METHOD_DATA:
        raise OpenAIError(400, f"Fine-tuning method '{method.type}' is not supported; use 'supervised' or 'dpo'.",
                          param="method.type", code="unsupported_parameter")
    for other in set(METHOD_DATA) - {method.type}:
        if getattr(method, other) is not None:
            raise OpenAIError(400, f"method.{other} is given, but method.type is '{method.type}'; give method.{method.type} "
                              f"(or set method.type to '{other}').", param=f"method.{other}", code="invalid_value")
    return method.type


def hyperparameters_of(body: CreateJob, method_type: str) -> tuple[Hyperparameters, str]:
    """The job's hyperparameters and where they came from (for the `param` of an error).

    Those under method.<type> win; the older top-level `hyperparameters` is the fallback, as in OpenAI's API.
    """
    section = getattr(body.method, method_type, None) if body.method else None
    if section is not None and section.hyperparameters is not None:
        return section.hyperparameters, f"method.{method_type}.hyperparameters"
    top = body.hyperparameters or Hyperparameters()
    return (DpoHyperparameters(**top.model_dump()) if method_type == "dpo" else top), "hyperparameters"


def check_setting_limits(settings: dict[str, Any]) -> None:
    """Integer settings must be JSON integers within SETTING_LIMITS (train.max_steps may also be null)."""
    for key, (low, high) in SETTING_LIMITS.items():
        if key not in settings or (key == "train.max_steps" and settings[key] is None):
            continue
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise OpenAIError(400, f"tunewright.settings {key} must be an integer from {low} to {high}, got {json.dumps(value)}.",
                              param=f"tunewright.settings.{key}", code="invalid_value")
