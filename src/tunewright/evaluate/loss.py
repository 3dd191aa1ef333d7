"""Loss and perplexity of a model on the reference answers: how likely it finds what a good answer says.

The trained-token labels come from `tokenize_conversation`, so exactly the tokens training would
learn (assistant turns and their end-of-turn token) are scored, with the same chat template.
"""
from __future__ import annotations

import numpy as np

from ..data.conversation import Conversation
from ..data.templates import TokenizedExample, tokenize_conversation, truncate
from .generate import model_device, progress_bar

IGNORE = -100
DEFAULT_TOKEN_BUDGET = 1024  # tokens per forward pass: bounds the (B, T, vocab) logits (~200 MB fp32 at 49k vocab)


def token_budget_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices in batches of similar length whose padded size stays under `budget` tokens (at least one each)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * max(lengths[i], 1) <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def right_pad(examples: list[TokenizedExample], pad_id: int):
    """(input_ids, attention_mask, labels) tensors; padding is never scored."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels)
    return ids, mask, labels


def summed_nll(model, input_ids, attention_mask, labels) -> tuple[list[float], list[int]]:
    """Per row: total negative log-likelihood of the labelled tokens, and how many there were."""
    import torch.nn.functional as F

    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    shift_logits = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
    shift_labels = labels[:, 1:]
    nll = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=IGNORE, reduction="none")  # (B, T-1)
    counts = (shift_labels != IGNORE).sum(dim=1)
    return nll.sum(dim=1).tolist(), counts.tolist()


def max_context(model) -> int:
    return int(getattr(getattr(model, "config", None), "max_position_embeddings", 0) or 4096)


def reference_loss_stats(model, tokenizer, conversations: list[Conversation], token_budget: int = DEFAULT_TOKEN_BUDGET,
                         description: str = "loss") -> np.ndarray:
    """`(n, 2)` array of [summed NLL, scored tokens] per conversation, for token-weighted loss."""
    import torch

    limit = max_context(model)
    examples = [truncate(tokenize_conversation(tokenizer, conv), limit) for conv in conversations]
    stats = np.zeros((len(examples), 2), dtype=np.float64)
    device = model_device(model)
    with progress_bar(description, len(examples)) as advance, torch.inference_mode():
        for batch in token_budget_batches([len(e.input_ids) for e in examples], token_budget):
            ids, mask, labels = right_pad([examples[i] for i in batch], tokenizer.pad_token_id)
            sums, counts = summed_nll(model, ids.to(device), mask.to(device), labels.to(device))
            for row, i in enumerate(batch):
                stats[i] = (sums[row], counts[row])
            advance(len(batch))
    return stats
