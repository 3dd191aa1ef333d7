"""The training loop: one function, read top to bottom, the same for every method and objective.

Gradient accumulation divides the summed loss of every micro-batch by the number of trained
tokens in the whole optimizer step, so 8 examples in one pass and 2 x 4 accumulated give the
same gradient (a per-micro-batch mean, as many tools use, weights short examples too much).
Preference objectives (objectives.py) divide the summed pair losses by the step's pairs instead.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ResolvedRunConfig
from ..data.templates import TokenizedExample
from ..errors import UserError
from . import checkpoint as ckpt
from . import distributed
from .batching import (
    MicroBatch,
    idle_micro_batch,
    micro_batches,
    process_share,
    step_example_ids,
    steps_per_epoch,
)
from .hparams import total_steps
from .loss import (
    head_parts,
    select_trained_positions,
    token_loss_sum,
    token_losses_and_hits,
)
from .metrics_log import append_metrics, metrics_path, truncate_metrics
from .progress import TrainProgress, peak_memory_bytes
from .state import LoopResult, TrainState
from .validation import (
    LossSettings,
    ScoredBatch,
    exact_match,
    example_loss_sums,
    mean_loss,
    scored_batches,
    token_accuracy,
)


class TrainingDiverged(UserError):
    """Loss became NaN or infinite: stop, keep the last good checkpoint."""


class TokenLoss(torch.nn.Module):
    """A causal LM whose forward returns the summed cross-entropy over trained tokens.

    Wrapping (rather than calling the backbone from outside) keeps DDP/FSDP hooks in the path.
    """

    def __init__(self, model, chunked: bool = True):
        super().__init__()
        self.model = model
        parts = head_parts(model, chunked)
        self.fast = parts is not None
        # a plain tuple, so the backbone is not registered (and its parameters listed) twice
        self._parts = parts or (None, None)

    def forward(self, input_ids, position_ids, labels, seq_ids=None, n_seqs: int = 0, weights=None):
        """The summed loss; with `seq_ids` (B, T) (no gradient), (n_seqs, 2) sums per sequence instead.

        `weights` (B, T), when given, scales each label's loss (MicroBatch.weights).
        """
        if seq_ids is not None:
            return self._per_sequence(input_ids, position_ids, labels, seq_ids, n_seqs)
        if self.fast:
            backbone, head = self._parts
            hidden = backbone(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
            h, targets = select_trained_positions(hidden, labels)
            row_weights = None if weights is None else weights[:, 1:][labels[:, 1:] != -100]
            return token_loss_sum(h, head.weight, targets, head.bias, row_weights=row_weights)
        logits = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
        losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), reduction="none", ignore_index=-100)
        return losses.sum() if weights is None else (losses * weights[:, 1:].flatten()).sum()

    def _per_sequence(self, input_ids, position_ids, labels, seq_ids, n_seqs: int) -> torch.Tensor:
        """(n_seqs, 2): each sequence's summed NLL and how many of its targets are the greedy choice."""
        keep = labels[:, 1:] != -100
        if self.fast:
            backbone, head = self._parts
            hidden = backbone(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
            h, targets = select_trained_positions(hidden, labels)
            losses, hits = token_losses_and_hits(h, head.weight, targets, head.bias)
        else:
            logits = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[:, :-1][keep].float()
            targets = labels[:, 1:][keep]
            losses, hits = F.cross_entropy(logits, targets, reduction="none"), logits.argmax(dim=-1) == targets
        per_token = torch.stack([losses, hits.float()], dim=1)
        return torch.zeros(n_seqs, 2, dtype=torch.float32, device=losses.device).index_add(0, seq_ids[:, 1:][keep], per_token)


def micro_batch_loss(module, mb: MicroBatch, device) -> torch.Tensor:
    """A TokenLoss module's summed (weighted) loss of one training micro-batch: the loop's and the range test's."""
    weights = None if mb.weights is None else mb.weights.to(device)
    return module(mb.input_ids.to(device), mb.position_ids.to(device), mb.labels.to(device), weights=weights)


def make_scheduler(optimizer, name: str, warmup: int, total: int):
    from transformers import get_scheduler

    return get_scheduler(name if name != "constant" else "constant_with_warmup", optimizer, num_warmup_steps=warmup, num_training_steps=total)


def make_optimizer(params, lr: float, weight_decay: float, device: torch.device):
    fused = device.type == "cuda"  # fused AdamW has a CUDA kernel; on CPU the foreach path is the fast one
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def _batches(examples: list[TokenizedExample], cfg: ResolvedRunConfig, pad_id: int) -> list[MicroBatch]:
    budget = cfg.train.micro_batch_tokens
    # rows as long as the budget allows (short rows keep attention cheap), never shorter than an example
    row_len = max(min(cfg.data.max_seq_len, budget), max((len(e.input_ids) for e in examples), default=1))
    return micro_batches(examples, pad_id, budget, cfg.data.packing, row_len, cfg.data.prompt_loss_weight)


def validation_metrics(loss_module, batches: list[ScoredBatch], device) -> dict[str, float]:
    """Validation: mean loss per trained token (validation.py: the same function `tunewright eval` uses), the
    share of answer tokens that are the greedy choice, and the share of examples whose every answer token is."""
    n_examples = sum(len(sb.example_ids) for sb in batches)
    sums = example_loss_sums(loss_module, batches, n_examples, device)
    return {"eval_loss": mean_loss(sums), "eval_token_accuracy": token_accuracy(sums), "eval_exact_match": exact_match(sums)}


class TokenObjective:
    """SFT: cross-entropy summed over a micro-batch's trained tokens; a step divides by its trained tokens."""

    per_token = True

    def __init__(self, model, cfg: ResolvedRunConfig, pad_id: int):
        self.cfg, self.pad_id = cfg, pad_id
        self.module = TokenLoss(model, chunked=cfg.train.chunked_loss)
        self.data: dict[str, list] = {"train": [], "validation": []}

    def prepare(self, module, accelerator, run_dir: Path, train: list, validation: list) -> None:
        self.data = {"train": train, "validation": validation}

    def batches(self, split: str, ids: list[int]) -> list[MicroBatch]:
        return _batches([self.data[split][i] for i in ids], self.cfg, self.pad_id)

    def validation_batches(self, ids: list[int]) -> list[ScoredBatch]:
        """Validation examples `ids` as the loss scores them, each token tagged with its example."""
        return scored_batches([self.data["validation"][i] for i in ids], self.pad_id, LossSettings.of(self.cfg))

    def idle(self) -> MicroBatch:
        return idle_micro_batch(self.pad_id)

    def weight(self, mb: MicroBatch) -> int:
        return mb.trained_tokens

    def loss(self, module, mb: MicroBatch, device) -> tuple[torch.Tensor, None]:
        return micro_batch_loss(module, mb, device), None

    def evaluate(self, module, batches: list[ScoredBatch], device) -> dict:
        return validation_metrics(module, batches, device)

    def step_metrics(self, accelerator, stats, weight: int) -> dict:
        return {}


def make_objective(model, cfg: ResolvedRunConfig, pad_id: int):
    """The loss the loop trains: token cross-entropy for sft, a preference loss on pairs for dpo / orpo."""
    if cfg.objective == "sft":
        return TokenObjective(model, cfg, pad_id)
    from .objectives import PreferenceObjective

    return PreferenceObjective(model, cfg, pad_id)


def _global_sum(accelerator, value: int) -> int:
    if accelerator.num_processes == 1:
        return value
    t = torch.tensor([value], device=accelerator.device)
    return int(accelerator.reduce(t, reduction="sum").item())


def run_training(model, train: list, validation: list, cfg: ResolvedRunConfig,
                 run_dir: Path, accelerator, pad_id: int, resume_from: Path | None = None) -> LoopResult:
    """Train `model` in place on `train` (examples, or PreferencePairs for dpo / orpo); evaluate, checkpoint and log."""
    t = cfg.train
    device = accelerator.device
    total = total_steps(cfg, len(train))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, t.learning_rate, t.weight_decay, device)
    scheduler = make_scheduler(optimizer, t.scheduler, math.ceil(t.warmup_ratio * total), total)
    objective = make_objective(model, cfg, pad_id)
    loss_module, optimizer = accelerator.prepare(objective.module, optimizer)
    params = [p for p in loss_module.parameters() if p.requires_grad]  # FSDP replaced them with shards
    loss_module.train()
    # before a resume loads a checkpoint: full/freeze DPO's reference log-probs come from the base weights
    objective.prepare(loss_module, accelerator, run_dir, train, validation)

    state = TrainState()
    best_weights = None  # the trainable weights at the best evaluation, kept for early stopping
    if resume_from is not None:
        resumed = ckpt.load_resumable(run_dir, resume_from, model, optimizer, scheduler, report=accelerator.is_main_process)
        state = resumed.trainer_state  # totals cover the whole run, resumed or not
        best_weights = _resumed_best_weights(resumed) if t.early_stopping_patience else None
    metrics_file = metrics_path(run_dir)
    truncate_metrics(metrics_file, state.step)
    val_batches = objective.validation_batches(validation_ids(len(validation), t.eval_examples, t.seed)) if validation else []
    result = LoopResult(state)
    rank, world = accelerator.process_index, accelerator.num_processes
    progress = TrainProgress(total, start=state.step, enabled=accelerator.is_main_process)

    with progress:
        while state.step < total:
            started = time.perf_counter()
            _, ids = step_example_ids(len(train), t.batch_size, t.seed, state.step)  # the batch after `state.step` done
            # a process whose share is empty (a last step smaller than the world) still runs one zero-weight
            # pass: DDP's gradient all-reduce waits for every process
            mbs = objective.batches("train", process_share(ids, rank, world)) or [objective.idle()]
            step_weight = _global_sum(accelerator, sum(objective.weight(mb) for mb in mbs))  # tokens, or pairs
            step_trained = step_weight if objective.per_token else _global_sum(accelerator, sum(mb.trained_tokens for mb in mbs))
            loss_sum = torch.zeros((), device=device)
            stats = None
            for k, mb in enumerate(mbs):
                with distributed.micro_batch_sync(accelerator, loss_module, last=k == len(mbs) - 1):
                    mb_loss, mb_stats = objective.loss(loss_module, mb, device)
                    # DDP averages gradients over processes, so scale by world size to keep a per-token (per-pair) mean
                    accelerator.backward(mb_loss * world / max(step_weight, 1))
                loss_sum += mb_loss.detach().float()
                if mb_stats is not None:
                    stats = mb_stats if stats is None else stats + mb_stats
            step_loss = _global_sum_float(accelerator, loss_sum) / max(step_weight, 1)
            if not math.isfinite(step_loss):
                raise _diverged(step_loss, state.step + 1, run_dir)
            grad_norm = accelerator.clip_grad_norm_(params, t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - started

            real = _global_sum(accelerator, sum(mb.real_tokens for mb in mbs))
            state.step += 1
            state.real_tokens += real
            state.trained_tokens += step_trained
            state.padded_tokens += _global_sum(accelerator, sum(mb.padded_tokens for mb in mbs))
            state.train_seconds += elapsed
            row = {"step": state.step, "epoch": round(state.step / steps_per_epoch(len(train), t.batch_size), 4),
                   "loss": step_loss, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                   "tokens": state.real_tokens, "tokens_per_s": real / max(elapsed, 1e-9),
                   **objective.step_metrics(accelerator, stats, step_weight)}
            if val_batches and (state.step % t.eval_every == 0 or state.step == total):
                row.update(objective.evaluate(loss_module, val_batches, device))
                if state.record_eval(row, t.best_metric) and t.early_stopping_patience:
                    best_weights = _cpu_copy(accelerator.unwrap_model(model))
            result.final_loss = step_loss
            result.final_eval_loss = row.get("eval_loss", result.final_eval_loss)
            if accelerator.is_main_process and (state.step % t.log_every == 0 or state.step == total or "eval_loss" in row):
                append_metrics(metrics_file, row)
                accelerator.log(row, step=state.step)
            progress.update(row)
            if state.step % t.save_every == 0 and state.step < total:
                _save(run_dir, model, optimizer, scheduler, state, t.save_total_limit, accelerator, best_weights)
            if t.early_stopping_patience and state.evals_without_gain >= t.early_stopping_patience:
                result.stopped_early = True
                break

    if best_weights is not None and state.best_step != state.step:
        # early stopping means "the best weights": not the ones after `patience` worse evaluations,
        # nor those at the end of a run whose best evaluation came earlier
        ckpt.copy_weights(best_weights, accelerator.unwrap_model(model))
        result.weights_step = state.best_step
    result.peak_memory_bytes = peak_memory_bytes(device)
    return result


def validation_ids(n: int, sample: int | None, seed: int) -> list[int]:
    """The validation rows the loss pass uses: all, or the same seeded sample at every evaluation."""
    if sample is None or sample >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), sample))


def _diverged(step_loss: float, step: int, run_dir: Path) -> TrainingDiverged:
    last = ckpt.latest_checkpoint(run_dir)
    return TrainingDiverged(
        f"loss became {step_loss} at step {step}; stopped (last good checkpoint: {last or 'none'})",
        "lower train.learning_rate, use train.precision=fp32, or check the data; --resume continues from the checkpoint",
    )


def _global_sum_float(accelerator, value: torch.Tensor) -> float:
    if accelerator.num_processes == 1:
        return value.item()
    return accelerator.reduce(value.reshape(1), reduction="sum").item()


def _cpu_copy(model) -> dict[str, torch.Tensor]:
    """The trainable weights on the CPU: small for adapters, and off the accelerator for full fine-tuning."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def _resumed_best_weights(resumed: ckpt.Checkpoint) -> dict[str, torch.Tensor] | None:
    """The best weights a checkpoint carries: its own when the best evaluation fell on its step."""
    if resumed.best_weights is not None:
        return resumed.best_weights
    return resumed.weights if resumed.trainer_state.best_step == resumed.trainer_state.step else None


def _save(run_dir: Path, model, optimizer, scheduler, state: TrainState, keep: int, accelerator,
          best_weights: dict[str, torch.Tensor] | None = None) -> None:
    """checkpoints/step-N for `state.step`; the best checkpoint is never rotated away."""
    gathered = distributed.gather_state(accelerator.unwrap_model(model), optimizer)  # sharded: every process takes part
    if accelerator.is_main_process:
        if state.best_step == state.step:
            state.best_checkpoint = str(Path(run_dir) / "checkpoints" / f"step-{state.step}")
            best_weights = None  # the checkpoint's own weights are the best ones
        ckpt.save_checkpoint(run_dir, state.step, accelerator.unwrap_model(model), optimizer, scheduler, state, best_weights, gathered)
        ckpt.rotate_checkpoints(run_dir, keep, protect=state.best_checkpoint)
    accelerator.wait_for_everyone()
