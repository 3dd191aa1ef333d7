"""Preference pairs (objective dpo / orpo): one prompt, a chosen and a rejected answer, rendered like SFT.

The type the data layer hands to the training loop lives here; reading, validating and rendering the
pair files follow below it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .templates import TokenizedExample


@dataclass
class PreferencePair:
    """Prompt + chosen answer and the same prompt + rejected answer, tokenized with the model's chat template.

    Both examples start with the identical prompt token ids; labels are -100 except the answer's tokens
    (and its end-of-turn token), exactly as SFT masks an assistant turn.
    """

    chosen: TokenizedExample
    rejected: TokenizedExample
    source: str = ""  # "file:line" of the row
