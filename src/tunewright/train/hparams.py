"""`auto` hyperparameters, chosen from data size, method, model size and hardware.

The rules (also in the README):
- epochs: 3 under 1,000 examples, 2 under 10,000, else 1 (small sets need repeats; big ones overfit).
- learning_rate: 2e-4 for LoRA/DoRA/QLoRA, 1e-4 for freeze, 2e-5 for full (1e-5 above 1B parameters).
  Preference objectives (dpo, orpo) use a tenth of that, about: 5e-5 for LoRA/DoRA/QLoRA, 2e-5 for
  freeze, 5e-6 for full (2e-6 above 1B). Why lower: SFT moves the model towards fixed targets, while
  DPO's loss has no floor on the log-probs themselves: it pushes the chosen and rejected answers apart,
  and a large step lowers the log-probability of both (the chosen answer too) and drifts far from
  the reference it is meant to stay near (the KL term beta only holds it back through the loss's
  curvature). Published recipes train full models at 5e-7 to 1e-6 (DPO paper, Zephyr; TRL's default
  1e-6) and ORPO at 8e-6, all with batches of 64-128 pairs; our smaller default batches (8-32) take
  noisier steps, so we sit a little above those and keep LoRA's usual ~10x over full fine-tuning.
- preference.beta: 0.1 (DPO paper, TRL and OpenAI's default; ORPO's lambda, same default in TRL).
- batch_size (examples per optimizer step): 8 under 1,000 examples, 16 under 10,000, else 32.
- micro_batch_tokens: 512 on CPU (as fast as 4,096 there, a third less memory), 16,384 on a GPU.
- precision: bf16 on GPUs that support it and on CPUs with avx512_bf16/amx_bf16; fp32 elsewhere
  (bf16 emulated on AVX2 ran ~100x slower than fp32, see docs/performance.md).
- threads: the CPU cores that other processes leave idle when the run starts (at least 1), from
  the machine's CPU time over half a second minus our own (train/cpu_usage.py): an OpenMP thread
  that has to share a core made training 4-5x slower, not 2x.
- eval_every / save_every: about five evaluations and checkpoints per run.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..config import ResolvedRunConfig, RunConfig
from .cpu_usage import idle_cores, measure_busy_elsewhere, usable_cores
from .preference_loss import AUTO_BETA

BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}  # CPU flags of native bf16 matmuls


def auto_epochs(n_examples: int) -> float:
    if n_examples < 1_000:
        return 3
    if n_examples < 10_000:
        return 2
    return 1


def auto_learning_rate(method: str, n_params: int, objective: str = "sft") -> float:
    preference = objective != "sft"
    if method in ("lora", "dora", "qlora"):
        return 5e-5 if preference else 2e-4
    if method == "freeze":
        return 2e-5 if preference else 1e-4
    if preference:
        return 2e-6 if n_params > 1_000_000_000 else 5e-6
    return 1e-5 if n_params > 1_000_000_000 else 2e-5


def auto_batch_size(n_examples: int) -> int:
    if n_examples < 1_000:
        return 8
    if n_examples < 10_000:
        return 16
    return 32


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run in hardware here (emulated bf16 is far slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & BF16_CPU_FLAGS)


def auto_precision(device: torch.device) -> str:
    return "bf16" if native_bf16(device) else "fp32"


def auto_threads(busy_elsewhere: Callable[[], float] = measure_busy_elsewhere) -> int:
    """Cores that other processes leave idle now (never our own start-up's load: see cpu_usage)."""
    return idle_cores(usable_cores(), busy_elsewhere())


def total_steps(cfg: RunConfig, n_examples: int) -> int:
    t = cfg.train
    if t.max_steps:
        return t.max_steps
    per_epoch = max(1, math.ceil(n_examples / t.batch_size))
    return max(1, math.ceil(per_epoch * float(t.epochs)))


def resolve_auto(cfg: RunConfig, n_examples: int, n_params: int, device: torch.device) -> ResolvedRunConfig:
    """A copy of `cfg` with every `auto` replaced by its value (what goes into config.yaml).

    Its type says so: validating it as a ResolvedRunConfig fails on any `auto` left in `train` or `preference`.

    `n_examples` counts preference pairs for dpo / orpo: a step's batch_size is pairs there.
    """
    cfg = cfg.model_copy(deep=True)
    t = cfg.train
    if t.epochs == "auto":
        t.epochs = auto_epochs(n_examples)
    if t.learning_rate == "auto":
        t.learning_rate = auto_learning_rate(cfg.method, n_params, cfg.objective)
    if t.batch_size == "auto":
        t.batch_size = min(auto_batch_size(n_examples), max(1, n_examples))
    if t.micro_batch_tokens == "auto":
        t.micro_batch_tokens = 16_384 if device.type == "cuda" else 512
    if cfg.preference.beta == "auto":
        cfg.preference.beta = AUTO_BETA
    if t.precision == "auto":
        t.precision = auto_precision(device)
    steps = total_steps(cfg, n_examples)
    if t.eval_every == "auto":
        t.eval_every = max(1, steps // 5)
    if t.save_every == "auto":
        t.save_every = t.eval_every
    if t.threads == "auto":
        t.threads = auto_threads() if device.type == "cpu" else torch.get_num_threads()
    return ResolvedRunConfig.model_validate(cfg.model_dump())
