"""What every baseline script shares: the same examples as tunewright, step timing, memory, the result JSON.

The baselines train with stock `transformers.Trainer` / TRL; only the data preparation is
tunewright's (`prepare_data`), so every tool trains the same tokens with the same completion-only
masks and truncation, and the comparison is about the training engine alone.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

IGNORE_INDEX = -100


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="smollm2-135m-instruct", help="tunewright model spec (alias, HF folder, .gguf, hub id)")
    p.add_argument("--data", default="examples/stdlib-qa/train.jsonl")
    p.add_argument("--validation", default=None, help="validation file; its token-weighted loss is reported after training")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps")
    p.add_argument("--micro-batch", type=int, default=8, help="examples (or packed rows) per step")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="split each step's --micro-batch examples into this many accumulated forward passes")
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop after this many seconds of training steps (the result says how many steps ran)")
    p.add_argument("--out", required=True, help="result JSON path")
    return p


def setup_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def load_examples(model: str, data: str, validation: str | None, max_len: int):
    """(model folder, tokenizer, train examples, validation examples) exactly as `tunewright train` sees them."""
    from tunewright.config import load_config
    from tunewright.data import prepare_data
    from tunewright.models import load_tokenizer, local_model_dir

    model_dir = local_model_dir(model)
    tokenizer = load_tokenizer(model_dir)
    overrides = [f"data.max_seq_len={max_len}"] + ([f"data.validation={validation}"] if validation else [])
    cfg = load_config(model=model, overrides=overrides + [f"data.train={data}"])
    prepared = prepare_data(cfg, tokenizer)
    return model_dir, tokenizer, prepared.train, prepared.validation


def load_lora_model(model_dir: str, r: int = 16, alpha: float = 32, dropout: float = 0.05, dtype: torch.dtype = torch.float32,
                    attn_implementation: str | None = None):
    """The base (fp32 unless told) from the plain HF folder plus PEFT LoRA on every linear layer, as users set it up."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn_implementation)
    model.config.use_cache = False  # no KV cache while training (also what keeps packed rows apart)
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def peak_memory_bytes() -> int:
    """Peak allocated on CUDA; peak resident set size of this process on CPU (Linux reports KiB)."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class BatchCounter:
    """Wraps a collator and records real / padded / trained tokens of each batch it builds."""

    def __init__(self, collator, pad_id: int):
        self.collator = collator
        self.pad_id = pad_id
        self.batches: list[dict] = []

    def __call__(self, features):
        batch = self.collator(features)
        ids, labels = batch["input_ids"], batch["labels"]
        # padding-free batches (TRL packing) have no attention mask and no padding
        real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(ids.numel())
        # trained tokens: label positions the causal shift keeps (the first position is never a target)
        trained = int((labels[:, 1:] != IGNORE_INDEX).sum())
        self.batches.append({"real": real, "padded": int(ids.numel()), "trained": trained})
        return batch


def step_timer(max_seconds: float | None = None):
    """A TrainerCallback that times each optimizer step (forward, backward, clip, optimizer) and records its loss.

    With `max_seconds`, training stops after the step that crosses it: a tool far slower than the
    others still reports its rate over the steps it finished.
    """
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self.losses: list[float] = []
            self._t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._t0)
            if max_seconds is not None and sum(self.seconds) >= max_seconds:
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return StepTimer()


@torch.no_grad()
def token_weighted_loss(model, examples, batch_size: int = 8, pad_id: int = 0) -> float | None:
    """Validation loss the way tunewright reports it: summed CE over all trained tokens / their count."""
    if not examples:
        return None
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        width = max(len(e.input_ids) for e in chunk)
        ids = torch.tensor([e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in chunk])
        labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e.labels)) for e in chunk])
        mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in chunk])
        device = next(model.parameters()).device  # Trainer moved the model to the GPU where there is one
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
        target = labels[:, 1:].to(device)
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum",
                                                   ignore_index=IGNORE_INDEX).item()
        count += int((target != IGNORE_INDEX).sum())
    model.train()
    return total / max(count, 1)


def attention_length_stats(examples) -> dict:
    """Sum of lengths and of squared lengths: the attention term of the FLOP formula needs E[L^2]/E[L]."""
    lengths = [len(e.input_ids) for e in examples]
    return {"sum_len": sum(lengths), "sum_len_sq": sum(n * n for n in lengths), "examples": len(lengths)}


def write_result(path: str, tool: str, timer, counter: BatchCounter, val_loss: float | None, extra: dict,
                 peak: int | None = None, grad_accum: int = 1) -> dict:
    """The result JSON every runner writes; step 1 (allocator and thread warm-up) is reported apart.

    `peak`: the memory peak taken right after training, so the validation pass does not count.
    `grad_accum`: collated batches per optimizer step (their counts are summed per step).
    """
    steps = len(timer.seconds)
    built = counter.batches[:steps * grad_accum]  # the dataloader may have built batches ahead
    batches = [{k: sum(b[k] for b in built[i:i + grad_accum]) for k in ("real", "padded", "trained")}
               for i in range(0, len(built), grad_accum)]
    real = [b["real"] for b in batches]
    padded = [b["padded"] for b in batches]
    timed = slice(1, None) if steps > 1 else slice(0, None)
    seconds = sum(timer.seconds[timed])
    result = {
        "tool": tool,
        "steps": steps,
        "train_seconds": round(sum(timer.seconds), 3),
        "timed_seconds": round(seconds, 3),
        "first_step_seconds": round(timer.seconds[0], 3) if steps else None,
        "real_tokens": sum(real),
        "padded_tokens": sum(padded),
        "trained_tokens": sum(b["trained"] for b in batches),
        "timed_real_tokens": sum(real[timed]),
        "timed_trained_tokens": sum(b["trained"] for b in batches[timed]),
        "tokens_per_s": round(sum(real[timed]) / seconds, 2) if seconds else 0.0,
        "pad_share": round(1 - sum(real) / sum(padded), 4) if sum(padded) else 0.0,
        "peak_memory_bytes": peak if peak is not None else peak_memory_bytes(),
        "memory_kind": "cuda_max_allocated" if torch.cuda.is_available() else "cpu_max_rss",
        "final_train_loss": timer.losses[-1] if timer.losses else None,
        "final_eval_loss": val_loss,
        "threads": torch.get_num_threads(),
        "versions": _versions(),
        "argv": sys.argv,
        **extra,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("tool", "steps", "tokens_per_s", "pad_share", "peak_memory_bytes", "final_eval_loss")}))
    return result


def _versions(packages: tuple[str, ...] = ("torch", "transformers", "peft", "trl", "accelerate")) -> dict:
    """Installed versions of `packages`; the ones not installed are left out."""
    import importlib.metadata as md

    out = {}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def quiet() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()


def per_device_batch(args) -> int:
    """Examples per forward pass: the step's examples split into `--grad-accum` passes (same examples per step)."""
    if args.grad_accum < 1 or args.micro_batch % args.grad_accum:
        raise SystemExit(f"--grad-accum {args.grad_accum} must divide --micro-batch {args.micro_batch}")
    return args.micro_batch // args.grad_accum


def shared_training_args(args, output_dir: str) -> dict:
    """The TrainingArguments every baseline shares, matching tunewright's loop (fp32, cosine, 3% warm-up)."""
    import math

    import torch

    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": per_device_batch(args),
        "gradient_accumulation_steps": args.grad_accum,
        "max_steps": args.steps,
        "learning_rate": args.lr,
        "lr_scheduler_type": "cosine",
        "warmup_steps": math.ceil(0.03 * args.steps),  # what tunewright does with warmup_ratio 0.03
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": [],
        "seed": args.seed,
        "use_cpu": not torch.cuda.is_available(),
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
