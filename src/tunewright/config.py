"""The run configuration: one typed pydantic model per concern, loaded from YAML plus `--set a.b=v`.

Unknown keys are rejected with a "did you mean" hint (axolotl's untyped dict reads a typo as None;
we refuse it). Values that depend on data or hardware may be `auto`; `train.hparams.resolve_auto`
replaces them and the resolved config is written to the run directory.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import UserError

Auto = Literal["auto"]
DataPaths = str | list[str]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    train: DataPaths | None = None
    validation: DataPaths | None = None
    # a share of train held out when no validation file is given; auto: ~10% (<= 200 rows) from 1,000 rows up
    validation_split: Annotated[float, Field(ge=0.0, lt=1.0)] | Auto = "auto"
    format: Literal["auto", "alpaca", "messages", "sharegpt", "completion", "text", "dpo", "preference"] = "auto"
    max_seq_len: int = Field(1024, ge=8)
    packing: bool = True
    on_bad_rows: Literal["fail", "skip"] = "fail"
    allow_any_role_order: bool = False  # keep chats with roles out of order when the model's template renders them
    train_on: Literal["assistant", "all"] = "assistant"
    # the loss weight of untrained (prompt) tokens relative to answer tokens, as OpenAI's legacy fine-tuning
    # API had it; a step still divides by its answer tokens, and validation loss counts answer tokens only
    prompt_loss_weight: float = Field(0.0, ge=0.0, le=1.0)
    # chat template variables, fixed for training and inference alike (Qwen3: enable_thinking); auto decides
    # from the data (thinking only when some answer has reasoning) and config.yaml records the values
    chat_template_kwargs: dict[str, Any] | Auto = "auto"
    seed: int = 42


class LoraConfig(_Section):
    r: int = Field(16, ge=1)
    alpha: float = 32
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"


class FreezeConfig(_Section):
    trainable_layers: int = Field(2, ge=0)


class TrainConfig(_Section):
    epochs: float | Auto = "auto"
    max_steps: int | None = None
    learning_rate: float | Auto = "auto"
    batch_size: int | Auto = "auto"
    micro_batch_tokens: int | Auto = "auto"
    warmup_ratio: float = Field(0.03, ge=0.0, le=1.0)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    chunked_loss: bool = True
    # true: lora/dora trained in bf16 store the frozen base linear weights in bf16 (adapter and optimizer stay
    # fp32) instead of autocast casting them in every forward; all: every frozen weight (embeddings, norms too),
    # so the residual stream is bf16 as in a model loaded in bf16 (train/frozen_base.py, docs/performance.md);
    # auto: all for lora/dora in bf16 without FSDP/DeepSpeed (1.38x tokens/s, -25% memory at 0.5B), false otherwise
    bf16_base: bool | Literal["all", "auto"] = "auto"
    # NEFTune: uniform noise on the input embeddings while training, alpha / sqrt(example length x hidden size)
    # (train/neftune.py; TRL's neftune_noise_alpha, 5 in its paper); 0 = off
    neftune_alpha: float = Field(0.0, ge=0.0)
    # LoRA on CPU: each adapted layer's training forward as one op (train/fused_lora.py) that keeps a 1-byte mask
    # instead of a dropped-out copy of its input; same maths, 0.4-0.6 GB less, 1.05x fp32 / 1.005x bf16 quiet
    # (docs/performance.md). Not wired in on GPU (not measured there)
    fused_lora: bool = True
    # attention inside packed rows: mask = transformers' dense causal mask over each row; per_example = one causal
    # SDPA call per example (train/packed_attention.py), same maths, less work; auto: mask until measured (hparams)
    attention: Literal["auto", "mask", "per_example"] = "auto"
    eval_every: int | Auto = "auto"
    save_every: int | Auto = "auto"
    save_total_limit: int = Field(2, ge=1)
    # auto: stop after ~1 epoch of evaluations without a better one (best_metric), when epochs is auto
    # and there is validation data (train.hparams); null: never
    early_stopping_patience: int | Auto | None = "auto"
    # what "the best evaluation" means for early stopping, the weights a run keeps and sweep's ranking (Transformers'
    # metric_for_best_model); ties go to the lower eval_loss. auto: eval_exact_match for sft with short answers
    # (< 16 trained tokens per example: labels, one-word answers), eval_loss otherwise (train.hparams)
    best_metric: Literal["auto", "eval_loss", "eval_exact_match", "eval_token_accuracy", "eval_preference_accuracy"] = "auto"
    # validation rows the loss pass uses (a seeded sample); auto: all, unless that would cost > 10% of training
    eval_examples: int | Auto | None = "auto"
    log_every: int = Field(1, ge=1)
    seed: int = 42
    report_to: list[str] = Field(default_factory=list)
    threads: int | Auto = "auto"
    # learning_rate: auto measured by a short range test on the data (train/lr_range.py, lr_range.png) instead of
    # the fixed rule; auto: on for LoRA/DoRA/QLoRA SFT when the test costs <= 10% of the planned training (train.hparams)
    lr_range_test: bool | Auto = "auto"
    # how several processes (torchrun / accelerate launch) split the work; see train/distributed.py
    distributed: Literal["auto", "ddp", "fsdp", "deepspeed"] = "auto"
    # the training process's malloc (allocator.py): auto = tcmalloc (else jemalloc) where installed, which `tunewright
    # train` preloads by restarting itself once; glibc keeps freed activations (DPO peak 2.69 -> 1.96 GB, docs/performance.md)
    allocator: Literal["auto", "system", "jemalloc", "tcmalloc"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _drop_recorded_compile(cls, data: Any) -> Any:
        """Run folders written before `compile` was removed record `compile: false`: what happened anyway, so read on."""
        if isinstance(data, dict) and data.get("compile") is False:
            return {k: v for k, v in data.items() if k != "compile"}
        return data


class FsdpConfig(_Section):
    """PyTorch FSDP2 through Accelerate (train.distributed=fsdp): weights, gradients and optimizer state sharded."""

    reshard_after_forward: bool = True  # free gathered weights after each block's forward (ZeRO-3-like); false keeps them (ZeRO-2-like, faster)
    cpu_offload: bool = False  # sharded weights and optimizer state live in CPU memory between uses
    wrap: Literal["transformer_block", "size"] = "transformer_block"  # one shard group per decoder block, or per min_num_params
    min_num_params: int = Field(100_000_000, ge=1)  # only with wrap=size


class DeepSpeedConfig(_Section):
    """DeepSpeed ZeRO through Accelerate (train.distributed=deepspeed; needs `pip install deepspeed`)."""

    stage: Literal[2, 3] = 3  # 2 shards gradients + optimizer state; 3 shards the weights too
    offload: Literal["none", "cpu"] = "none"  # optimizer state (and, at stage 3, weights) in CPU memory


class PreferenceConfig(_Section):
    """DPO/IPO/ORPO settings (used when `objective` is dpo or orpo)."""

    beta: float | Auto = "auto"  # strength of the preference term; auto: 0.1 (see train.hparams)
    loss: Literal["sigmoid", "ipo"] = "sigmoid"  # DPO's logistic loss, or IPO's squared loss (dpo only)
    sft_weight: float = Field(0.0, ge=0.0)  # > 0 adds the NLL of the chosen answer (RPO); orpo has its own NLL
    # the prompt both answers of a pair start with goes through the model once, not twice (a 4-D mask keeps the
    # rejected answer from seeing the chosen one); auto: on where the model's attention takes such a mask
    shared_prompt: bool | Auto = "auto"


class EvalConfig(_Section):
    compare_base: bool = True
    after_train: bool = True
    max_new_tokens: int = Field(256, ge=1)
    limit: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 8
    data: DataPaths | None = None


class RunConfig(_Section):
    model: str = "smollm2-135m-instruct"
    method: Literal["lora", "dora", "qlora", "full", "freeze"] = "lora"
    objective: Literal["sft", "dpo", "orpo"] = "sft"  # dpo / orpo train on preference pairs
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    freeze: FreezeConfig = Field(default_factory=FreezeConfig)
    fsdp: FsdpConfig = Field(default_factory=FsdpConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output_dir: str | None = None
    trust_remote_code: bool = False
    chat_template: str | None = None  # set when the model had none and ChatML was used

    @field_validator("model")
    @classmethod
    def _model_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


class ResolvedTrainConfig(TrainConfig):
    """`train` after `train.hparams.resolve_auto`: every `auto` replaced, so readers need no casts."""

    epochs: float
    learning_rate: float
    batch_size: int
    micro_batch_tokens: int
    precision: Literal["fp32", "bf16", "fp16"]
    eval_every: int
    save_every: int
    threads: int
    early_stopping_patience: int | None
    best_metric: Literal["eval_loss", "eval_exact_match", "eval_token_accuracy", "eval_preference_accuracy"]
    eval_examples: int | None
    distributed: Literal["ddp", "fsdp", "deepspeed"]  # train.distributed.resolve_strategy runs first
    lr_range_test: bool
    bf16_base: bool | Literal["all"]
    attention: Literal["mask", "per_example"]
    allocator: Literal["system", "jemalloc", "tcmalloc"]  # what the process ran with (allocator.running_choice)


class ResolvedPreferenceConfig(PreferenceConfig):
    beta: float
    shared_prompt: bool


class ResolvedRunConfig(RunConfig):
    """A RunConfig whose training values are concrete: what `resolve_auto` returns and the loop takes."""

    train: ResolvedTrainConfig
    preference: ResolvedPreferenceConfig


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_known_keys(ann, prefix + name + "."))
    return keys


def _suggest(key_path: str) -> str:
    close = difflib.get_close_matches(key_path, _known_keys(RunConfig), n=1, cutoff=0.6)
    if not close:
        leaf = key_path.rsplit(".", 1)[-1]
        leaves = {k.rsplit(".", 1)[-1]: k for k in _known_keys(RunConfig)}
        hit = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
        close = [leaves[hit[0]]] if hit else []
    return f"did you mean '{close[0]}'?" if close else "see the config keys in the README"


# keys that were accepted once and are gone: why, instead of "unknown key"
REMOVED_KEYS = {
    "train.compile": "removed: it never had an effect (training never compiled the model; a whole-model torch.compile "
                     "measured 0.11x, see docs/performance.md)",
}


def _explain(err: ValidationError, source: str) -> UserError:
    """Turn pydantic's error list into one message naming each key path and the fix."""
    lines, fixes = [], []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "literal[")))
        # pydantic reports union members separately; keep only the first per key path
        if any(line.startswith(f"{path}:") for line in lines):
            continue
        if e["type"] == "extra_forbidden" and path in REMOVED_KEYS:
            lines.append(f"{path}: {REMOVED_KEYS[path]}")
            fixes.append(f"remove {path} from the config")
        elif e["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key")
            fixes.append(_suggest(path))
        else:
            lines.append(f"{path}: {e['msg']} (got {e.get('input')!r})")
    message = f"{source}: invalid config: " + "; ".join(lines)
    return UserError(message, "; ".join(fixes) or "correct the value (see the config keys in the README)")


def parse_value(text: str) -> Any:
    """`--set` values are YAML scalars: 3e-4, true, null, [q_proj, v_proj] all mean what they look like."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` strings onto a nested dict (copy-on-write)."""
    raw = _deep_copy(raw)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value", "write it as --set train.learning_rate=1e-4")
        key, value = item.split("=", 1)
        set_key(raw, key.strip().split("."), parse_value(value))
    return raw


def set_key(raw: dict, parts: list[str], value: Any) -> None:
    """Set a nested key (`["train", "seed"]` for train.seed) in place, making the sections it needs."""
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found", "check the path, or run without a config and use flags")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})", "fix the YAML syntax at that line") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the config must be a mapping of keys to values", "see the example configs in examples/")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **fields: Any) -> RunConfig:
    """Build a RunConfig from an optional YAML file, then keyword fields, then `--set` overrides."""
    raw = read_yaml(path) if path else {}
    for key, value in fields.items():
        if value is not None:
            set_key(raw, key.split("__"), value)
    raw = apply_overrides(raw, overrides or [])
    source = str(path) if path else "config"
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise _explain(e, source) from None


def to_yaml(config: RunConfig, notes: dict[str, str] | None = None) -> str:
    """The config as YAML; `notes` (by dotted key) become comments beside their values, so it still loads unchanged."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    return _annotate(text, notes) if notes else text


def _annotate(text: str, notes: dict[str, str]) -> str:
    """Append `# note` to each `key: value` line whose dotted path has a note (safe_dump indents by 2)."""
    path: list[str] = []
    lines = []
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        depth = (len(line) - len(stripped)) // 2
        key, sep, value = stripped.partition(":")
        if sep and not stripped.startswith("- "):
            path = [*path[:depth], key]
            note = notes.get(".".join(path))
            if note and value.strip():
                line = f"{line}  # auto: {' '.join(note.split())}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(to_yaml(config), encoding="utf-8")
