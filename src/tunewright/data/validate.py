"""Data quality beyond single rows: the bad-rows error, exact and near duplicates, train/validation overlap.

Duplicates and overlap are found by hashing normalised text (lowercase, punctuation and whitespace
collapsed), which is O(n) and catches the copies that matter: re-exported rows, whitespace edits,
and the same question left in both splits.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import asdict

from ..errors import UserError
from .conversation import BadRow, Conversation

SHOWN_BAD_ROWS = 20
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def bad_rows_error(bad_rows: list[BadRow], shown: int = SHOWN_BAD_ROWS) -> UserError:
    """One UserError listing the first bad rows as `file:line: field: reason`, so all get fixed in one go."""
    lines = [f"  {b.source}: {b.field}: {b.reason}" for b in bad_rows[:shown]]
    if len(bad_rows) > shown:
        lines.append(f"  and {len(bad_rows) - shown} more")
    message = f"{len(bad_rows)} bad row{'s' if len(bad_rows) != 1 else ''} in the data:\n" + "\n".join(lines)
    return UserError(message, "correct those rows (`tunewright data check` lists every one with its fix), or set data.on_bad_rows: skip to train without them")


def bad_rows_json(bad_rows: list[BadRow], limit: int = 1000) -> list[dict]:
    """Bad rows as plain dicts for reports, capped so a broken 1M-row file does not make a 1M-entry report."""
    return [asdict(b) for b in bad_rows[:limit]]


def normalize(text: str) -> str:
    """Lowercase, with runs of punctuation and whitespace collapsed to one space."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def turn_texts(conv: Conversation) -> list[str]:
    """One string per turn (role and content); raw-text examples are one turn."""
    if conv.is_text:
        return [conv.text or ""]
    return [f"{m.role}\x1f{m.content.strip()}" for m in conv.messages]


def prompt_turns(turns: list[str], conv: Conversation) -> list[str]:
    """Everything but the final answer: two examples with the same prompt teach the same question."""
    return turns[:-1] if not conv.is_text and conv.messages[-1].role == "assistant" else turns


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def duplicate_counts(convs: list[Conversation], examples: int = 5) -> dict:
    """Rows that repeat an earlier row exactly, nearly (after normalising), or ask the same prompt with another answer."""
    seen_exact: dict[bytes, str] = {}
    seen_near: dict[bytes, str] = {}
    seen_prompt: dict[bytes, str] = {}
    exact, near, same_prompt = [], [], []
    for conv in convs:
        turns = turn_texts(conv)
        normal = [normalize(t) for t in turns]
        e, n = _digest("\x1e".join(turns)), _digest("\x1e".join(normal))
        p = _digest("\x1e".join(prompt_turns(normal, conv)))
        if e in seen_exact:
            exact.append(f"{conv.source} = {seen_exact[e]}")
        elif n in seen_near:
            near.append(f"{conv.source} ~ {seen_near[n]}")
        elif p in seen_prompt and not conv.is_text:
            same_prompt.append(f"{conv.source} ~ {seen_prompt[p]}")
        seen_exact.setdefault(e, conv.source)
        seen_near.setdefault(n, conv.source)
        seen_prompt.setdefault(p, conv.source)
    return {
        "exact": len(exact), "near": len(near), "same_prompt_other_answer": len(same_prompt),
        "examples": (exact + near + same_prompt)[:examples],
    }


def overlap_count(train: list[Conversation], validation: list[Conversation], examples: int = 5) -> dict:
    """Validation rows whose normalised prompt also appears in training: they inflate evaluation scores."""
    train_prompts = {_prompt_digest(c): c.source for c in train}
    hits = []
    for conv in validation:
        src = train_prompts.get(_prompt_digest(conv))
        if src is not None:
            hits.append(f"{conv.source} ~ {src}")
    return {"count": len(hits), "examples": hits[:examples]}


def _prompt_digest(conv: Conversation) -> bytes:
    return _digest("\x1e".join(normalize(t) for t in prompt_turns(turn_texts(conv), conv)))
