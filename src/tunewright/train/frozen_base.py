"""Frozen base weights stored in bf16 while an adapter trains in bf16, and put back as loaded afterwards.

Under bf16 autocast every `nn.Linear` casts its fp32 weight to bf16 in each forward (autocast caches
casts only of weights that require grad, so a frozen one is cast again for every micro-batch) and
keeps that bf16 copy alive for backward. Casting the frozen linear weights to bf16 once, before
training, hands the matmuls the very same bf16 values (both round to nearest) without the copies,
and halves the memory the base takes. LoRA/DoRA weights, anything trainable and the optimizer stay
fp32 (docs/performance.md: what this measured).

Only frozen `nn.Linear` weights and biases that no other kind of module shares are cast: embeddings
(and an LM head tied to them), norms and everything else autocast leaves in fp32 stay as loaded, so
the residual stream stays fp32 and LoRA's maths is exactly autocast's. DoRA's weight norm reads the
base weight itself, so it sees the bf16-rounded values (tests/train/test_frozen_base.py: the bound).

`train.bf16_base: all` goes further: every frozen weight (embeddings, a tied head and norms too) is
stored in bf16, so the residual stream, the norms' outputs and every activation between layers are
bf16, as in a model loaded in bf16 (what GPU users and torchtune's default `dtype: bf16` train); no
activation is cast at an autocast boundary any more (docs/performance.md: -0.44 GB peak on SmolLM2-135M;
1.1x tokens/s step by step in one process, not confirmed end to end). The adapter and optimizer still
stay fp32; the maths is no longer autocast's to the bit (tests/train/test_frozen_base.py: the bound).
It is what `train.bf16_base: auto` picks for LoRA/DoRA in bf16 (train/hparams.py: 1.38x tokens/s and -25%
memory at a 0.5B shape); `false` keeps autocast over the base as loaded.

After training `restore_frozen_base` puts the weights back exactly as loaded, so evaluation after
training, `RunResult.model` and anything merged from it see the base at its original dtype, never
a bf16-rounded copy (the saved adapter/ never contains base weights).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from rich.console import Console

from ..config import ResolvedRunConfig
from .hparams import bf16_base_obstacle

STORED_DTYPE = torch.bfloat16


@dataclass
class StoredBase:
    """Which base parameters are stored in bf16, and what restoring them needs."""

    names: list[str] = field(default_factory=list)  # parameter names in the transformers model (peft's base model)
    dtype: torch.dtype = torch.float32  # what they were loaded as
    exact: bool = True  # every value was representable in bf16: casting back restores it bit for bit


def bf16_base_applies(cfg: ResolvedRunConfig, mixed_precision: str) -> bool:
    """LoRA/DoRA training in bf16 autocast in unsharded processes, unless `train.bf16_base: false` (`auto` resolved it).

    FSDP and DeepSpeed flatten parameters per shard group and manage their own low-precision copies.
    """
    return cfg.train.bf16_base is not False and mixed_precision == "bf16" and bf16_base_obstacle(cfg) is None


def store_frozen_base(model, cfg: ResolvedRunConfig) -> StoredBase:
    """What `train.bf16_base` asks for: the frozen linear weights in bf16 (`true`), or every frozen weight (`all`)."""
    return store_frozen_base_in_bf16(model, everything=cfg.train.bf16_base == "all")


def _transformers_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def store_frozen_base_in_bf16(model, everything: bool = False) -> StoredBase:
    """Cast frozen fp32 weights and biases to bf16 in place, of plain linear layers or (`everything`) of all modules."""
    base = _transformers_model(model)
    # a parameter also held by a module of another kind (an LM head tied to the embeddings) keeps its dtype
    shared = set() if everything else {
        id(p) for m in base.modules() if not isinstance(m, torch.nn.Linear) for p in m.parameters(recurse=False)}
    stored = StoredBase()
    for module_name, module in base.named_modules():
        if not (everything or isinstance(module, torch.nn.Linear)):
            continue
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad or id(p) in shared or p.dtype != torch.float32:
                continue  # trainable, tied, or already cast through another module that shares it
            low = p.data.to(STORED_DTYPE)
            stored.exact = stored.exact and torch.equal(low.to(p.dtype), p.data)
            p.data = low
            stored.names.append(f"{module_name}.{name}" if module_name else name)
    _copy_out_of_the_loaded_file(base)
    return stored


def _copy_out_of_the_loaded_file(base) -> None:
    """Give the frozen weights kept as loaded (embeddings, norms) their own memory.

    `from_pretrained` leaves weights as views into one memory map of the safetensors file; while any
    view lives the whole fp32 file stays mapped, and resident once read, so the bf16 copies would
    add to it instead of replacing it. Copying the few kept tensors releases the map.
    """
    for p in base.parameters():
        if not p.requires_grad and p.dtype != STORED_DTYPE:
            p.data = p.data.clone()


def _loaded_name(name: str) -> str:
    """The name `from_pretrained` gives a parameter PEFT moved into a LoRA layer's `base_layer`."""
    return name.replace(".base_layer.", ".")


def restore_frozen_base(model, stored: StoredBase, model_dir: str, trust_remote_code: bool = False) -> None:
    """Put the bf16-stored weights back as loaded: cast back when that is exact, else read from `model_dir` again."""
    if not stored.names:
        return
    params = dict(_transformers_model(model).named_parameters(remove_duplicate=False))
    originals = {} if stored.exact else _reloaded(model_dir, trust_remote_code)
    missing = []
    for name in stored.names:
        p = params[name]
        original = originals.get(_loaded_name(name))
        if original is None or original.shape != p.shape:
            missing.append(name)
            original = p.data
        p.data = original.to(device=p.device, dtype=stored.dtype)
    if missing and not stored.exact:
        Console(stderr=True).print(f"[yellow]warning:[/] {len(missing)} base weights (e.g. {missing[0]}) were not found in "
                                   f"{model_dir}: they keep their bf16-rounded values in the model evaluated after training "
                                   "(the saved adapter is unaffected)")


def _reloaded(model_dir: str, trust_remote_code: bool) -> dict[str, torch.Tensor]:
    from ..models import load_model

    fresh = load_model(model_dir, trust_remote_code=trust_remote_code)
    return {n: p.data for n, p in fresh.named_parameters(remove_duplicate=False)}
