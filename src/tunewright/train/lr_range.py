"""`learning_rate: auto` measured on the run's own data: a short learning-rate range test.

Smith's range test (2017, fastai's `lr_find`): train a few dozen steps while the learning rate
grows exponentially from far too small to far too large, watch the smoothed training loss, and
take the rate 60% of the way down its fall (`pick_learning_rate`: read on the steep descent, not at the
curve's bottom, whose extent single noisy batches move by 2x). The weights, gradients and random
state are restored afterwards, so the run itself starts from the model as loaded; the curve is saved
as lr_range.png in the run folder, and its numbers (every step's loss, the smoothed curve, the rates,
the levels read and the pick) as lr_range.json, so a pick can be re-derived offline.

Each step is one micro-batch (micro_batch_tokens) to keep the test to seconds-a-minute on a CPU.
"""
from __future__ import annotations

import json
import math
import statistics
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
START_POINTS = 5  # the curve's starting level: the median of its first smoothed points (the first are noisy)
FALL_SHARE = 0.6  # how far down its fall (in log-loss) the curve is read: 0.5 picked 4.4e-4 on one stdlib-modules seed in
# eight and scored 0.821 where 6.6e-4 on the same seed scored 0.858; 0.6 puts all eight picks in 6.8e-4..1.3e-3, where every
# rate run on either task scored level or better (docs/auto.md)
MIN_FALL_OVER_NOISE = 2.5  # a fall (in log-loss) less than this many times the steps' noise places no rate (of
# planted curves with single batches' scatter of 15-50%, 7 of 120 flat ones placed one and 116 of 120 falling ones did)


@dataclass
class RangeTest:
    lrs: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)  # loss per trained token of each step, as measured
    losses: list[float] = field(default_factory=list)  # smoothed
    start: float = 0.0  # the smoothed loss's starting level and minimum (`descent_midpoint`)
    minimum: float = 0.0
    chosen: float = 0.0  # 0: the curve could not place a rate, the fixed rule stands
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


def crossing_rate(lrs: list[float], losses: list[float], inside: int, outside: int, level: float) -> float:
    """The rate between two neighbouring grid points where the loss crosses `level`, linear in log-rate."""
    share = (level - losses[inside]) / (losses[outside] - losses[inside])
    return lrs[inside] * (lrs[outside] / lrs[inside]) ** share


def finite_steps(losses: list[float | None]) -> int:
    """How many losses come before the first non-finite one (None: a NaN as lr_range.json writes it)."""
    return next((k for k, x in enumerate(losses) if x is None or not math.isfinite(x)), len(losses))


def step_noise(raw: list[float | None]) -> float:
    """How far single steps' losses scatter, in log-loss: the median distance from a running median of five
    around each step (robust to the few hard batches that make the noise), as a standard deviation."""
    logs = [math.log(x) for x in raw[:finite_steps(raw)] if x > 0]
    if len(logs) < 5:
        return 0.0
    local = [statistics.median(logs[max(0, k - 2):k + 3]) for k in range(len(logs))]
    return 1.4826 * statistics.median(abs(x - m) for x, m in zip(logs, local))


def level_read(start: float, floor: float) -> float:
    """The loss FALL_SHARE of the way down from `start` to `floor`, in log-loss: where the curve is read."""
    return start * (floor / start) ** FALL_SHARE


def descent_midpoint(lrs: list[float], losses: list[float | None], noise: float = 0.0) -> tuple[float, float, float] | None:
    """The rate where the smoothed loss first comes FALL_SHARE of the way down from its starting level to its minimum.

    The way down is measured in log-loss (at 0.5: the geometric mean of start and minimum); on the descent rather
    than at the bottom. Returns (rate, start, minimum),
    or None when there is no descent to read: the minimum comes among the first START_POINTS steps, or the fall
    is less than MIN_FALL_OVER_NOISE times the steps' `noise` (`step_noise`; 0 when only the smoothed curve is known).
    """
    finite = finite_steps(losses)
    lrs, losses = lrs[:finite], losses[:finite]
    if len(losses) <= START_POINTS:
        return None
    start = statistics.median(losses[:START_POINTS])
    lowest = min(range(len(losses)), key=losses.__getitem__)
    floor = losses[lowest]
    if lowest < START_POINTS or floor <= 0 or math.log(start / floor) < max(MIN_FALL_OVER_NOISE * noise, 1e-3):
        return None
    level = level_read(start, floor)
    k = next(k for k, x in enumerate(losses) if x <= level)
    if k == 0:
        return lrs[0], start, floor
    return crossing_rate(lrs, losses, k, k - 1, level), start, floor


def pick_learning_rate(lrs: list[float], losses: list[float | None], raw: list[float | None] | None = None) -> tuple[float | None, str]:
    """The rate FALL_SHARE of the way down the smoothed curve's fall in log-loss (`descent_midpoint`); None when no fall shows
    above the steps' noise (`step_noise` of the `raw` losses; without them any fall counts).

    Earlier rules read the curve's bottom: fastai's lr_min a tenth of its lowest point (which wanders over a flat
    bottom with noise), then a tenth of the bottom's centre. Over 30 single micro-batches the bottom's extent is
    set by a few batches: on stdlib-modules, seeds 42 and 7 fell to the grid's end (picks 6.2e-4, 6.4e-4) and
    seed 1234's curve rose from 3e-3 on two hard batches (2.8e-4, which scored 4 points lower). Halfway down the
    fall those three agree to x1.05 (6.6e-4 to 6.9e-4), and over eight seeds the picks spread x2.1 against the
    bottom's x2.9 (docs/auto.md); 60% of the way down moves the low ones into the rates that scored well.
    The smoothing (EMA, SMOOTHING) lags the raw loss by ~4 steps, so the pick sits above where the raw loss was halfway down: that lag is part of the
    rule as measured, and why the pick is not divided by ten.
    """
    noise = step_noise(raw) if raw is not None else 0.0
    return described_pick(descent_midpoint(lrs, losses, noise), finite_steps(losses), noise)


def described_pick(midpoint: tuple[float, float, float] | None, steps: int, noise: float) -> tuple[float | None, str]:
    """`descent_midpoint`'s reading as the rate to train with (two digits) and its one-line reason."""
    if midpoint is None:
        return None, (f"range test on this data ({steps} steps): its smoothed loss shows no fall above the steps' noise "
                      f"(x{math.exp(noise):.2f} a step) to read a rate from (lr_range.png)")
    lr, start, floor = midpoint
    lr = float(f"{lr:.1e}")
    return lr, (f"{lr:g}: range test on this data ({steps} steps), where the smoothed loss was {FALL_SHARE:.0%} of "
                f"the way down (in log) from {start:.2f} to {floor:.2f} (lr_range.png, lr_range.json)")


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
        noise = step_noise(raw)
        midpoint = descent_midpoint(result.lrs, result.losses, noise)
        chosen, result.reason = described_pick(midpoint, finite_steps(result.losses), noise)
        result.chosen = chosen or 0.0
        result.start, result.minimum = midpoint[1:] if midpoint else (0.0, 0.0)
    result.seconds = time.perf_counter() - started
    return result


def plot_range_test(result: RangeTest, out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(result.lrs, result.raw, linewidth=0.8, alpha=0.35, color="tab:blue", label="training loss of each step")
    ax.plot(result.lrs, result.losses, linewidth=1.4, color="tab:blue", label="smoothed training loss")
    if result.chosen:
        ax.axhline(result.start, color="tab:gray", linewidth=0.8, linestyle=":", label="its start and minimum")
        ax.axhline(result.minimum, color="tab:gray", linewidth=0.8, linestyle=":")
        ax.axhline(level_read(result.start, result.minimum), color="tab:green", linewidth=0.8,
                   label=f"{FALL_SHARE:.0%} of the way down (log)")
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
            "smoothing": SMOOTHING, "start": result.start, "minimum": result.minimum, "chosen": result.chosen, "reason": result.reason,
            "seconds": round(result.seconds, 2)}


def range_test_applies(cfg: RunConfig, processes: int) -> bool:
    """SFT with a method we have a range for, in one process (preference losses keep their rule)."""
    return cfg.train.lr_range_test and cfg.objective == "sft" and cfg.method in RANGES and processes == 1


def measure_learning_rate(model, examples: list, cfg: RunConfig, accelerator, pad_id: int, run_dir: Path) -> tuple[RunConfig, str] | None:
    """The run's config with the range test's learning rate (or the fixed rule's, when the curve cannot place
    one), and the reason; None when the test has no curve at all (its first loss was not finite)."""
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
    if not result.reason:
        return None
    if accelerator.is_main_process:
        plot_range_test(result, Path(run_dir) / "lr_range.png")
        write_text_atomic(Path(run_dir) / "lr_range.json", json.dumps(range_test_record(result), indent=1, allow_nan=False))
    if not result.chosen:
        return cfg, f"{cfg.train.learning_rate:g}: the fixed rule; {result.reason}; {result.seconds:.0f} s"
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"learning_rate": result.chosen})})
    return cfg, f"{result.reason}; {result.seconds:.0f} s"
