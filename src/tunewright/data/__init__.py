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

__all__ = ["BadRow", "Conversation", "FORMATS", "LoadedRows", "Message", "PREFERENCE_FORMATS", "PreferencePair", "PreparedData",
           "data_kind", "load_conversations", "load_pairs", "prepare_data", "read_detected"]


def __getattr__(name: str):
    # dataset.py pulls in `datasets`; import it only when asked for
    if name in ("prepare_data", "PreparedData"):
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(name)
