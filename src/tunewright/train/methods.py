"""LoRA, DoRA, QLoRA, full and freeze: a difference in model set-up, one training loop for all."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import RunConfig
from ..errors import UserError
from .dropout import use_fast_lora_dropout
from .fused_lora import use_fused_lora


@dataclass
class ParamCounts:
    trainable: int
    total: int

    @property
    def share(self) -> float:
        return self.trainable / max(self.total, 1)


def check_method_available(cfg: RunConfig) -> None:
    """Fail while the config is checked, not an hour in, when a method cannot run here."""
    if cfg.method != "qlora":
        return
    if not torch.cuda.is_available():
        raise UserError(
            "method 'qlora' needs a CUDA GPU (bitsandbytes 4-bit kernels); this machine has none",
            "use --method lora (same adapters, full-precision base) on this machine",
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("method 'qlora' needs the bitsandbytes package", "pip install 'tunewright[gpu]'") from None


def quantization_config(cfg: RunConfig):
    """4-bit NF4 with double quantisation for QLoRA; None for every other method."""
    if cfg.method != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def apply_method(model, cfg: RunConfig):
    """Wrap or freeze `model` for the configured method; returns the model to train."""
    if cfg.method in ("lora", "dora", "qlora"):
        return _with_lora(model, cfg)
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if cfg.method == "freeze":
        return _freeze_all_but_last(model, cfg.freeze.trainable_layers)
    raise UserError(f"method '{cfg.method}' is not supported", "use lora, dora, qlora, full or freeze")


def _with_lora(model, cfg: RunConfig):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        use_dora=cfg.method == "dora",
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as e:
        names = ", ".join(linear_layer_names(model))
        raise UserError(f"lora.target_modules: {e}", f"use all-linear or some of this model's linear layers: {names}") from None
    if next(model.parameters()).device.type == "cpu":
        use_fast_lora_dropout(model)  # +10-20% on CPU, same masks in distribution (docs/performance.md)
        if cfg.train.fused_lora:
            use_fused_lora(model)  # training forward: one op per layer, no dropped copy of x kept (docs/performance.md)
    return model


def linear_layer_names(model) -> list[str]:
    """The distinct names of the model's linear layers LoRA can wrap, LM head excluded.

    Architectures differ here (Phi-3 fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`),
    so a target list written for Llama fails on them: the error shows the names that do exist.
    """
    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not head})


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of transformer blocks, wherever this architecture keeps it."""
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "model.language_model.layers"):
        node = model
        try:
            for part in path.split("."):
                node = getattr(node, part)
        except AttributeError:
            continue
        if isinstance(node, torch.nn.ModuleList):
            return node
    raise UserError("method 'freeze': cannot find the transformer blocks of this architecture", "use --method lora or full")


def _freeze_all_but_last(model, n_layers: int):
    """Train the last `n_layers` blocks plus the final norm and the LM head; freeze the rest."""
    for p in model.parameters():
        p.requires_grad_(False)
    layers = decoder_layers(model)
    if n_layers > len(layers):
        raise UserError(f"freeze.trainable_layers={n_layers} but the model has {len(layers)} blocks", f"use a value up to {len(layers)}")
    for block in list(layers)[len(layers) - n_layers:] if n_layers else []:
        for p in block.parameters():
            p.requires_grad_(True)
    norm = getattr(getattr(model, "model", model), "norm", None)
    for module in (norm, model.get_output_embeddings()):
        if module is not None:
            for p in module.parameters():
                p.requires_grad_(True)
    return model


def count_parameters(model) -> ParamCounts:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return ParamCounts(trainable, total)


def is_adapter_method(method: str) -> bool:
    return method in ("lora", "dora", "qlora")
