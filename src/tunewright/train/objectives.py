"""Preference training inside the one training loop: pair micro-batches, the reference model, logged metrics.

The loop asks an objective for micro-batches, a summed loss per micro-batch and the weight that loss
is divided by (trained tokens for SFT, pairs here); everything else (accumulation, checkpoints, exact
resume, early stopping, distribution, logging) is the loop's.

The reference model is never a second copy in memory:
- LoRA / DoRA / QLoRA: the same model with its adapter disabled (peft's `disable_adapter()`), no grad,
  in eval mode, one extra forward per micro-batch;
- full / freeze: reference log-probs of every train and validation pair, computed once before the first
  step (from the base weights, before a resume loads a checkpoint) and kept in the run directory as
  `reference_logps.safetensors`; `--resume` reuses them when the pairs are the same;
- ORPO needs none.
"""
from __future__ import annotations

import hashlib
import os
from array import array
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import ResolvedRunConfig
from . import checkpoint as ckpt
from .batching import PairMicroBatch, idle_pair_micro_batch, pair_micro_batches
from .methods import is_adapter_method
from .preference_loss import (
    STAT_NAMES,
    PairLogps,
    SequenceLogps,
    pair_losses,
    pair_stats,
)

REFERENCE_FILE = "reference_logps.safetensors"


class PreferenceObjective:
    """DPO / IPO / ORPO: a micro-batch's loss is the sum of its pair losses; a step divides by its pairs."""

    per_token = False

    def __init__(self, model, cfg: ResolvedRunConfig, pad_id: int):
        self.model, self.cfg, self.pad_id = model, cfg, pad_id
        self.beta = cfg.preference.beta
        self.module = SequenceLogps(model)
        if cfg.objective == "orpo":
            self.reference_kind = "none"
        else:
            self.reference_kind = "adapter" if is_adapter_method(cfg.method) else "table"
        self.data: dict[str, list] = {"train": [], "validation": []}
        self.tables: dict[str, torch.Tensor] = {}

    def prepare(self, module, accelerator, run_dir: Path, train: list, validation: list) -> None:
        """Keep the pairs; for full/freeze DPO, load or compute the reference log-probs (before any step)."""
        self.data = {"train": train, "validation": validation}
        if self.reference_kind == "table":
            self.tables = _reference_tables(self, module, accelerator, Path(run_dir))

    def batches(self, split: str, ids: list[int]) -> list[PairMicroBatch]:
        pairs = self.data[split]
        if not ids:
            return []
        budget = self.cfg.train.micro_batch_tokens
        longest = max(len(pairs[i].chosen.input_ids) + len(pairs[i].rejected.input_ids) for i in ids)
        row_len = max(min(self.cfg.data.max_seq_len, budget), longest)
        mbs = pair_micro_batches(pairs, ids, self.pad_id, budget, self.cfg.data.packing, row_len,
                                 share_prompt=self.cfg.preference.shared_prompt)
        if split in self.tables:
            for mb in mbs:
                mb.reference = self.tables[split][mb.pair_ids]
        return mbs

    def validation_batches(self, ids: list[int]) -> list[PairMicroBatch]:
        return self.batches("validation", ids)

    def idle(self) -> PairMicroBatch:
        mb = idle_pair_micro_batch(self.pad_id)
        mb.reference = torch.zeros(0, 2)
        return mb

    def weight(self, mb: PairMicroBatch) -> int:
        return len(mb.pair_ids)

    def loss(self, module, mb: PairMicroBatch, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed loss of the micro-batch's pairs, and their summed statistics (STAT_NAMES)."""
        args = mb.model_args(device)
        # the reference first: its no-grad pass then never runs while the policy's activations are held
        reference = self._reference(module, mb, args, device)
        policy = PairLogps.from_interleaved(module(*args), mb.sequence_tokens)
        p = self.cfg.preference
        terms = pair_losses(self.cfg.objective, p.loss, self.beta, p.sft_weight, policy, reference)
        return terms.losses.sum(), pair_stats(terms, policy)

    def _reference(self, module, mb: PairMicroBatch, args: tuple, device) -> PairLogps | None:
        if self.reference_kind == "none":
            return None
        if self.reference_kind == "table":
            return PairLogps.from_interleaved(mb.reference.to(device).reshape(-1), mb.sequence_tokens)  # (P, 2) rows
        was_training = module.training
        module.eval()  # the reference has no dropout, and this pass draws no random numbers
        with torch.no_grad(), self.model.disable_adapter():
            logps = module(*args)
        module.train(was_training)
        return PairLogps.from_interleaved(logps, mb.sequence_tokens)

    def evaluate(self, module, batches: list[PairMicroBatch], device) -> dict:
        """The objective's mean loss per validation pair (what early stopping watches), margin and accuracy."""
        was_training = module.training
        module.eval()
        total, n = torch.zeros(len(STAT_NAMES)), 0
        with torch.no_grad():
            for mb in batches:
                total += self.loss(module, mb, device)[1].cpu()
                n += len(mb.pair_ids)
        module.train(was_training)
        mean = (total / max(n, 1)).tolist()
        return {"eval_loss": mean[0], "eval_reward_margin": mean[1], "eval_preference_accuracy": mean[2]}

    def step_metrics(self, accelerator, stats: torch.Tensor | None, n_pairs: int) -> dict:
        """The step's mean reward margin, preference accuracy and chosen/rejected log-probs per pair."""
        if stats is None:
            return {}
        if accelerator.num_processes > 1:
            stats = accelerator.reduce(stats.to(accelerator.device), reduction="sum")
        mean = (stats.cpu() / max(n_pairs, 1)).tolist()
        return dict(zip(STAT_NAMES[1:], mean[1:]))


def _pairs_digest(cfg: ResolvedRunConfig, data: dict[str, list]) -> str:
    """What the stored reference log-probs were computed for: the model and every pair's tokens."""
    h = hashlib.sha256(f"{cfg.model}\n{cfg.method}\n".encode())
    for split in ("train", "validation"):
        h.update(f"{split}:{len(data[split])}".encode())
        for pair in data[split]:
            for ex in (pair.chosen, pair.rejected):
                h.update(array("q", ex.input_ids).tobytes() + b"|" + array("q", ex.labels).tobytes())
    return h.hexdigest()


def _reference_tables(objective: PreferenceObjective, module, accelerator, run_dir: Path) -> dict[str, torch.Tensor]:
    """The stored reference log-probs when they match these pairs, else computed now and stored."""
    path = run_dir / REFERENCE_FILE
    digest = _pairs_digest(objective.cfg, objective.data)
    stored = _read_tables(path, digest)
    if stored is not None:
        return stored
    tables = {split: _reference_logps(objective, module, split) for split in ("train", "validation")}
    if accelerator.is_main_process:
        tmp = path.with_name(f".tmp-{path.name}")
        with ckpt.stop_if_write_fails(run_dir, path, partial=tmp):
            save_file({k: v.contiguous() for k, v in tables.items()}, str(tmp), metadata={"digest": digest})
            os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return tables


def _read_tables(path: Path, digest: str) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("digest") != digest:
                return None
        return load_file(str(path))
    except Exception:
        return None


def _reference_logps(objective: PreferenceObjective, module, split: str) -> torch.Tensor:
    """(n, 2) summed log-probs of (chosen, rejected) of every pair under the current (base) weights."""
    pairs = objective.data[split]
    out = torch.zeros(len(pairs), 2)
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for mb in objective.batches(split, list(range(len(pairs)))):
            logps = module(*mb.model_args(device))
            out[mb.pair_ids] = logps.float().cpu().view(-1, 2)
    module.train(was_training)
    return out
