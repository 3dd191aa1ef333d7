"""Loss on trained tokens only, without materialising logits for the whole sequence.

Only positions whose next token is trained go through the LM head, so prompt tokens never
cost a (tokens x vocabulary) logits tensor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def select_trained_positions(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states that predict a trained token, and those tokens: (N, H), (N,)."""
    shift_hidden = hidden[:, :-1, :]  # (B, T-1, H): position t predicts token t+1
    shift_labels = labels[:, 1:]
    keep = shift_labels != -100
    return shift_hidden[keep], shift_labels[keep]


def token_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None,
                   chunk_size: int = 1024) -> torch.Tensor:
    """Sum of cross-entropy over N rows of hidden states (N, H) against targets (N,), in fp32."""
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, targets, reduction="sum")
