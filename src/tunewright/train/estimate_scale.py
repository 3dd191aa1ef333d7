"""`tunewright estimate --gpus N --strategy ddp|fsdp|zero3`: memory per device and training time.

Bytes per parameter (as in estimate.py): frozen weights at the training precision (2 for bf16,
~0.56 for QLoRA's NF4); trainable weights 4 (fp32 master) + gradients 4 + AdamW moments 8.
- ddp: every device holds all of it.
- fsdp / zero3 (FSDP FULL_SHARD = DeepSpeed ZeRO-3): weights, gradients and optimizer state are
  split over the N devices; each device also holds the block being computed and the one being
  prefetched, gathered whole: 2 x (parameters / layers) x precision bytes.
- activations are per device (each processes its own micro-batch); 0.5 GB of CUDA context etc.

Time: FLOPs per trained token are 2P forward, 2P for the activation gradients, and 2x the
trained parameters for the weight gradients (all P for full fine-tuning, the adapter for LoRA),
plus 2P more with gradient checkpointing (the forward runs twice); divided by N devices x a stated
sustained TFLOP/s each. Or, from a measured tokens/s per device: tokens / (N x tokens/s).
Communication is not counted here: docs/scale.md has the interconnect model.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .methods import ParamCounts, is_adapter_method

GB = 1024**3
STRATEGIES = ("ddp", "fsdp", "zero3")
TRAINABLE_BYTES = {"weights": 4, "gradients": 4, "optimizer": 8}  # fp32 master, fp32 gradient, AdamW's two moments
OVERHEAD = 0.5 * GB


@dataclass(frozen=True)
class Shape:
    """What the arithmetic needs from a model and a run."""

    params: ParamCounts
    hidden: int
    layers: int
    method: str
    seq_len: int
    micro_batch: int = 1
    precision_bytes: int = 2
    checkpointing: bool = False


def check_strategy(gpus: int, strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise UserError(f"--strategy {strategy}: unknown", "use ddp, fsdp or zero3")
    if gpus < 1:
        raise UserError(f"--gpus {gpus}: must be at least 1", "pass the number of devices, e.g. --gpus 8")


def per_device_bytes(shape: Shape, gpus: int, strategy: str) -> dict:
    """Bytes on each of `gpus` devices: weights, gradients, optimizer state, gathered blocks, activations."""
    check_strategy(gpus, strategy)
    p = shape.params
    base_bytes = 0.5625 if shape.method == "qlora" else shape.precision_bytes
    frozen = p.total - p.trainable if not is_adapter_method(shape.method) else p.total  # adapters sit beside the base
    parts = {
        "weights": frozen * base_bytes + p.trainable * TRAINABLE_BYTES["weights"],
        "gradients": p.trainable * TRAINABLE_BYTES["gradients"],
        "optimizer": p.trainable * TRAINABLE_BYTES["optimizer"],
    }
    sharded = strategy != "ddp"
    if sharded:
        parts = {k: v / gpus for k, v in parts.items()}
    parts["gathered_blocks"] = 2 * p.total / max(shape.layers, 1) * shape.precision_bytes if sharded else 0.0
    per_layer = 34 * shape.hidden * shape.seq_len * shape.micro_batch * shape.precision_bytes / 2
    parts["activations"] = per_layer * (1 if shape.checkpointing else shape.layers)
    parts["overhead"] = OVERHEAD
    parts["total"] = sum(parts.values())
    return parts


def flops_per_token(params: ParamCounts, method: str, checkpointing: bool = False) -> float:
    """Training FLOPs per token: forward, activation gradients, weight gradients (+ a second forward)."""
    trained = params.total if method == "full" else params.trainable
    flops = 2 * params.total + 2 * params.total + 2 * trained
    return flops + (2 * params.total if checkpointing else 0)


def training_seconds(tokens: int, params: ParamCounts, method: str, gpus: int, tflops: float | None = None,
                     tokens_per_s: float | None = None, checkpointing: bool = False) -> float:
    """Seconds to train on `tokens` with `gpus` devices at a stated TFLOP/s or a measured tokens/s per device."""
    if (tflops is None) == (tokens_per_s is None):
        raise UserError("a time estimate needs one device throughput",
                        "pass --tflops (sustained TFLOP/s per device) or --tokens-per-s (measured per device)")
    if tokens_per_s is not None:
        return tokens / (gpus * tokens_per_s)
    return tokens * flops_per_token(params, method, checkpointing) / (gpus * tflops * 1e12)
