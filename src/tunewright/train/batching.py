"""Turn tokenized examples into optimizer steps and token-budget micro-batches.

Every micro-batch is a list of rows; a row holds one example (padded batches) or several
(packing). Rows carry restarted `position_ids` and no attention mask: transformers then keeps each
example (and the padding tail) in its own causal block, so packed rows never attend across
examples (see DESIGN.md, "Facts measured here": this needs use_cache=False).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..data.templates import TokenizedExample


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T), -100 on untrained and pad positions
    position_ids: torch.Tensor  # (B, T), restarting at 0 for each example and for the pad tail
    real_tokens: int  # non-pad tokens
    trained_tokens: int  # tokens whose loss counts (labels shifted by one)

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.numel())


def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    """A seeded permutation per epoch, so the data position after any step is reproducible."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.randperm(n_examples, generator=g).tolist()


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(n_examples / batch_size))


def step_example_ids(n_examples: int, batch_size: int, seed: int, step: int) -> tuple[int, list[int]]:
    """The epoch and example indices of global optimizer step `step` (0-based)."""
    per_epoch = steps_per_epoch(n_examples, batch_size)
    epoch, k = divmod(step, per_epoch)
    order = epoch_order(n_examples, seed, epoch)
    return epoch, order[k * batch_size:(k + 1) * batch_size]


def process_share(ids: list[int], rank: int, world: int) -> list[int]:
    """The examples of one optimizer step that process `rank` of `world` trains on (may be none)."""
    return ids[rank::world]


def idle_micro_batch(pad_id: int) -> MicroBatch:
    """One pad token that trains nothing: the pass a process runs when its share of a step is empty.

    Under DDP every process takes part in each gradient all-reduce; one that skipped backward would
    leave the others waiting in it forever. This pass reaches every parameter and adds exactly zero.
    """
    return MicroBatch(torch.tensor([[pad_id]]), torch.tensor([[-100]]), torch.tensor([[0]]), real_tokens=0, trained_tokens=0)


def pack_rows(examples: list[TokenizedExample], row_len: int) -> list[list[TokenizedExample]]:
    """Pack examples into as few rows of at most `row_len` tokens as fit, with rows of similar length.

    First-fit-decreasing fills the first rows and leaves a short last one, which then pads to the
    longest (a third of the micro-batch was padding on the example data). Instead: for k rows,
    from ceil(total / row_len) up, put each example, longest first, into the emptiest row; take the
    first k for which everything fits.
    """
    if not examples:
        return []
    ordered = sorted(examples, key=lambda e: len(e.input_ids), reverse=True)
    total = sum(len(e.input_ids) for e in examples)
    for k in range(max(1, math.ceil(total / row_len)), len(examples) + 1):
        rows = _balanced(ordered, k, row_len)
        if rows is not None:
            return rows
    return [[e] for e in ordered]


def _balanced(ordered: list[TokenizedExample], k: int, row_len: int) -> list[list[TokenizedExample]] | None:
    rows: list[list[TokenizedExample]] = [[] for _ in range(k)]
    used = [0] * k
    for ex in ordered:
        i = min(range(k), key=used.__getitem__)
        if used[i] + len(ex.input_ids) > row_len:
            return None
        rows[i].append(ex)
        used[i] += len(ex.input_ids)
    return [r for r in rows if r]


def group_rows(rows: list[list[TokenizedExample]], token_budget: int) -> list[list[list[TokenizedExample]]]:
    """Group rows (longest first) into micro-batches whose padded size stays within the budget."""
    ordered = sorted(rows, key=_row_len, reverse=True)
    groups: list[list[list[TokenizedExample]]] = []
    for row in ordered:
        if groups:
            g = groups[-1]
            width = max(_row_len(g[0]), _row_len(row))
            if width * (len(g) + 1) <= token_budget:
                g.append(row)
                continue
        groups.append([row])
    return groups


def _row_len(row: list[TokenizedExample]) -> int:
    return sum(len(e.input_ids) for e in row)


def collate(rows: list[list[TokenizedExample]], pad_id: int) -> MicroBatch:
    """Right-pad rows to the longest; the pad tail gets its own position block and no labels."""
    width = max(_row_len(r) for r in rows)
    ids, labels, pos = [], [], []
    real = trained = 0
    for row in rows:
        r_ids, r_lab, r_pos = [], [], []
        for ex in row:
            r_ids += ex.input_ids
            # the first token of each example is never a target of the previous one
            r_lab += [-100] + ex.labels[1:]
            r_pos += list(range(len(ex.input_ids)))
            trained += sum(1 for x in ex.labels[1:] if x != -100)
        real += len(r_ids)
        pad = width - len(r_ids)
        ids.append(r_ids + [pad_id] * pad)
        labels.append(r_lab + [-100] * pad)
        pos.append(r_pos + list(range(pad)))
    return MicroBatch(torch.tensor(ids), torch.tensor(labels), torch.tensor(pos), real, trained)


def micro_batches(examples: list[TokenizedExample], pad_id: int, token_budget: int, packing: bool, row_len: int) -> list[MicroBatch]:
    """All micro-batches of one optimizer step (or one evaluation pass)."""
    rows = pack_rows(examples, row_len) if packing else [[e] for e in examples]
    return [collate(g, pad_id) for g in group_rows(rows, max(token_budget, row_len))]


@dataclass
class PairUnit:
    """Both answers of pair `index`, packed as one unit: they share a row (or at least a micro-batch)."""

    index: int
    chosen: TokenizedExample
    rejected: TokenizedExample

    @property
    def input_ids(self) -> list[int]:  # packing reads only its length
        return self.chosen.input_ids + self.rejected.input_ids


@dataclass
class PairMicroBatch(MicroBatch):
    """A micro-batch of preference pairs: sequence 2k is the chosen answer of its k-th pair, 2k+1 the rejected."""

    seq_ids: torch.Tensor | None = None  # (B, T) the sequence of each token, -1 on padding
    pair_ids: list[int] = field(default_factory=list)  # dataset index of each of its pairs
    sequence_tokens: torch.Tensor | None = None  # (2P,) trained tokens of each sequence
    reference: torch.Tensor | None = None  # (P, 2) reference log-probs of (chosen, rejected), when precomputed


def pair_micro_batches(pairs: list, ids: list[int], pad_id: int, token_budget: int, packing: bool,
                       row_len: int) -> list[PairMicroBatch]:
    """Micro-batches of the pairs `ids`: chosen and rejected of a pair go through the same forward pass.

    `packing` puts several pairs in a row; without it each row holds one pair (its two answers, each
    with positions restarting at 0, so still one pass per pair and no padding between them).
    """
    units = [PairUnit(i, pairs[i].chosen, pairs[i].rejected) for i in ids]
    rows = pack_rows(units, row_len) if packing else [[u] for u in units]
    return [_collate_pairs(g, pad_id) for g in group_rows(rows, max(token_budget, row_len))]


def _collate_pairs(rows: list[list[PairUnit]], pad_id: int) -> PairMicroBatch:
    mb = collate([[ex for u in row for ex in (u.chosen, u.rejected)] for row in rows], pad_id)
    width = mb.input_ids.shape[1]
    seq, order = [], []
    for row in rows:
        r = []
        for u in row:
            k = len(order)
            order.append(u.index)
            r += [2 * k] * len(u.chosen.input_ids) + [2 * k + 1] * len(u.rejected.input_ids)
        seq.append(r + [-1] * (width - len(r)))
    seq_ids = torch.tensor(seq)
    tokens = torch.bincount(seq_ids[:, 1:][mb.labels[:, 1:] != -100], minlength=2 * len(order))
    return PairMicroBatch(mb.input_ids, mb.labels, mb.position_ids, mb.real_tokens, mb.trained_tokens,
                          seq_ids=seq_ids, pair_ids=order, sequence_tokens=tokens)


def idle_pair_micro_batch(pad_id: int) -> PairMicroBatch:
    """`idle_micro_batch` for preference training: no pair, a zero loss that still reaches every parameter."""
    mb = idle_micro_batch(pad_id)
    return PairMicroBatch(mb.input_ids, mb.labels, mb.position_ids, 0, 0, seq_ids=torch.tensor([[-1]]),
                          pair_ids=[], sequence_tokens=torch.zeros(0, dtype=torch.long))
