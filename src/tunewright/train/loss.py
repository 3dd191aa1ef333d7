"""Loss on trained tokens only, without materialising logits for the whole sequence.

Only positions whose next token is trained go through the LM head, and those go through it in
chunks of rows: a (chunk x vocabulary) block of logits exists at a time, never (tokens x
vocabulary). With a 49k (SmolLM2) or 128k (Llama 3) vocabulary the full logits, their softmax and
their gradient are most of a baseline's activation memory.

The gradient is computed in the forward pass, chunk by chunk, while each block of logits is still
in memory (as Liger Kernel's fused linear cross-entropy does): recomputing the logits in backward
would cost one more (chunk x hidden x vocabulary) matmul per chunk. What stays alive between
forward and backward is the gradient for the hidden rows (N x H, the size of the input) and, only
when the LM head itself is trained, one fp32 buffer the size of its weight.
"""
from __future__ import annotations

import torch

IGNORE_INDEX = -100


def head_parts(model, chunked: bool = True) -> tuple | None:
    """(backbone, LM head) when the head is a plain linear layer that can be applied to selected rows only.

    None for heads that need the model's own forward (logit soft-capping, a logit scale, a custom head).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    backbone = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    plain_head = type(head) is torch.nn.Linear and not getattr(base.config, "final_logit_softcapping", None)
    fast = chunked and plain_head and backbone is not None and not hasattr(base.config, "logit_scale")
    return (backbone, head) if fast else None


def select_trained_positions(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states that predict a trained token, and those tokens: (N, H), (N,)."""
    shift_hidden = hidden[:, :-1, :]  # (B, T-1, H): position t predicts token t+1
    shift_labels = labels[:, 1:]
    keep = shift_labels != IGNORE_INDEX
    return shift_hidden[keep], shift_labels[keep]


def _matmul_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype F.linear would use here: autocast's when it is on, else the inputs' common one."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """(n, V) logits in fp32 for one chunk; the matmul runs in the chunk's dtype."""
    logits = h @ w.t()  # (n, V)
    logits = logits.float()
    if b is not None:
        logits += b.float()
    return logits


def _ce_chunks(hidden, weight, bias, targets, chunk_size, want_grads, row_weights=None):
    """Sum of CE over all rows (each times its `row_weights` entry, when given), and (when asked) the gradients.

    Softmax, logsumexp and every gradient are accumulated in fp32; the logits and hidden-gradient
    matmuls run in the matmul dtype, as autocast runs F.linear; the weight gradient (only for a
    trained LM head) is accumulated in fp32.
    """
    want_h, want_w, want_b = want_grads
    dtype = _matmul_dtype(hidden, weight)
    w = weight.to(dtype)
    n_rows = hidden.shape[0]
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if want_h else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
    grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if want_b else None
    for start in range(0, n_rows, chunk_size):
        end = min(start + chunk_size, n_rows)
        h = hidden[start:end].to(dtype)  # (n, H)
        t = targets[start:end]
        valid = t != IGNORE_INDEX
        scale = valid if row_weights is None else valid * row_weights[start:end]
        t_safe = torch.where(valid, t, torch.zeros_like(t)).unsqueeze(1)  # (n, 1)
        logits = _chunk_logits(h, w, bias)  # (n, V) fp32: the only vocabulary-sized block alive
        lse = torch.logsumexp(logits, dim=1)  # (n,)
        target_logit = logits.gather(1, t_safe).squeeze(1)
        total += ((lse - target_logit) * scale).sum()
        if not (want_h or want_w or want_b):
            continue
        # d(sum CE)/d(logits) = softmax - one_hot(target), zero for ignored rows; built in place
        probs = logits.sub_(lse.unsqueeze(1)).exp_()
        probs.scatter_add_(1, t_safe, torch.full_like(target_logit, -1.0).unsqueeze(1))
        if row_weights is not None or not bool(valid.all()):
            probs.mul_(scale.unsqueeze(1))
        if want_b:
            grad_b += probs.sum(0)
        g = probs.to(dtype)
        if want_h:
            grad_h[start:end] = g @ w  # (n, H)
        if want_w:
            grad_w.addmm_(g.t().float(), h.float())  # (V, H), fp32 accumulation across chunks
    return total, grad_h, grad_w, grad_b


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size, row_weights):
        want = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        total, grad_h, grad_w, grad_b = _ce_chunks(hidden, weight, bias, targets, chunk_size, want, row_weights)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        scale = grad_out.float()
        gh = (grad_h * scale).to(h_dtype) if grad_h is not None else None
        gw = (grad_w * scale).to(w_dtype) if grad_w is not None else None
        gb = (grad_b * scale).to(b_dtype) if grad_b is not None else None
        return gh, gw, gb, None, None, None


def token_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None,
                   chunk_size: int = 1024, row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of cross-entropy of `hidden @ weight.T (+ bias)` against `targets`, as an fp32 scalar.

    hidden (N, H), weight (V, H), targets (N,) with -100 rows ignored; `row_weights` (N,) fp32 scales each
    row's loss (prompt tokens trained at a fraction of an answer token's weight). Equal to
    `F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")` while only
    `chunk_size` rows of logits exist at a time. N == 0 gives a zero that is still connected to
    the graph, so `backward()` works on a micro-batch with nothing to train.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if hidden.dim() != 2 or targets.dim() != 1 or hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"expected hidden (N, H) and targets (N,), got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias))
    if not needs_grad:
        with torch.no_grad():
            return _ce_chunks(hidden, weight, bias, targets, chunk_size, (False, False, False), row_weights)[0]
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_size, row_weights)


def _row_ce_chunks(hidden, weight, bias, targets, chunk_size, want_h, hits=None):
    """CE of every row (N,) fp32 and, when asked, d(CE_i)/d(hidden_i) (N, H) fp32, chunk by chunk.

    `hits` (N,) bool, when given, is filled with whether each row's target is its highest logit.
    """
    dtype = _matmul_dtype(hidden, weight)
    w = weight.to(dtype)
    losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if want_h else None
    for start in range(0, hidden.shape[0], chunk_size):
        end = min(start + chunk_size, hidden.shape[0])
        t = targets[start:end].unsqueeze(1)
        logits = _chunk_logits(hidden[start:end].to(dtype), w, bias)  # (n, V) fp32
        lse = torch.logsumexp(logits, dim=1)
        losses[start:end] = lse - logits.gather(1, t).squeeze(1)
        if hits is not None:
            hits[start:end] = logits.argmax(dim=1) == t.squeeze(1)
        if want_h:
            probs = logits.sub_(lse.unsqueeze(1)).exp_()
            probs.scatter_add_(1, t, torch.full_like(lse, -1.0).unsqueeze(1))
            grad_h[start:end] = probs.to(dtype) @ w
    return losses, grad_h


class _ChunkedRowCrossEntropy(torch.autograd.Function):
    """Per-row CE whose gradient for the hidden rows is computed in forward (the head is not trained)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size):
        losses, grad_h = _row_ce_chunks(hidden, weight, bias, targets, chunk_size, ctx.needs_input_grad[0])
        ctx.save_for_backward(grad_h)
        ctx.h_dtype = hidden.dtype
        return losses

    @staticmethod
    def backward(ctx, grad_out):
        (grad_h,) = ctx.saved_tensors
        gh = (grad_h * grad_out.float().unsqueeze(1)).to(ctx.h_dtype) if grad_h is not None else None
        return gh, None, None, None, None


def token_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None,
                 chunk_size: int = 1024) -> torch.Tensor:
    """Cross-entropy of each row of `hidden @ weight.T (+ bias)` against `targets` (no ignored rows): (N,) fp32.

    Preference objectives need a log-prob per token (summed per sequence), not one sum. When the LM head
    is frozen (LoRA, freeze) only `chunk_size` rows of logits exist at a time and what stays alive for
    backward is one (N, H) gradient; a trained head takes the plain path (its weight gradient depends on
    each row's upstream gradient, unknown in forward).
    """
    head_trained = weight.requires_grad or (bias is not None and bias.requires_grad)
    if head_trained and torch.is_grad_enabled():
        logits = torch.nn.functional.linear(hidden, weight, bias).float()
        return torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    if not (torch.is_grad_enabled() and hidden.requires_grad):
        with torch.no_grad():
            return _row_ce_chunks(hidden, weight, bias, targets, chunk_size, False)[0]
    return _ChunkedRowCrossEntropy.apply(hidden, weight, bias, targets, chunk_size)


def token_losses_and_hits(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None,
                          chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row CE (N,) fp32 and whether each target is the row's greedy choice (N,) bool; no gradient.

    What validation reports besides its loss: the share of answer tokens the model would write itself
    (OpenAI's `valid_mean_token_accuracy`), from the same chunks of logits, without generating.
    """
    hits = torch.empty(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    with torch.no_grad():
        losses = _row_ce_chunks(hidden, weight, bias, targets, chunk_size, False, hits)[0]
    return losses, hits
