"""The running batch's shared KV cache, and the surgery that lets rows join and leave it.

Rows are left-padded: every row's newest token sits in the last column, so one decode step feeds
one token per row. A joining group is prefilled on its own, then both caches are padded on the
left to the same length and stacked; padding columns are masked out and position ids are kept
per row, so a row's numbers do not depend on its neighbours. Leaving rows are dropped from every
layer, and columns that only padding uses are trimmed off the left.
"""
from __future__ import annotations

from dataclasses import dataclass, field


def _layers(cache) -> list:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise RuntimeError("this transformers version has no cache.layers; dynamic batching needs transformers >= 4.56")
    return layers


def _pad_left(tensor, columns: int, dim: int):
    import torch.nn.functional as F

    if columns == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - dim - 1) + [columns, 0]
    return F.pad(tensor, pad)


@dataclass
class RunningBatch:
    """Rows decoding together, their cache, attention mask and last sampled tokens."""

    key: tuple
    device: str
    cache: object
    rows: list = field(default_factory=list)
    mask: object = None  # (B, L) long: 1 where the cache column holds a real token of that row
    last_tokens: object = None  # (B,) the tokens to feed next

    @classmethod
    def empty(cls, key: tuple, device: str) -> RunningBatch:
        from transformers import DynamicCache

        return cls(key, device, DynamicCache())

    @property
    def group(self):
        return self.rows[0].request.served.group

    def attach(self, rows: list, mask) -> None:
        self.rows, self.mask = rows, mask

    def set_last_tokens(self, tokens: list[int]) -> None:
        import torch

        self.last_tokens = torch.tensor(tokens, dtype=torch.long, device=self.device)

    def decode_inputs(self):
        """(input ids (B, 1), mask with the new column, position ids (B, 1)) for one decode step."""
        import torch

        ones = torch.ones((self.mask.shape[0], 1), dtype=self.mask.dtype, device=self.mask.device)
        positions = torch.tensor([[row.position - 1] for row in self.rows], dtype=torch.long, device=self.device)
        return self.last_tokens[:, None], torch.cat([self.mask, ones], dim=1), positions

    def merge(self, other: RunningBatch) -> RunningBatch:
        """Stack `other`'s rows under ours, padding the shorter cache on the left."""
        import torch

        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache)):
            a, b = width - mine.keys.shape[-2], width - theirs.keys.shape[-2]
            mine.keys = torch.cat([_pad_left(mine.keys, a, 2), _pad_left(theirs.keys, b, 2)])
            mine.values = torch.cat([_pad_left(mine.values, a, 2), _pad_left(theirs.values, b, 2)])
        self.mask = torch.cat([_pad_left(self.mask, width - self.mask.shape[1], 1),
                               _pad_left(other.mask, width - other.mask.shape[1], 1)])
        self.last_tokens = torch.cat([self.last_tokens, other.last_tokens])
        self.rows = self.rows + other.rows
        return self

    def select(self, keep: list[int]) -> None:
        """Keep only the rows at `keep`, then trim columns no remaining row uses."""
        import torch

        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        for layer in _layers(self.cache):
            layer.keys, layer.values = layer.keys[index], layer.values[index]
        self.mask, self.last_tokens = self.mask[index], self.last_tokens[index]
        self.rows = [self.rows[i] for i in keep]
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start:
            for layer in _layers(self.cache):
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
            self.mask = self.mask[:, start:]
