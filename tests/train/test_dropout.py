"""The fast LoRA dropout keeps dropout's maths and follows torch's seed."""
from __future__ import annotations

import torch

from tunewright.train.dropout import FastLoraDropout


def test_keeps_the_expected_share_scales_and_passes_the_gradient_through_the_mask():
    torch.manual_seed(0)
    drop = FastLoraDropout(0.2).train()
    x = torch.ones(400, 500, requires_grad=True)
    y = drop(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.8) < 0.01
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.8))
    y.sum().backward()
    assert torch.equal(x.grad != 0, y != 0)


def test_same_seed_same_mask_and_identity_in_eval():
    drop = FastLoraDropout(0.3).train()
    x = torch.randn(64, 32)
    torch.manual_seed(5)
    a = drop(x)
    torch.manual_seed(5)
    b = drop(x)
    assert torch.equal(a, b) and not torch.equal(a, drop(x))
    assert torch.equal(drop.eval()(x), x)


def test_keep_share_is_exact_at_a_small_rate():
    """16 random bits a value: P(keep) = 0.95 to 2^-16, so a million draws land within a few standard errors (2e-4)."""
    from tunewright.train.dropout import dropout_keep_mask

    torch.manual_seed(0)
    mask = dropout_keep_mask((1000, 1000), 0.05, torch.device("cpu"))
    assert mask.dtype == torch.bool
    assert abs(mask.float().mean().item() - 0.95) < 1e-3
