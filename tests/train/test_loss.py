"""The chunked linear + cross-entropy equals the plain one: loss and gradients, fp32 and bf16."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunewright.train.loss import select_trained_positions, token_loss_sum


def _inputs(n, h, v, seed=0, bias=False, dtype=torch.float32, weight_grad=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float32).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) / h**0.5).to(dtype).requires_grad_(weight_grad)
    b = (torch.randn(v, generator=g) * 0.1).to(dtype).requires_grad_() if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, b, targets


def _reference(hidden, weight, bias, targets):
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None and t.requires_grad])


@pytest.mark.parametrize("n,h,v,chunk", [(1, 8, 11, 4), (7, 16, 50, 3), (64, 32, 97, 64), (100, 24, 300, 33), (5, 8, 20, 1024)])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_equals_full_cross_entropy(n, h, v, chunk, bias):
    hidden, weight, b, targets = _inputs(n, h, v, bias=bias)
    ref = _reference(hidden, weight, b, targets)
    ref_grads = _grads(ref, (hidden, weight, b))
    out = token_loss_sum(hidden, weight, targets, bias=b, chunk_size=chunk)
    out_grads = _grads(out, (hidden, weight, b))
    assert out.dtype == torch.float32 and out.dim() == 0
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    for got, want in zip(out_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_frozen_weight_gets_no_gradient_and_upstream_scale_applies():
    hidden, weight, _, targets = _inputs(30, 16, 40, weight_grad=False)
    (token_loss_sum(hidden, weight, targets, chunk_size=7) / 3.0).backward()
    got = hidden.grad.clone()
    hidden.grad = None
    (_reference(hidden, weight, None, targets) / 3.0).backward()
    torch.testing.assert_close(got, hidden.grad, rtol=1e-5, atol=1e-6)
    assert weight.grad is None


def test_tied_weight_through_an_embedding_gets_both_gradients():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(40, 16)
    ids, targets = torch.randint(0, 40, (25,)), torch.randint(0, 40, (25,))
    token_loss_sum(torch.tanh(emb(ids)), emb.weight, targets, chunk_size=6).backward()
    got = emb.weight.grad.clone()
    emb.weight.grad = None
    _reference(torch.tanh(emb(ids)), emb.weight, None, targets).backward()
    torch.testing.assert_close(got, emb.weight.grad, rtol=1e-5, atol=1e-5)


def test_empty_batch_is_zero_and_still_backpropagates():
    hidden, weight, _, targets = _inputs(0, 8, 20)
    out = token_loss_sum(hidden, weight, targets)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert hidden.grad.shape == (0, 8)
    assert torch.count_nonzero(weight.grad) == 0


def test_ignored_targets_count_for_nothing():
    hidden, weight, _, targets = _inputs(12, 8, 30)
    targets[::3] = -100
    out = token_loss_sum(hidden, weight, targets, chunk_size=5)
    ref = F.cross_entropy(F.linear(hidden, weight), targets, reduction="sum", ignore_index=-100)
    torch.testing.assert_close(out, ref)
    gh, gw = _grads(out, (hidden, weight))
    rh, rw = _grads(ref, (hidden, weight))
    torch.testing.assert_close(gh, rh)
    torch.testing.assert_close(gw, rw)
    assert torch.count_nonzero(gh[::3]) == 0


def test_no_grad_path_returns_the_same_value():
    hidden, weight, b, targets = _inputs(20, 8, 30, bias=True)
    with torch.no_grad():
        out = token_loss_sum(hidden, weight, targets, bias=b, chunk_size=6)
    assert not out.requires_grad
    torch.testing.assert_close(out, _reference(hidden, weight, b, targets).detach())


def test_backward_twice_with_retained_graph_scales_each_time():
    hidden, weight, _, targets = _inputs(9, 8, 13)
    out = token_loss_sum(hidden, weight, targets, chunk_size=4)
    out.backward(retain_graph=True)
    first = hidden.grad.clone()
    out.backward(torch.tensor(2.0))
    torch.testing.assert_close(hidden.grad, 3 * first)


# bf16: both sides run the matmul in bf16 (autocast, or bf16 tensors) and softmax in fp32, so
# they agree closely; against an fp32 reference, the difference is bf16 rounding of the logits.
BF16_VS_FP32_RTOL = 2e-2  # relative, on the loss sum and on gradient norms


def test_bf16_autocast_matches_autocast_reference_and_is_close_to_fp32():
    hidden, weight, _, targets = _inputs(50, 64, 500, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = token_loss_sum(hidden, weight, targets, chunk_size=16)
        ref = _reference(hidden, weight, None, targets)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=5e-3, atol=1e-2)
    (gh, gw), (rh, rw) = _grads(out, (hidden, weight)), _grads(ref, (hidden, weight))
    assert gh.dtype == hidden.dtype and gw.dtype == weight.dtype
    torch.testing.assert_close(gh, rh, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(gw, rw, rtol=2e-2, atol=2e-3)

    fp32 = _reference(hidden, weight, None, targets)
    assert abs(out.item() - fp32.item()) <= BF16_VS_FP32_RTOL * fp32.item()
    fh, _ = _grads(fp32, (hidden, weight))
    assert (gh - fh).norm() <= BF16_VS_FP32_RTOL * fh.norm() * 5  # per-element rounding adds up in norms


def test_bf16_tensors_close_to_fp32():
    hidden, weight, _, targets = _inputs(40, 32, 200, seed=4)
    out = token_loss_sum(hidden.detach().bfloat16().requires_grad_(), weight.detach().bfloat16(), targets, chunk_size=9)
    fp32 = _reference(hidden, weight, None, targets)
    assert out.dtype == torch.float32
    assert abs(out.item() - fp32.item()) <= BF16_VS_FP32_RTOL * fp32.item()


def test_select_trained_positions_shifts_labels():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100]])
    h, t = select_trained_positions(hidden, labels)
    assert t.tolist() == [5, 6, 7]
    torch.testing.assert_close(h, torch.stack([hidden[0, 1], hidden[0, 2], hidden[1, 0]]))


def test_rejects_bad_shapes_and_chunk_size():
    hidden, weight, _, targets = _inputs(4, 8, 10)
    with pytest.raises(ValueError):
        token_loss_sum(hidden, weight, targets, chunk_size=0)
    with pytest.raises(ValueError):
        token_loss_sum(hidden, weight, targets[:3])


@pytest.mark.parametrize("bias", [False, True])
def test_row_weights_scale_each_rows_loss_and_gradient(bias):
    hidden, weight, b, targets = _inputs(40, 16, 60, seed=3, bias=bias)
    targets[5] = -100
    w = torch.rand(40, generator=torch.Generator().manual_seed(4))
    keep = targets != -100
    ref = (F.cross_entropy(F.linear(hidden, weight, b).float()[keep], targets[keep], reduction="none") * w[keep]).sum()
    out = token_loss_sum(hidden, weight, targets, bias=b, chunk_size=7, row_weights=w)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    for got, want in zip(_grads(out, (hidden, weight, b)), _grads(ref, (hidden, weight, b))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
