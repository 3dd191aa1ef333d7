"""Next-token choice per row: greedy at temperature 0, otherwise temperature + nucleus (top_p) sampling.

Each row samples with its own seeded generator when the request gave a seed, so an answer does
not depend on which other requests happened to share its batch.
"""
from __future__ import annotations


def pick_tokens(logits, rows: list, vocab_limit: int) -> list[int]:
    """One token id per row of `logits` (B, V), following each row's request settings."""
    import torch

    logits = logits.float()
    if logits.shape[-1] > vocab_limit:
        logits = logits[:, :vocab_limit]
    greedy = logits.argmax(dim=-1).tolist()
    tokens = []
    for i, row in enumerate(rows):
        request = row.request
        if request.temperature == 0:
            tokens.append(greedy[i])
            continue
        probs = torch.softmax(logits[i] / request.temperature, dim=-1)
        if request.top_p < 1.0:
            probs = nucleus(probs, request.top_p)
        tokens.append(int(torch.multinomial(probs, 1, generator=row.generator)))
    return tokens


def nucleus(probs, top_p: float):
    """Zero every token outside the smallest set whose probability reaches top_p, renormalised."""
    import torch

    sorted_probs, order = torch.sort(probs, descending=True)
    cumulative = sorted_probs.cumsum(dim=-1)
    outside = cumulative - sorted_probs >= top_p  # keeps at least the most likely token
    sorted_probs[outside] = 0.0
    kept = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return kept / kept.sum()
