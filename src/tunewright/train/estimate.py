"""`tunewright estimate`: will this model, method and sequence length fit, before loading a single weight?

Only the architecture is read (config.json, or a GGUF file's metadata); parameters are counted on an
empty meta-device model with the same method set-up as training (LoRA rank and targets, freeze layers).

Rule-of-thumb accounting (bytes per parameter), stated so users can check it:
- frozen base weights: 2 (bf16), 4 (fp32, CPU default), ~0.56 (QLoRA NF4 + double quantisation);
- trainable weights: 4 (fp32 master) + 4 (gradient) + 8 (AdamW moments) = 16;
- activations per token per layer: about 34 x hidden x bytes-per-activation / 2 (Korthikanti et al.),
  divided by ~layers with gradient checkpointing; the loss never materialises full logits here.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..config import RunConfig, load_config
from ..errors import UserError
from ..models import describe_run, resolve_model
from .estimate_scale import (
    Shape,
    check_strategy,
    flops_per_token,
    per_device_bytes,
    training_seconds,
)
from .methods import ParamCounts, apply_method, count_parameters, is_adapter_method

GB = 1024**3


def parse_memory(text: str | None) -> float | None:
    if not text:
        return None
    m = re.fullmatch(r"\s*([\d.]+)\s*(g|gb|gib|m|mb|mib)?\s*", text.lower())
    if not m:
        raise UserError(f"--gpu-memory {text!r}: not a size", "write it like 16GB or 24GiB")
    value = float(m.group(1))
    return value * (GB if (m.group(2) or "g").startswith("g") else 1024**2)


def model_config(model_spec: str, trust_remote_code: bool = False):
    """The architecture alone: a folder's or hub id's config.json, or a GGUF file's metadata; never a weight."""
    from transformers import AutoConfig

    source = resolve_model(model_spec)
    if source.kind == "run":  # a previous run: a LoRA run has its base's shape, a full run its model/ folder's
        run = describe_run(source.path)
        return model_config(run["model"] if "model" in run else run["base"], trust_remote_code)
    try:
        if source.kind == "gguf":  # the GGUF header and metadata (repaired as for training); no weight is dequantized
            from ..gguf_config import gguf_config

            return gguf_config(Path(source.path))
        return AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except OSError as e:  # a hub id not in the cache while offline, or no config.json
        raise UserError(f"model '{model_spec}': cannot read its config.json ({e})",
                        "pass a local folder or .gguf file, or connect once so config.json is cached") from None


def parameter_counts(config, cfg: RunConfig) -> ParamCounts:
    """Total and trainable parameters for `cfg`'s method, counted on an empty (meta-device) model.

    The same set-up code as training (PEFT for lora/dora/qlora with the configured r and target
    modules; the last `freeze.trainable_layers` blocks + norm + head for freeze) runs on a model
    whose tensors have shapes but no storage, so the counts are the ones training will report.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    model.tie_weights()  # tied embeddings count once, as they are stored once
    total = sum(p.numel() for p in model.parameters())
    if cfg.method == "qlora":  # the same adapters on a 4-bit base; quantizing needs a GPU, counting does not
        cfg = cfg.model_copy(update={"method": "lora"})
    return ParamCounts(count_parameters(apply_method(model, cfg)).trainable, total)


def estimate_bytes(params: ParamCounts, hidden: int, layers: int, method: str, seq_len: int, micro_batch: int,
                   precision_bytes: int = 2, checkpointing: bool = False) -> dict:
    """Bytes for weights + optimizer state, activations and overhead (the rules in this module's docstring)."""
    base_bytes = {"qlora": 0.5625}.get(method, precision_bytes)
    if is_adapter_method(method):  # adapters are extra parameters beside the frozen base
        weights = params.total * base_bytes + params.trainable * 16
    else:  # full and freeze train part of the base itself
        weights = (params.total - params.trainable) * precision_bytes + params.trainable * 16
    per_layer = 34 * hidden * seq_len * micro_batch * precision_bytes / 2
    activations = per_layer * (1 if checkpointing else layers)
    overhead = 0.5 * GB
    return {"trainable_params": params.trainable, "weights_and_optimizer": weights, "activations": activations,
            "overhead": overhead, "total": weights + activations + overhead}


def estimate(model: str, method: str = "lora", seq_len: int = 1024, gpu_memory: str | None = None, micro_batch: int = 1,
             overrides: list[str] | None = None, gpus: int | None = None, strategy: str = "ddp", tokens: int | None = None,
             tflops: float | None = None, tokens_per_s: float | None = None) -> dict:
    """Print and return the estimate; `overrides` are `--set` strings (lora.r, lora.target_modules, freeze.trainable_layers...).

    With `gpus`, also memory per device under `strategy` and, with `tokens`, the training time (estimate_scale.py).
    """
    if method not in ("lora", "dora", "qlora", "full", "freeze"):
        raise UserError(f"--method {method}: unknown", "use lora, dora, qlora, full or freeze")
    if gpus is None and tokens:
        gpus = 1  # a time estimate alone: one device
    if gpus is not None:
        check_strategy(gpus, strategy)
    cfg = load_config(overrides=overrides or [], model=model, method=method)
    config = model_config(model, cfg.trust_remote_code)
    params = parameter_counts(config, cfg)
    text = getattr(config, "text_config", None) or config  # multimodal configs nest the language model's
    layers = getattr(text, "num_hidden_layers", 1)
    rows = {}
    for ckpt in (False, True):
        rows[ckpt] = estimate_bytes(params, text.hidden_size, layers, method, seq_len, micro_batch, checkpointing=ckpt)
    limit = parse_memory(gpu_memory)
    table = Table(title=f"memory estimate: {model}, {method}, {micro_batch} x {seq_len} tokens (bf16)")
    table.add_column("")
    table.add_column("no checkpointing", justify="right")
    table.add_column("gradient checkpointing", justify="right")
    for key, label in (("weights_and_optimizer", "weights + optimizer"), ("activations", "activations"), ("overhead", "CUDA context etc."), ("total", "total")):
        table.add_row(label, f"{rows[False][key] / GB:.2f} GB", f"{rows[True][key] / GB:.2f} GB")
    console = Console()
    console.print(f"parameters: {params.total:,}; trainable with {_method_label(cfg)}: {params.trainable:,}")
    console.print(table)
    if limit:
        for ckpt, label in ((False, "as is"), (True, "with train.gradient_checkpointing=true")):
            fits = rows[ckpt]["total"] <= limit
            console.print(f"{'fits' if fits else 'does not fit'} in {limit / GB:.0f} GB {label}")
    out = {"parameters": params.total, "estimate": rows[False], "with_checkpointing": rows[True]}
    if gpus is not None:
        shape = Shape(params, text.hidden_size, layers, method, seq_len, micro_batch)
        out.update(_print_scale(console, shape, gpus, strategy, limit, tokens, tflops, tokens_per_s))
    return out


def _print_scale(console: Console, shape: Shape, gpus: int, strategy: str, limit: float | None,
                 tokens: int | None, tflops: float | None, tokens_per_s: float | None) -> dict:
    """The per-device table for --gpus/--strategy, and the time for --tokens."""
    rows = {ckpt: per_device_bytes(replace(shape, checkpointing=ckpt), gpus, strategy) for ckpt in (False, True)}
    table = Table(title=f"per device: {gpus} GPU(s), {strategy}")
    table.add_column("")
    table.add_column("no checkpointing", justify="right")
    table.add_column("gradient checkpointing", justify="right")
    for key in ("weights", "gradients", "optimizer", "gathered_blocks", "activations", "overhead", "total"):
        table.add_row(key.replace("_", " "), f"{rows[False][key] / GB:.2f} GB", f"{rows[True][key] / GB:.2f} GB")
    console.print(table)
    if limit:
        console.print(f"per device: {'fits' if rows[False]['total'] <= limit else 'does not fit'} in {limit / GB:.0f} GB as is, "
                      f"{'fits' if rows[True]['total'] <= limit else 'does not fit'} with gradient checkpointing")
    out = {"per_device": rows[False], "per_device_with_checkpointing": rows[True]}
    if tokens:
        seconds = training_seconds(tokens, shape.params, shape.method, gpus, tflops, tokens_per_s)
        basis = f"{tokens_per_s:,.0f} tokens/s per device" if tokens_per_s else \
            f"{tflops:g} TFLOP/s per device, {flops_per_token(shape.params, shape.method):.3g} FLOPs per token"
        console.print(f"time: {tokens:,} tokens on {gpus} device(s) at {basis}: {seconds / 3600:.2f} h (communication not counted)")
        out["seconds"] = seconds
    return out


def _method_label(cfg: RunConfig) -> str:
    if is_adapter_method(cfg.method):
        return f"{cfg.method} (r={cfg.lora.r}, {cfg.lora.target_modules})"
    if cfg.method == "freeze":
        return f"freeze (last {cfg.freeze.trainable_layers} blocks + norm + head)"
    return cfg.method
