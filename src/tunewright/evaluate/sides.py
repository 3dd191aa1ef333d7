"""The models an evaluation compares: the tuned model and, when asked, its base.

A LoRA/DoRA run needs only one copy of the weights: the base answers come from the same PEFT model
inside `disable_adapter()`. A full fine-tune has no adapter to switch off, so its base is loaded
separately. A plain model has no base at all.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

from ..errors import UserError
from ..models import describe_run, load_for_inference

TUNED, BASE = "tuned", "base"


@dataclass
class Side:
    """One model whose answers get scored, and how to switch it on."""

    key: str  # "tuned" (the model under evaluation) or "base"
    label: str  # shown in tables: the run name or the base model spec
    model: object
    tokenizer: object
    adapter_off: bool = False  # the base side of a PEFT model: same weights, adapter disabled

    @contextmanager
    def active(self) -> Iterator[object]:
        """The model in eval mode (adapter off for a PEFT base); the previous training mode comes back after."""
        was_training = getattr(self.model, "training", False)
        self.model.eval()
        try:
            with (self.model.disable_adapter() if self.adapter_off else nullcontext()):
                yield self.model
        finally:
            if was_training:
                self.model.train()


def is_peft_model(model) -> bool:
    return callable(getattr(model, "disable_adapter", None)) and hasattr(model, "peft_config")


def inference_device() -> str:
    """The GPU when there is one: loading puts models on the CPU, where generation is slow."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_compare_base(run_or_model: str, compare_base: bool | None) -> bool:
    """Compare by default for runs (they record their base), not for plain models."""
    return describe_run(run_or_model) is not None if compare_base is None else compare_base


def load_sides(run_or_model: str, compare_base: bool, flag: str = "--compare-base") -> list[Side]:
    """Load what `run_or_model` names, plus its base when comparing; base first when present."""
    run = describe_run(run_or_model)
    if compare_base and run is None:
        raise UserError(
            f"'{run_or_model}' is a plain model, so there is no base model to compare it with",
            f"pass a run directory (it records its base model), or drop {flag}",
        )
    if compare_base and not run.get("base"):
        raise UserError(f"run '{run_or_model}' does not say which base model it was trained from",
                        f"add `model: <base>` to its config.yaml, or drop {flag}")
    loaded = load_for_inference(run_or_model)
    loaded.model.to(inference_device())
    tuned = Side(TUNED, loaded.name, loaded.model, loaded.tokenizer)
    if not compare_base:
        return [tuned]
    return [base_side(tuned.model, tuned.tokenizer, loaded.base_spec), tuned]


def base_side(model, tokenizer, base_spec: str) -> Side:
    """The base to compare with: the adapter switched off when there is one, else a separate load."""
    if is_peft_model(model):
        return Side(BASE, base_spec, model, tokenizer, adapter_off=True)
    base = load_for_inference(base_spec)
    base.model.to(next(model.parameters()).device)  # beside the tuned model (a GPU after training)
    return Side(BASE, base_spec, base.model, _shared_template(base.tokenizer, tokenizer))


def _shared_template(base_tokenizer, tuned_tokenizer):
    """Prompt the base with the tuned model's chat template, so both see identical prompts."""
    template = getattr(tuned_tokenizer, "chat_template", None)
    if template:
        base_tokenizer.chat_template = template
    return base_tokenizer
