"""Step 2 and 3: read training data in any supported format, validate it, render and tokenize it."""
from __future__ import annotations

from .conversation import BadRow, Conversation, LoadedRows, Message
from .formats import (
    FORMATS,
    PREFERENCE_FORMATS,
    data_kind,
    load_conversations,
    read_detected,
)
from .preference import PreferencePair, load_pairs

__all__ = [
    "FORMATS",
    "PREFERENCE_FORMATS",
    "BadRow",
    "Conversation",
    "LoadedRows",
    "Message",
    "PreferencePair",
    "PreparedData",
    "data_kind",
    "load_conversations",
    "load_pairs",
    "prepare_data",
    "read_detected",
]


def prepare_data(cfg, tokenizer):
    """Load, validate, split, tokenize (cached) and report a run's data (a dataset.PreparedData).

    Objective sft gets tokenized examples; dpo and orpo get PreferencePairs (pairs.py).
    """
    if cfg.objective != "sft":
        from .pairs import prepare_preference_data

        return prepare_preference_data(cfg, tokenizer)
    from .dataset import prepare_sft_data

    return prepare_sft_data(cfg, tokenizer)


def __getattr__(name: str):
    # dataset.py pulls in `datasets`; import it only when asked for
    if name == "PreparedData":
        from .dataset import PreparedData

        return PreparedData
    raise AttributeError(name)
