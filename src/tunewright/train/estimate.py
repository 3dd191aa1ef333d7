"""`tunewright estimate`: will this model, method and sequence length fit, before loading a single weight?

Rule-of-thumb accounting (bytes per parameter), stated so users can check it:
- frozen base weights: 2 (bf16), 4 (fp32, CPU default), ~0.56 (QLoRA NF4 + double quantisation);
- trainable weights: 4 (fp32 master) + 4 (gradient) + 8 (AdamW moments) = 16;
- activations per token per layer: about 34 x hidden x bytes-per-activation / 2 (Korthikanti et al.),
  divided by ~layers with gradient checkpointing; the loss never materialises full logits here.
"""
from __future__ import annotations

import re

from rich.console import Console
from rich.table import Table

from ..errors import UserError
from ..models import local_model_dir, resolve_model

GB = 1024**3


def parse_memory(text: str | None) -> float | None:
    if not text:
        return None
    m = re.fullmatch(r"\s*([\d.]+)\s*(g|gb|gib|m|mb|mib)?\s*", text.lower())
    if not m:
        raise UserError(f"--gpu-memory {text!r}: not a size", "write it like 16GB or 24GiB")
    value = float(m.group(1))
    return value * (GB if (m.group(2) or "g").startswith("g") else 1024**2)


def _shape(model_spec: str):
    """Config and parameter counts without weights: meta-device instantiation."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve_model(model_spec)
    folder = local_model_dir(model_spec) if source.kind != "hf_dir" else source.path
    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # tied embeddings count once, as they are stored once
    total = sum(p.numel() for p in model.parameters())
    linear = [(m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    return config, total, linear


def estimate_bytes(total: int, linear: list[tuple[int, int]], hidden: int, layers: int, method: str, seq_len: int,
                   micro_batch: int, r: int = 16, precision_bytes: int = 2, checkpointing: bool = False) -> dict:
    base_bytes = {"qlora": 0.5625}.get(method, precision_bytes)
    if method in ("lora", "dora", "qlora"):
        trainable = sum(r * (i + o) for i, o in linear)
        weights = total * base_bytes + trainable * 16
    else:
        trainable = total
        weights = total * 16
    per_layer = 34 * hidden * seq_len * micro_batch * precision_bytes / 2
    activations = per_layer * (1 if checkpointing else layers)
    overhead = 0.5 * GB
    return {"trainable_params": trainable, "weights_and_optimizer": weights, "activations": activations,
            "overhead": overhead, "total": weights + activations + overhead}


def estimate(model: str, method: str = "lora", seq_len: int = 1024, gpu_memory: str | None = None, micro_batch: int = 1) -> dict:
    if method not in ("lora", "dora", "qlora", "full", "freeze"):
        raise UserError(f"--method {method}: unknown", "use lora, dora, qlora, full or freeze")
    config, total, linear = _shape(model)
    layers = getattr(config, "num_hidden_layers", 1)
    rows = {}
    for ckpt in (False, True):
        rows[ckpt] = estimate_bytes(total, linear, config.hidden_size, layers, method, seq_len, micro_batch, checkpointing=ckpt)
    limit = parse_memory(gpu_memory)
    table = Table(title=f"memory estimate: {model}, {method}, {micro_batch} x {seq_len} tokens (bf16)")
    table.add_column("")
    table.add_column("no checkpointing", justify="right")
    table.add_column("gradient checkpointing", justify="right")
    for key, label in (("weights_and_optimizer", "weights + optimizer"), ("activations", "activations"), ("overhead", "CUDA context etc."), ("total", "total")):
        table.add_row(label, f"{rows[False][key] / GB:.2f} GB", f"{rows[True][key] / GB:.2f} GB")
    console = Console()
    console.print(f"parameters: {total:,}; trainable with {method}: {rows[False]['trainable_params']:,}")
    console.print(table)
    if limit:
        for ckpt, label in ((False, "as is"), (True, "with train.gradient_checkpointing=true")):
            fits = rows[ckpt]["total"] <= limit
            console.print(f"{'fits' if fits else 'does not fit'} in {limit / GB:.0f} GB {label}")
    return {"parameters": total, "estimate": rows[False], "with_checkpointing": rows[True]}
