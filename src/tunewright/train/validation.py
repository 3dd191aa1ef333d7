"""The validation loss: one function for the loop's `eval_loss` and `tunewright eval`'s loss.

Both score the same tokens the same way: examples tokenized with the run's `train_on` and truncated
to its `max_seq_len` (data.dataset.tokenize_one, as training does), packed into token-budget
micro-batches, and scored by `TokenLoss` (the chunked LM head: no full logits). Per example it
gives the summed NLL and the number of scored tokens, so the evaluation can resample examples and
the loop can divide the sums.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..config import RunConfig
from ..data.templates import TokenizedExample
from .batching import MicroBatch, collate, group_rows, pack_rows


@dataclass(frozen=True)
class LossSettings:
    """How examples are tokenized and batched for a loss: the run's own data and batch settings."""

    max_seq_len: int = 1024
    train_on: str = "assistant"
    token_budget: int = 1024  # tokens per forward pass (train.micro_batch_tokens)
    packing: bool = True

    @classmethod
    def of(cls, cfg: RunConfig | dict) -> LossSettings:
        """A run's settings, from its RunConfig or its config.yaml read as a dict (`auto` keeps the default)."""
        raw = cfg if isinstance(cfg, dict) else cfg.model_dump()
        data, train = raw.get("data") or {}, raw.get("train") or {}
        budget = train.get("micro_batch_tokens")
        return cls(int(data.get("max_seq_len", cls.max_seq_len)), str(data.get("train_on", cls.train_on)),
                   budget if isinstance(budget, int) else cls.token_budget, bool(data.get("packing", cls.packing)))


@dataclass
class ScoredBatch:
    """A micro-batch plus which example each token belongs to (-1 on padding)."""

    batch: MicroBatch
    seq_ids: torch.Tensor  # (B, T)
    example_ids: list[int]  # dataset index of sequence k of this batch


@dataclass
class _Indexed:
    index: int
    example: TokenizedExample

    @property
    def input_ids(self) -> list[int]:  # packing reads only its length
        return self.example.input_ids


def scored_batches(examples: list[TokenizedExample], pad_id: int, settings: LossSettings) -> list[ScoredBatch]:
    """The micro-batches the loop trains with (same packing and rows), each token tagged with its example."""
    if not examples:
        return []
    row_len = max(min(settings.max_seq_len, settings.token_budget), max(len(e.input_ids) for e in examples))
    units = [_Indexed(i, e) for i, e in enumerate(examples)]
    rows = pack_rows(units, row_len) if settings.packing else [[u] for u in units]
    return [_tagged(g, pad_id) for g in group_rows(rows, max(settings.token_budget, row_len))]


def _tagged(rows: list[list[_Indexed]], pad_id: int) -> ScoredBatch:
    mb = collate([[u.example for u in row] for row in rows], pad_id)
    width = mb.input_ids.shape[1]
    seq, order = [], []
    for row in rows:
        r = []
        for u in row:
            r += [len(order)] * len(u.example.input_ids)
            order.append(u.index)
        seq.append(r + [-1] * (width - len(r)))
    return ScoredBatch(mb, torch.tensor(seq), order)


def example_loss_sums(loss_module, batches: list[ScoredBatch], n_examples: int, device,
                      on_batch: Callable[[ScoredBatch], None] | None = None) -> np.ndarray:
    """`(n, 3)` float64 array of [summed NLL, scored tokens, greedy hits] per example, from `TokenLoss`."""
    was_training = loss_module.training
    loss_module.eval()
    out = np.zeros((n_examples, 3), dtype=np.float64)
    with torch.no_grad():
        for sb in batches:
            mb, n = sb.batch, len(sb.example_ids)
            sums = loss_module(mb.input_ids.to(device), mb.position_ids.to(device), mb.labels.to(device),
                               sb.seq_ids.to(device), n).float().cpu().numpy()
            trained = sb.seq_ids[:, 1:][mb.labels[:, 1:] != -100]
            out[sb.example_ids, 0] = sums[:, 0]
            out[sb.example_ids, 1] = torch.bincount(trained, minlength=n).numpy()
            out[sb.example_ids, 2] = sums[:, 1]
            if on_batch is not None:
                on_batch(sb)
    loss_module.train(was_training)
    return out


def mean_loss(sums: np.ndarray) -> float:
    """Loss per scored token over all examples (token-weighted, as training's)."""
    return float(sums[:, 0].sum() / max(sums[:, 1].sum(), 1))


def token_accuracy(sums: np.ndarray) -> float:
    """Share of scored tokens that are the model's greedy choice given the reference before them."""
    return float(sums[:, 2].sum() / max(sums[:, 1].sum(), 1))


def exact_match(sums: np.ndarray) -> float:
    """Share of examples (with a scored token) whose every scored token is the greedy choice: exactly what
    greedy decoding would write for that answer, end-of-turn included, found without generating."""
    scored = sums[:, 1] > 0
    return float((sums[scored, 2] == sums[scored, 1]).mean()) if scored.any() else 0.0
