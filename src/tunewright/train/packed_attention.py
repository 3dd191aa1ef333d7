"""Attention per example inside packed rows (`train.attention: per_example`), instead of one masked row.

What transformers does today (5.24, SDPA, our rows: restarted `position_ids`, no attention mask,
no cache): `create_causal_mask` finds the packed examples from the position ids
(`find_packed_sequence_indices`: a new example wherever a position is not the previous one plus
one), refuses the `is_causal` shortcut and builds a dense (B, 1, T, T) boolean mask, causal within
each example and the pad tail. `sdpa_attention_forward` then hands that mask to
`F.scaled_dot_product_attention` with `is_causal=False`: on CPU still the flash kernel, but over the
whole T x T square of the row (with a mask, the kernel cannot skip the blocks above the diagonal
or between examples), and with grouped-query attention the keys and values are first repeated to
every head (`repeat_kv`), because `enable_gqa` is only used without a mask.

This module registers an attention function under `PER_EXAMPLE` that takes the same example
boundaries from the same position ids and runs one causal SDPA call per example (`is_causal=True`,
no mask, `enable_gqa` for GQA): sum of L_i^2 / 2 instead of T^2 work, no repeated keys and values,
no mask. With it, transformers builds no mask (`_mask_when_needed`); any call that does need one
(a padding mask passed in, a cache, query and key of different lengths) gets transformers' own
mask and SDPA, unchanged. Sliding-window layers mask the examples longer than their window. On CPU,
bf16/fp16 inputs are attended in fp32 (`_compute_dtype`: torch's bf16 CPU kernel has a large cost per
call, which short examples do not amortise) and the output cast back, so under bf16 autocast the
attention is more precise than the masked bf16 path, not less.

Only training uses it: `use_per_example_attention` sets it for the run and `restore_attention` puts the
model's own implementation back afterwards. Models whose attention is not SDPA (Gemma 2 runs eager for its
logit soft-capping) are refused with the reason.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..errors import UserError

PER_EXAMPLE = "tunewright_per_example"
_last_segments: list = [None, None, None]  # (position_ids, its version, lengths): one forward's layers share the split


def example_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: where an example starts, by transformers' `find_packed_sequence_indices` rule: wherever a
    position is not the previous one plus one, and at each row's start."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts


def example_lengths(position_ids: torch.Tensor) -> list[list[int]]:
    """Per row, the lengths of its runs of consecutive positions: the examples (and pad tail) transformers masks apart.

    The same rule as transformers' `find_packed_sequence_indices`: a new example starts wherever a
    position is not the previous one plus one. Computed once per forward (layers get the same tensor).
    """
    version = position_ids._version
    if _last_segments[0] is position_ids and _last_segments[1] == version:
        return _last_segments[2]
    starts = example_starts(position_ids)
    width = position_ids.shape[1]
    lengths = []
    for row in starts.cpu():
        edges = row.nonzero().flatten().tolist() + [width]
        lengths.append([b - a for a, b in pairwise(edges)])
    _last_segments[:] = [position_ids, version, lengths]
    return lengths


def _causal(q, k, v, scale, dropout: float, window: int | None) -> torch.Tensor:
    """Causal SDPA over one example; a sliding window shorter than it masks what lies beyond (as transformers does)."""
    gqa = q.shape[1] != k.shape[1]
    length = q.shape[2]
    if window is None or length <= window:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=gqa)
    i = torch.arange(length, device=q.device)
    offset = i[:, None] - i[None, :]
    mask = (offset >= 0) & (offset < window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale, enable_gqa=gqa)


def per_example_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                                  scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention signature: (B, H, T, D) in, (B, T, H, D) out; per example when the row allows it."""
    position_ids = kwargs.get("position_ids")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if (attention_mask is not None or position_ids is None or not causal or kwargs.get("softcap") is not None
            or query.shape[2] != key.shape[2] or position_ids.shape[-1] != query.shape[2]):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    lengths = example_lengths(position_ids)
    if len(lengths) != query.shape[0]:  # positions given once for the whole batch
        lengths = lengths * query.shape[0]
    dtype = _compute_dtype(query)
    with torch.autocast(query.device.type, enabled=False):
        rows = [_row(q.to(dtype), k.to(dtype), v.to(dtype), lens, scaling, dropout, kwargs.get("sliding_window"))
                for q, k, v, lens in zip(query.unbind(0), key.unbind(0), value.unbind(0), lengths, strict=True)]
    out = torch.cat(rows, 0) if len(rows) > 1 else rows[0]
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _compute_dtype(query: torch.Tensor) -> torch.dtype:
    """fp32 for bf16/fp16 on CPU: there torch's flash kernel costs as much per short example in bf16 as fp32 over a whole row.

    Measured (benchmarks/attention.py --part attention): one 512-token row of 4-6 examples, fwd+bwd, 1 thread:
    bf16 per example 31-33 ms (the masked row 32-34 ms), the same examples in fp32 13-19 ms. More precise, too.
    """
    if query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return query.dtype


def _row(q, k, v, lengths: list[int], scale, dropout: float, window: int | None) -> torch.Tensor:
    """One packed row (H, T, D): causal attention within each example, concatenated back to (1, H, T, D)."""
    parts = zip(q.split(lengths, 1), k.split(lengths, 1), v.split(lengths, 1), strict=True)
    outs = [_causal(a[None], b[None], c[None], scale, dropout, window) for a, b, c in parts]
    return torch.cat(outs, 2) if len(outs) > 1 else outs[0]


def _mask_when_needed(*args, **kwargs):
    """No mask for a plain training forward (the position ids say everything); transformers' SDPA mask otherwise."""
    plain = (kwargs.get("attention_mask") is None and not kwargs.get("use_vmap")
             and kwargs.get("q_length") == kwargs.get("kv_length")
             and not _nonzero(kwargs.get("q_offset", 0)) and not _nonzero(kwargs.get("kv_offset", 0)))
    return None if plain else sdpa_mask(*args, **kwargs)


def _nonzero(offset) -> bool:
    return bool(offset.ne(0).any()) if isinstance(offset, torch.Tensor) else bool(offset)


def register() -> None:
    """Make `PER_EXAMPLE` a valid `attn_implementation` (idempotent)."""
    AttentionInterface.register(PER_EXAMPLE, per_example_attention_forward)
    AttentionMaskInterface.register(PER_EXAMPLE, _mask_when_needed)


def _base_model(model):
    """The transformers model under PEFT / DDP wrappers."""
    while not hasattr(model, "set_attn_implementation"):
        inner = getattr(model, "module", None) or getattr(model, "base_model", None) or getattr(model, "model", None)
        if inner is None or inner is model:
            raise UserError("train.attention=per_example: cannot find the transformers model to set its attention",
                            "use --set train.attention=mask")
        model = inner
    return model


def check_supported(model) -> None:
    """Refuse models whose attention the lever would change: it replaces SDPA, nothing else."""
    current = _base_model(model).config._attn_implementation
    if current != "sdpa":
        raise UserError(f"train.attention=per_example replaces SDPA attention, but this model runs {current!r} attention "
                        "(Gemma 2 runs eager attention for its logit soft-capping, which SDPA lacks)",
                        "use --set train.attention=mask (or auto) for this model")


def use_per_example_attention(model) -> str:
    """Switch the model to per-example attention; returns its own implementation, for `restore_attention`."""
    check_supported(model)
    register()
    base = _base_model(model)
    own = base.config._attn_implementation
    base.set_attn_implementation(PER_EXAMPLE)
    return own


def restore_attention(model, own: str) -> None:
    """Put the model's own attention back (evaluation, saving and serving never see the lever)."""
    _base_model(model).set_attn_implementation(own)
    _last_segments[:] = [None, None, None]


@contextmanager
def per_example_attention(model, enabled: bool = True) -> Iterator[None]:
    """While the block runs, the model attends per example inside packed rows; afterwards its own attention is back."""
    own = use_per_example_attention(model) if enabled else None
    try:
        yield
    finally:
        if own is not None:
            restore_attention(model, own)
