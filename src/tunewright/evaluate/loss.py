"""Loss and perplexity of a model on the reference answers: how likely it finds what a good answer says.

The number is the training loop's validation loss (train/validation.py): the same tokenization
(the run's `train_on` and `max_seq_len`, with its chat template), the same micro-batches and the
same chunked loss, so `tunewright eval` on a run's validation file repeats its last `eval_loss`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from ..data.conversation import Conversation
from ..data.dataset import tokenize_one
from ..train.validation import LossSettings, example_loss_sums, scored_batches
from .generate import model_device, progress_bar

DEFAULT_TOKEN_BUDGET = 1024  # tokens per forward pass where no run says otherwise


def run_config(run_dir: Path | None) -> dict:
    """The run's config.yaml as written by the trainer; {} for a plain model (every reader then uses its defaults)."""
    path = Path(run_dir) / "config.yaml" if run_dir is not None else None
    if path is None or not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def run_loss_settings(run_cfg: dict) -> LossSettings:
    """The loss settings of a run (its config.yaml, `run_config`); the training defaults for a plain model."""
    return LossSettings.of(run_cfg)  # {} gives the defaults


def max_context(model) -> int:
    return int(getattr(getattr(model, "config", None), "max_position_embeddings", 0) or 4096)


def reference_loss_stats(model, tokenizer, conversations: list[Conversation], settings: LossSettings | None = None,
                         description: str = "loss") -> np.ndarray:
    """`(n, 2)` array of [summed NLL, scored tokens] per conversation, for token-weighted loss.

    `settings`: the run's (LossSettings.of its config); without a run, the training defaults.
    """
    from ..train.loop import TokenLoss

    settings = settings or LossSettings()
    examples = [tokenize_one(tokenizer, conv, settings.max_seq_len, settings.train_on)[0] for conv in conversations]
    batches = scored_batches(examples, tokenizer.pad_token_id, settings)
    module = TokenLoss(model).train(model.training)  # scoring leaves the model in the mode it found it in
    with progress_bar(description, len(examples)) as advance:
        stats = example_loss_sums(module, batches, len(examples), model_device(model),
                                  on_batch=lambda sb: advance(len(sb.example_ids)))
    return stats[:, :2]
