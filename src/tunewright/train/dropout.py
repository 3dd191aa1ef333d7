"""A cheaper LoRA dropout on CPU: the same Bernoulli masks, drawn faster and stored in 1 byte.

With LoRA on every linear layer there are 7 dropouts per block (210 in SmolLM2-135M); torch's
serial CPU `bernoulli_` made them ~20% of a training step (docs/performance.md). Masks come from
numpy's PCG64 seeded by torch's generator, so `torch.manual_seed` and a checkpoint's RNG state
still fix every mask and resume stays exact.
"""
from __future__ import annotations

import math

import torch


def dropout_keep_mask(shape: tuple, p: float, device) -> torch.Tensor:
    """A boolean keep-mask with P(keep) = 1 - p (to 2^-16: 16 random bits a value, half the draws of 32)."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1 - p)
    import numpy as np

    n = math.prod(shape)
    seed = int(torch.randint(0, 2**62, (1,)).item())
    lanes = np.random.PCG64(seed).random_raw((n + 3) // 4).view(np.uint16)[:n]
    return torch.from_numpy(lanes >= np.uint16(min(round(p * 2**16), 2**16 - 1))).view(shape)


def apply_keep_mask(x: torch.Tensor, mask: torch.Tensor | None, inplace: bool = False) -> torch.Tensor:
    """x * mask, without dropout's scale; x itself when there is no mask.

    The boolean mask is multiplied as its uint8 view: the same 0/1 values, and on CPU 3-6x faster than a
    bool operand (0.11 vs 0.63 ms for 512 x 576 in bf16, 1 thread).
    """
    if mask is None:
        return x
    return x.mul_(mask.view(torch.uint8)) if inplace else x * mask.view(torch.uint8)


class _DropoutMask(torch.autograd.Function):
    """x * mask / (1 - p), saving a 1-byte mask (F.dropout keeps a 4-byte float one)."""

    @staticmethod
    def forward(ctx, x, p):
        mask = dropout_keep_mask(tuple(x.shape), p, x.device)
        ctx.save_for_backward(mask)
        ctx.scale = 1.0 / (1 - p)
        return apply_keep_mask(x, mask).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return apply_keep_mask(grad, mask).mul_(ctx.scale), None


class FastLoraDropout(torch.nn.Module):
    """Drop-in for PEFT's `lora_dropout` nn.Dropout."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return _DropoutMask.apply(x, self.p)


def use_fast_lora_dropout(model) -> int:
    """Swap every PEFT LoRA dropout for FastLoraDropout; returns how many were swapped."""
    swapped = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, torch.nn.ModuleDict):
            for key, drop in list(drops.items()):
                if isinstance(drop, torch.nn.Dropout) and drop.p > 0:
                    drops[key] = FastLoraDropout(drop.p)
                    swapped += 1
    return swapped
