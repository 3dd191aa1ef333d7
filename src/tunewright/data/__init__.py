"""Step 2 and 3: read training data in any supported format, validate it, render and tokenize it."""
from __future__ import annotations

from .conversation import BadRow, Conversation, LoadedRows, Message
from .formats import FORMATS, load_conversations

__all__ = ["BadRow", "Conversation", "FORMATS", "LoadedRows", "Message", "PreparedData", "load_conversations", "prepare_data"]


def __getattr__(name: str):
    # dataset.py pulls in `datasets`; import it only when asked for
    if name in ("prepare_data", "PreparedData"):
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(name)
