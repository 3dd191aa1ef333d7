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
    trained_tokens: int  # answer tokens whose loss counts (labels shifted by one): what a step divides by
    # (B, T) fp32 loss weight per label when prompt tokens are trained too (data.prompt_loss_weight > 0):
    # 1 on answer tokens, the prompt weight on the others, 0 on first tokens and padding; None: labels decide
    weights: torch.Tensor | None = None

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


def collate(rows: list[list[TokenizedExample]], pad_id: int, prompt_weight: float = 0.0) -> MicroBatch:
    """Right-pad rows to the longest; the pad tail gets its own position block and no labels.

    With `prompt_weight` > 0 the untrained tokens become targets too, at that weight (OpenAI's legacy
    `prompt_loss_weight`): with one-word answers the prompt's tokens are most of the signal in the data.
    """
    width = max(_row_len(r) for r in rows)
    ids, labels, pos, weights = [], [], [], []
    real = trained = 0
    for row in rows:
        r_ids, r_lab, r_pos, r_w = [], [], [], []
        for ex in row:
            r_ids += ex.input_ids
            # the first token of each example is never a target of the previous one
            r_lab += [-100] + _targets(ex, prompt_weight > 0)[1:]
            if prompt_weight > 0:
                r_w += [0.0] + [1.0 if x != -100 else prompt_weight for x in ex.labels[1:]]
            r_pos += list(range(len(ex.input_ids)))
            trained += sum(1 for x in ex.labels[1:] if x != -100)
        real += len(r_ids)
        pad = width - len(r_ids)
        ids.append(r_ids + [pad_id] * pad)
        labels.append(r_lab + [-100] * pad)
        pos.append(r_pos + list(range(pad)))
        if prompt_weight > 0:  # otherwise no per-token floats: labels alone decide what trains
            weights.append(r_w + [0.0] * pad)
    w = torch.tensor(weights, dtype=torch.float32) if prompt_weight > 0 else None
    return MicroBatch(torch.tensor(ids), torch.tensor(labels), torch.tensor(pos), real, trained, w)


def _targets(ex: TokenizedExample, with_prompt: bool) -> list[int]:
    """The example's labels; with the prompt, every token is a target (its weight says how much it counts)."""
    return list(ex.input_ids) if with_prompt else ex.labels


def micro_batches(examples: list[TokenizedExample], pad_id: int, token_budget: int, packing: bool, row_len: int,
                  prompt_weight: float = 0.0) -> list[MicroBatch]:
    """All micro-batches of one optimizer step (or one evaluation pass)."""
    rows = pack_rows(examples, row_len) if packing else [[e] for e in examples]
    return [collate(g, pad_id, prompt_weight) for g in group_rows(rows, max(token_budget, row_len))]


@dataclass
class PairUnit:
    """Both answers of pair `index`, packed as one unit: they share a row (or at least a micro-batch).

    With `shared` > 0 the unit is prompt + chosen answer + rejected answer: the first `shared` tokens
    (the untrained prompt both sequences start with) are in the row once, and the rejected answer
    attends to them but not to the chosen answer (`PairMicroBatch.attention_mask`).
    """

    index: int
    chosen: TokenizedExample
    rejected: TokenizedExample
    shared: int = 0

    @property
    def input_ids(self) -> list[int]:  # the unit's tokens as they sit in its row
        return self.chosen.input_ids + self.rejected.input_ids[self.shared:]


def shared_prompt_length(chosen: TokenizedExample, rejected: TokenizedExample) -> int:
    """Tokens both sequences start with and neither trains: the prompt, computed once when shared.

    Stops at the first trained token, so an answer token is never shared even when both answers
    begin alike; at most all but the last token of the shorter sequence (each keeps one token of its own).
    """
    limit = min(len(chosen.input_ids), len(rejected.input_ids)) - 1
    n = 0
    while n < limit and chosen.input_ids[n] == rejected.input_ids[n] and chosen.labels[n] == rejected.labels[n] == -100:
        n += 1
    return n


@dataclass
class PairMicroBatch(MicroBatch):
    """A micro-batch of preference pairs: sequence 2k is the chosen answer of its k-th pair, 2k+1 the rejected.

    The model scores `targets` (N,) from the hidden states at `sources` (N,) (flat indices into the
    (B * T) positions); `target_seqs` (N,) says whose sequence each target is. Spelled out rather than
    shifted labels, because with a shared prompt its last position predicts the first token of both answers.
    `real_tokens` counts each pair's two sequences in full (prompt twice, as the data report and
    other tools count them); `shared_tokens` of those are the prompts not computed twice.
    """

    sources: torch.Tensor | None = None  # (N,) flat position whose hidden state predicts each target
    targets: torch.Tensor | None = None  # (N,) the trained tokens
    target_seqs: torch.Tensor | None = None  # (N,) sequence of each target: 2k chosen, 2k+1 rejected
    attention_mask: torch.Tensor | None = None  # (B, 1, T, T) True = may attend; None: the positions say it
    pair_ids: list[int] = field(default_factory=list)  # dataset index of each of its pairs
    sequence_tokens: torch.Tensor | None = None  # (2P,) trained tokens of each sequence
    reference: torch.Tensor | None = None  # (P, 2) reference log-probs of (chosen, rejected), when precomputed
    shared_tokens: int = 0

    @property
    def padded_tokens(self) -> int:  # the positions a pass stands for: computed (pad included) + shared prompts
        return int(self.input_ids.numel()) + self.shared_tokens

    def model_args(self, device=None) -> tuple:
        """`SequenceLogps`' positional arguments, on `device`."""
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        return (self.input_ids.to(device), self.position_ids.to(device), mask, self.sources.to(device),
                self.targets.to(device), self.target_seqs.to(device), 2 * len(self.pair_ids))


def pair_micro_batches(pairs: list, ids: list[int], pad_id: int, token_budget: int, packing: bool,
                       row_len: int, share_prompt: bool = False) -> list[PairMicroBatch]:
    """Micro-batches of the pairs `ids`: chosen and rejected of a pair go through the same forward pass.

    `packing` puts several pairs in a row; without it each row holds one pair (its two answers, each
    with positions restarting at 0, so still one pass per pair and no padding between them).
    `share_prompt` puts each pair's prompt in the row once (`PairUnit`); the model must take a 4-D mask.
    """
    units = [PairUnit(i, pairs[i].chosen, pairs[i].rejected,
                      shared_prompt_length(pairs[i].chosen, pairs[i].rejected) if share_prompt else 0) for i in ids]
    rows = pack_rows(units, row_len) if packing else [[u] for u in units]
    return [_collate_pairs(g, pad_id, share_prompt) for g in group_rows(rows, max(token_budget, row_len))]


@dataclass
class _RowLayout:
    """One row of pair units being laid out: tokens, positions, labels, attention segments, scored targets."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)  # a token attends earlier tokens of its own segment
    parents: list[int] = field(default_factory=list)  # ... and of its parent segment (the shared prompt)

    def add(self, ids: list[int], labels: list[int], positions: range, segment: int, parent: int) -> None:
        self.ids += ids
        self.labels += labels
        self.positions += positions
        self.segments += [segment] * len(ids)
        self.parents += [parent] * len(ids)


def _collate_pairs(rows: list[list[PairUnit]], pad_id: int, with_mask: bool) -> PairMicroBatch:
    width = max(_row_len(r) for r in rows)
    layouts, sources, targets, target_seqs, order = [], [], [], [], []
    real = shared = 0
    for b, row in enumerate(rows):
        lay = _RowLayout()
        for u in row:
            k, start, s = len(order), b * width + len(lay.ids), u.shared
            order.append(u.index)
            c, r = u.chosen, u.rejected
            lay.add(c.input_ids[:s], [-100] * s, range(s), 3 * k, 3 * k)
            lay.add(c.input_ids[s:], ([-100] + c.labels[1:])[s:], range(s, len(c.input_ids)), 3 * k + 1, 3 * k)
            lay.add(r.input_ids[s:], ([-100] + r.labels[1:])[s:], range(s, len(r.input_ids)), 3 * k + 2, 3 * k)
            rejected_at = [start + j if j < s else start + len(c.input_ids) + j - s for j in range(len(r.input_ids))]
            for seq, ex, at in ((2 * k, c, range(start, start + len(c.input_ids))), (2 * k + 1, r, rejected_at)):
                for j in range(1, len(ex.input_ids)):
                    if ex.labels[j] != -100:
                        sources.append(at[j - 1])
                        targets.append(ex.labels[j])
                        target_seqs.append(seq)
            real += len(c.input_ids) + len(r.input_ids)
            shared += s
        pad = width - len(lay.ids)
        lay.add([pad_id] * pad, [-100] * pad, range(pad), -1, -1)
        layouts.append(lay)
    seqs = torch.tensor(target_seqs, dtype=torch.long)
    return PairMicroBatch(
        torch.tensor([lay.ids for lay in layouts]), torch.tensor([lay.labels for lay in layouts]),
        torch.tensor([lay.positions for lay in layouts]), real, len(targets),
        sources=torch.tensor(sources, dtype=torch.long), targets=torch.tensor(targets, dtype=torch.long), target_seqs=seqs,
        attention_mask=_segment_mask(layouts) if with_mask else None, pair_ids=order,
        sequence_tokens=torch.bincount(seqs, minlength=2 * len(order)), shared_tokens=shared)


def _segment_mask(layouts: list[_RowLayout]) -> torch.Tensor:
    """(B, 1, T, T) causal within each segment, plus each segment's view of its parent (the shared prompt)."""
    seg = torch.tensor([lay.segments for lay in layouts])
    parent = torch.tensor([lay.parents for lay in layouts])
    width = seg.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    visible = (seg[:, None, :] == seg[:, :, None]) | (seg[:, None, :] == parent[:, :, None])  # [b, query, key]
    return (visible & causal)[:, None]


def idle_pair_micro_batch(pad_id: int) -> PairMicroBatch:
    """`idle_micro_batch` for preference training: no pair, a zero loss that still reaches every parameter."""
    mb = idle_micro_batch(pad_id)
    empty = torch.zeros(0, dtype=torch.long)
    return PairMicroBatch(mb.input_ids, mb.labels, mb.position_ids, 0, 0, sources=empty, targets=empty,
                          target_seqs=empty, pair_ids=[], sequence_tokens=empty)
