"""Batched answer generation with the training chat template: left padding, greedy by default.

Prompts are rendered exactly as training rendered them (`generation_prompt_ids`), generation stops
at the template's end-of-turn ids, and batches are formed from prompts of similar length so little
compute goes to padding.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..data.templates import end_of_turn_ids, generation_prompt_ids

progress_console = Console(stderr=True)  # stdout stays clean for --json


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: int  # generated tokens, end-of-turn excluded
    hit_limit: bool  # cut off by max_new_tokens rather than ending its turn


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    batch_size: int = 8
    seed: int = 0


@contextmanager
def progress_bar(description: str, total: int) -> Iterator:
    """A rich progress bar on stderr; yields `advance(k)`."""
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=progress_console, transient=True,
        disable=not progress_console.is_terminal,  # logs and pipes get no bar (and no stray blank lines)
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda k=1: progress.advance(task, k)


def model_device(model):
    return next(model.parameters()).device


def generation_config(tokenizer, settings: SamplingSettings):
    """A fresh GenerationConfig, so a model's own sampling defaults never leak into evaluation."""
    from transformers import GenerationConfig

    sample = settings.temperature > 0
    kwargs = dict(temperature=settings.temperature, top_p=settings.top_p) if sample else {}
    return GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=sample,
        eos_token_id=sorted(end_of_turn_ids(tokenizer)),
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        **kwargs,
    )


def left_pad(batch: list[list[int]], pad_id: int):
    """(input_ids, attention_mask) tensors with the padding on the left, where generation can ignore it."""
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids):] = 1
    return input_ids, mask


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (memory trouble shows at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def decode_answer(tokenizer, new_ids: list[int], stop_ids: set[int], max_new_tokens: int) -> Answer:
    """Cut at the first end-of-turn id and decode; padding after it is dropped with it."""
    cut = next((i for i, t in enumerate(new_ids) if t in stop_ids), None)
    kept = new_ids if cut is None else new_ids[:cut]
    text = tokenizer.decode(kept, skip_special_tokens=True).strip()
    return Answer(text, len(kept), cut is None and len(new_ids) >= max_new_tokens)


def generate_answers(model, tokenizer, prompts: list[list[dict]], settings: SamplingSettings, description: str = "generating") -> list[Answer]:
    """One answer per prompt (a list of chat messages), in the order given."""
    import torch

    prompt_ids = [generation_prompt_ids(tokenizer, messages) for messages in prompts]
    config = generation_config(tokenizer, settings)
    stop_ids = end_of_turn_ids(tokenizer)
    device = model_device(model)
    answers: list[Answer | None] = [None] * len(prompts)
    with progress_bar(description, len(prompts)) as advance, torch.random.fork_rng(), torch.inference_mode():
        torch.manual_seed(settings.seed)  # sampling is reproducible and leaves the caller's RNG alone
        for batch in length_sorted_batches([len(p) for p in prompt_ids], settings.batch_size):
            input_ids, mask = left_pad([prompt_ids[i] for i in batch], tokenizer.pad_token_id)
            out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=config)
            new = out[:, input_ids.shape[1]:].tolist()  # (B, generated)
            for row, i in enumerate(batch):
                answers[i] = decode_answer(tokenizer, new[row], stop_ids, settings.max_new_tokens)
            advance(len(batch))
    return answers  # type: ignore[return-value]
