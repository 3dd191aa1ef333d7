"""A LoRA linear layer's training forward as one autograd op: base(x) + scale * B(A(dropout(x))).

PEFT's forward is four autograd nodes per adapted layer, and for A's weight gradient it keeps the
dropped-out copy of the input (hidden-size, 4 bytes a value; under bf16 autocast a second bf16
copy besides the base layer's). This op keeps only what the gradients need: the input once (in the
matmul dtype: the tensor itself when no cast is needed, so the layers that share an input share
it), a 1-byte keep-mask and the rank-r activation A(dropout(x)); the dropped-out input is rebuilt
in backward. Masks come from `dropout_keep_mask`, drawn in the same order as `FastLoraDropout`
draws them, so a seed gives the same masks with and without the fused op.

Only training uses it (`FusedLoraLinear.forward` hands every other case to PEFT's own forward:
eval mode, no_grad, disabled or merged adapters, several active adapters, DoRA and other variants,
LoRA bias, a trainable or non-`nn.Linear` base); inference, merge, export and the saved adapter
are stock PEFT. The weights of the layer are untouched, so `save_pretrained` writes the same files.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as PeftLoraLinear

from .dropout import FastLoraDropout, apply_keep_mask, dropout_keep_mask


class _FusedLora(torch.autograd.Function):
    """y = x W^T + b + scale * (drop(x) A^T) B^T, all matmuls in `dtype`; grads for x, A and B (W and b frozen)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float, p: float, dtype: torch.dtype):
        with torch.autocast(x.device.type, enabled=False):
            mask = dropout_keep_mask(tuple(x.shape), p, x.device).view(-1, x.shape[-1]) if p > 0 else None
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)
            out = F.linear(x2, weight.to(dtype), None if bias is None else bias.to(dtype))
            low_rank = F.linear(apply_keep_mask(x2, mask), lora_a.to(dtype)).mul_(_keep_scale(p))  # dropout's 1/(1-p), here on r columns
            out.addmm_(low_rank, lora_b.to(dtype).t(), alpha=scale)
        ctx.save_for_backward(x2, weight, mask, low_rank, lora_a, lora_b)
        ctx.scale, ctx.p, ctx.dtype, ctx.x_shape, ctx.x_dtype = scale, p, dtype, x.shape, x.dtype
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, weight, mask, low_rank, lora_a, lora_b = ctx.saved_tensors
        dtype, p = ctx.dtype, ctx.p
        needs_x, _, _, needs_a, needs_b = ctx.needs_input_grad[:5]
        grad_x = grad_a = grad_b = None
        with torch.autocast(grad.device.type, enabled=False):
            g = grad.reshape(-1, grad.shape[-1]).to(dtype)
            if needs_b:
                grad_b = (g.t() @ low_rank).mul_(ctx.scale).to(lora_b.dtype)
            grad_masked = (g @ lora_b.to(dtype)).mul_(ctx.scale * _keep_scale(p))  # the gradient of (x * mask) A^T
            if needs_a:
                grad_a = (grad_masked.t() @ apply_keep_mask(x2, mask)).to(lora_a.dtype)
            if needs_x:
                grad_x = apply_keep_mask(grad_masked @ lora_a.to(dtype), mask, inplace=True)
                grad_x.addmm_(g, weight.to(dtype))
                grad_x = grad_x.view(ctx.x_shape).to(ctx.x_dtype)
        return grad_x, None, None, grad_a, grad_b, None, None, None


def _keep_scale(p: float) -> float:
    """Inverted dropout's 1 / (1 - p), applied to the low-rank activation and its gradient instead of x-sized tensors."""
    return 1.0 / (1.0 - p)


def _dropout_p(drop: torch.nn.Module) -> float | None:
    """The dropout probability of PEFT's (or our) LoRA dropout module; None for one the op does not know."""
    if isinstance(drop, torch.nn.Identity):
        return 0.0
    if isinstance(drop, (torch.nn.Dropout, FastLoraDropout)):
        return float(drop.p)
    return None


class FusedLoraLinear(PeftLoraLinear):
    """PEFT's LoRA `Linear` whose training forward is `_FusedLora`; every other forward is PEFT's own."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        key = None if args or kwargs else self._fusable_adapter(x)
        if key is None:
            return super().forward(x, *args, **kwargs)
        base, lora_a, lora_b = self.base_layer, self.lora_A[key].weight, self.lora_B[key].weight
        return _FusedLora.apply(x, base.weight, base.bias, lora_a, lora_b, float(self.scaling[key]),
                                _dropout_p(self.lora_dropout[key]), self._matmul_dtype(x))

    def _fusable_adapter(self, x: torch.Tensor) -> str | None:
        """The one plain LoRA adapter this training forward can fuse, or None to use PEFT's forward."""
        if not (self.training and torch.is_grad_enabled()) or self.disable_adapters or self.merged or self.fan_in_fan_out:
            return None
        active = [k for k in self.active_adapters if k in self.lora_A]
        if len(active) != 1:
            return None
        key = active[0]
        base = self.base_layer
        if (key in self.lora_variant or self.lora_bias.get(key, False) or type(base) is not torch.nn.Linear
                or base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad)
                or self.lora_A[key].bias is not None or self.lora_B[key].bias is not None
                or _dropout_p(self.lora_dropout[key]) is None):
            return None
        if not torch.is_autocast_enabled(x.device.type):  # PEFT mixes dtypes here: keep its rules
            dtypes = {x.dtype, base.weight.dtype, self.lora_A[key].weight.dtype, self.lora_B[key].weight.dtype}
            if len(dtypes) != 1 or (base.bias is not None and base.bias.dtype != x.dtype):
                return None
        return key

    @staticmethod
    def _matmul_dtype(x: torch.Tensor) -> torch.dtype:
        """What F.linear computes in here: autocast's dtype when it is on, else the input's."""
        device = x.device.type
        return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def use_fused_lora(model) -> int:
    """Give every plain PEFT LoRA `Linear` of `model` the fused training forward; returns how many.

    Only the class changes (weights, names and state dict stay), so PEFT's merge, save and load,
    and every forward outside training, are untouched. Layers with a variant (DoRA) stay PEFT's.
    """
    swapped = 0
    for module in model.modules():
        if type(module) is PeftLoraLinear and not module.lora_variant:
            module.__class__ = FusedLoraLinear
            swapped += 1
    return swapped
