"""`learning_rate: auto` measured on the run's own data: a short learning-rate range test.

Smith's range test (2017, fastai's `lr_find`): train a few dozen steps while the learning rate
grows exponentially from far too small to far too large, watch the smoothed training loss, and
take a tenth of the rate at the centre of the curve's bottom (`pick_learning_rate`: the centre, not
the lowest point, which wanders over a flat bottom with the noise of a thread count's rounding).
The weights, gradients and random state are restored afterwards, so the run itself starts from
the model as loaded; the curve is saved as lr_range.png in the run folder, and its numbers (every
step's loss, the smoothed curve, the rates, the bottom and the pick) as lr_range.json, so a pick
can be re-derived offline.

Each step is one micro-batch (micro_batch_tokens) to keep the test to seconds-a-minute on a CPU.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import RunConfig
from .batching import epoch_order
from .hparams import RANGE_TEST_STEPS as STEPS
from .writes import write_text_atomic

RANGES = {"lora": (1e-5, 1e-2), "dora": (1e-5, 1e-2), "qlora": (1e-5, 1e-2), "freeze": (1e-6, 1e-2), "full": (1e-7, 1e-3)}
SMOOTHING = 0.8  # EMA of the loss (bias-corrected); few trained tokens per step make single losses noisy
DIVERGED = 4.0  # stop once the smoothed loss is this many times its minimum
BOTTOM_MARGIN = 0.03  # the curve's bottom: within this share of the loss's fall of its minimum ...
BOTTOM_FLOOR_SHARE = 0.01  # ... and at least this share of the minimum (a curve that hardly fell)


@dataclass
class RangeTest:
    lrs: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)  # loss per trained token of each step, as measured
    losses: list[float] = field(default_factory=list)  # smoothed
    bottom: tuple[float, float] = (0.0, 0.0)  # the rates at the ends of the curve's bottom (`bottom_of_curve`)
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


def bottom_of_curve(lrs: list[float], losses: list[float | None]) -> tuple[float, float]:
    """The rates at either end of the smoothed curve's bottom: where it comes within BOTTOM_MARGIN of its minimum.

    The margin is a share of how far the loss fell (and at least a share of the minimum itself), so noise the
    size of a thread count's bf16 rounding (~1-3% of the loss) cannot move the ends: they sit where the curve
    falls or rises steeply. The ends are interpolated in log-rate between grid points, and a curve that never
    turned up (or fell) ends at its last (first) rate.
    """
    finite = next((k for k, x in enumerate(losses) if x is None or not math.isfinite(x)), len(losses))  # None: json NaN
    lrs, losses = lrs[:finite], losses[:finite]
    best = min(range(len(losses)), key=losses.__getitem__)
    floor = losses[best]
    level = floor + max(BOTTOM_MARGIN * (max(losses[:best + 1]) - floor), BOTTOM_FLOOR_SHARE * floor)
    low = best
    while low > 0 and losses[low - 1] <= level:
        low -= 1
    high = best
    while high < len(losses) - 1 and losses[high + 1] <= level:
        high += 1
    return (_crossing(lrs, losses, low, low - 1, level) if low > 0 else lrs[low],
            _crossing(lrs, losses, high, high + 1, level) if high < len(losses) - 1 else lrs[high])


def _crossing(lrs: list[float], losses: list[float], inside: int, outside: int, level: float) -> float:
    """The rate between two neighbouring grid points where the loss crosses `level`, linear in log-rate."""
    share = (level - losses[inside]) / (losses[outside] - losses[inside])
    return lrs[inside] * (lrs[outside] / lrs[inside]) ** share


def pick_learning_rate(lrs: list[float], losses: list[float | None]) -> tuple[float, str]:
    """A tenth of the rate at the centre (in log-rate) of the smoothed curve's bottom, see `bottom_of_curve`.

    fastai's lr_min rule took a tenth of the rate at the single lowest point; on a flat-bottomed curve that
    point wanders over the bottom with noise (on stdlib-modules, 4.9e-4 with 1 thread, 7.9e-4 with 2: two grid
    points). The bottom's ends do not wander, so neither does their centre. A tenth, as before: the bottom is
    already where steps start to be too large for a whole run. fastai's other suggestions read the curve's
    slope (steep, slide), which noise moves more than the curve, or a point down its longest falling run
    (valley), a rate nothing here was compared with. On a sharp minimum the centre is the minimum.
    """
    low, high = bottom_of_curve(lrs, losses)
    lr = float(f"{math.sqrt(low * high) / 10:.1e}")
    return lr, (f"{lr:g}: range test on this data ({len(losses)} steps), the smoothed loss's bottom spans "
                f"lr {low:.1e} to {high:.1e}; a tenth of its centre (lr_range.png, lr_range.json)")


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
    result = RangeTest()
    raw = result.raw
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
    if result.losses and math.isfinite(result.losses[0]):  # the rule reads the curve up to its first NaN
        result.bottom = bottom_of_curve(result.lrs, result.losses)
        result.chosen, result.reason = pick_learning_rate(result.lrs, result.losses)
    result.seconds = time.perf_counter() - started
    return result


def plot_range_test(result: RangeTest, out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(result.lrs, result.raw, linewidth=0.8, alpha=0.35, color="tab:blue", label="training loss of each step")
    ax.plot(result.lrs, result.losses, linewidth=1.4, color="tab:blue", label="smoothed training loss")
    ax.axvspan(*result.bottom, color="tab:green", alpha=0.15, label="its bottom")
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


def range_test_record(result: RangeTest) -> dict:
    """Everything needed to re-derive the pick offline (lr_range.json); a non-finite loss is written as null."""
    def finite_or_none(xs: list[float]) -> list[float | None]:
        return [x if math.isfinite(x) else None for x in xs]

    return {"lrs": result.lrs, "raw_losses": finite_or_none(result.raw), "smoothed_losses": finite_or_none(result.losses),
            "smoothing": SMOOTHING, "bottom": list(result.bottom), "chosen": result.chosen, "reason": result.reason,
            "seconds": round(result.seconds, 2)}


def range_test_applies(cfg: RunConfig, processes: int) -> bool:
    """SFT with a method we have a range for, in one process (preference losses keep their rule)."""
    return cfg.train.lr_range_test and cfg.objective == "sft" and cfg.method in RANGES and processes == 1


def measure_learning_rate(model, examples: list, cfg: RunConfig, accelerator, pad_id: int, run_dir: Path) -> tuple[RunConfig, str] | None:
    """The run's config with the range test's learning rate, and its reason; None when it cannot decide."""
    from .loop import TokenLoss, _batches, micro_batch_loss

    module = TokenLoss(model, chunked=cfg.train.chunked_loss).to(accelerator.device)
    params = [p for p in model.parameters() if p.requires_grad]
    device = accelerator.device

    def loss_of(mb):
        return micro_batch_loss(module, mb, device)

    was_training = model.training
    model.train()
    result = run_range_test(loss_of, examples, cfg, lambda ids: _batches([examples[i] for i in ids], cfg, pad_id),
                            params, device, accelerator.autocast)
    model.train(was_training)
    if not result.chosen:
        return None
    if accelerator.is_main_process:
        plot_range_test(result, Path(run_dir) / "lr_range.png")
        write_text_atomic(Path(run_dir) / "lr_range.json", json.dumps(range_test_record(result), indent=1, allow_nan=False))
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"learning_rate": result.chosen})})
    return cfg, f"{result.reason}; {result.seconds:.0f} s"
