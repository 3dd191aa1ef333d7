"""`learning_rate: auto` measured on the run's own data: a short learning-rate range test.

Smith's range test (2017, fastai's `lr_find`): train a few dozen steps while the learning rate
grows exponentially from far too small to far too large, watch the smoothed training loss, and
take a tenth of the rate where it was lowest (past that point the steps are too large to help).
The weights, gradients and random state are restored afterwards, so the run itself starts from
the model as loaded; the curve is saved as lr_range.png in the run folder.

Each step is one micro-batch (micro_batch_tokens) to keep the test to seconds-a-minute on a CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import RunConfig
from .batching import epoch_order
from .hparams import RANGE_TEST_STEPS as STEPS

RANGES = {"lora": (1e-5, 1e-2), "dora": (1e-5, 1e-2), "qlora": (1e-5, 1e-2), "freeze": (1e-6, 1e-2), "full": (1e-7, 1e-3)}
SMOOTHING = 0.8  # EMA of the loss (bias-corrected); few trained tokens per step make single losses noisy
DIVERGED = 4.0  # stop once the smoothed loss is this many times its minimum


@dataclass
class RangeTest:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # smoothed
    chosen: float = 0.0
    reason: str = ""
    seconds: float = 0.0


def lr_schedule(method: str, steps: int = STEPS) -> list[float]:
    low, high = RANGES[method]
    return [low * (high / low) ** (k / max(steps - 1, 1)) for k in range(steps)]


def smoothed(raw: list[float], beta: float = SMOOTHING) -> list[float]:
    out, avg = [], 0.0
    for k, x in enumerate(raw, 1):
        avg = beta * avg + (1 - beta) * x
        out.append(avg / (1 - beta ** k))
    return out


def pick_learning_rate(lrs: list[float], losses: list[float]) -> tuple[float, str]:
    """A tenth of the rate at the lowest smoothed loss (fastai's lr_min rule)."""
    best = min(range(len(losses)), key=losses.__getitem__)
    lr = lrs[best] / 10
    return float(f"{lr:.1e}"), (f"{float(f'{lr:.1e}'):g}: range test on this data, loss lowest at lr {lrs[best]:.1e} "
                                f"after {len(losses)} steps; a tenth of that (lr_range.png)")


def run_range_test(loss_module, examples: list, cfg: RunConfig, batches, params, device, autocast) -> RangeTest:
    """Train STEPS micro-batch steps on growing learning rates, then put everything back as it was.

    `batches(ids)` makes micro-batches of training examples (the objective's own batching);
    `loss_module(mb)` returns the summed loss of a micro-batch.
    """
    import time

    started = time.perf_counter()
    saved = [p.detach().clone() for p in params]
    lrs = lr_schedule(cfg.method)
    optimizer = torch.optim.AdamW(params, lr=lrs[0], weight_decay=cfg.train.weight_decay)
    order = epoch_order(len(examples), cfg.train.seed + 1, 0)
    mbs = iter(mb for k in range(0, len(order), 64) for mb in batches(order[k:k + 64]))
    raw, result = [], RangeTest()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for lr in lrs:
            mb = next(mbs, None)
            if mb is None:
                break
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast():
                loss = loss_module(mb) / max(mb.trained_tokens, 1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            raw.append(loss.item())
            result.lrs.append(lr)
            result.losses = smoothed(raw)
            if not math.isfinite(raw[-1]) or result.losses[-1] > DIVERGED * min(result.losses):
                break
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)
    finite = [(lr, x) for lr, x in zip(result.lrs, result.losses) if math.isfinite(x)]
    result.chosen, result.reason = pick_learning_rate(*zip(*finite)) if finite else (0.0, "")
    result.seconds = time.perf_counter() - started
    return result


def plot_range_test(result: RangeTest, out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(result.lrs, result.losses, linewidth=1.4, label="smoothed training loss")
    ax.axvline(result.chosen, color="tab:red", linestyle="--", label=f"chosen {result.chosen:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss per trained token")
    ax.set_title(f"learning-rate range test ({len(result.lrs)} steps, {result.seconds:.0f} s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def range_test_applies(cfg: RunConfig, processes: int) -> bool:
    """SFT with a method we have a range for, in one process (preference losses keep their rule)."""
    return cfg.train.lr_range_test and cfg.objective == "sft" and cfg.method in RANGES and processes == 1


def measure_learning_rate(model, examples: list, cfg: RunConfig, accelerator, pad_id: int, run_dir: Path) -> tuple[RunConfig, str] | None:
    """The run's config with the range test's learning rate, and its reason; None when it cannot decide."""
    from .loop import TokenLoss, _batches

    module = TokenLoss(model, chunked=cfg.train.chunked_loss).to(accelerator.device)
    params = [p for p in model.parameters() if p.requires_grad]
    device = accelerator.device

    def loss_of(mb):
        return module(mb.input_ids.to(device), mb.position_ids.to(device), mb.labels.to(device))

    was_training = model.training
    model.train()
    result = run_range_test(loss_of, examples, cfg, lambda ids: _batches([examples[i] for i in ids], cfg, pad_id),
                            params, device, accelerator.autocast)
    model.train(was_training)
    if not result.chosen:
        return None
    if accelerator.is_main_process:
        plot_range_test(result, Path(run_dir) / "lr_range.png")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"learning_rate": result.chosen})})
    return cfg, f"{result.reason}; {result.seconds:.0f} s"
