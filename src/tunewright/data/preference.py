"""Preference pairs (objective dpo / orpo): one prompt, a chosen and a rejected answer, rendered like SFT.

The type the data layer hands to the training loop lives here; reading, validating and rendering the
pair files follow below it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conversation import Conversation, LoadedFiles, Message
from .formats import (
    EMPTY_REPLY_FIX,
    MESSAGE_ROLES,
    ROLE_ORDER_RULE,
    DetectedFile,
    RowError,
    _content,
    _role,
    files_of_kind,
    note_file,
    position,
    role_order_problem,
)
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


@dataclass(frozen=True)
class PreferenceRow:
    """One parsed pair before tokenizing: the prompt turns (ending with a user turn) and the two answers."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    source: str = ""  # "file:line"
    prompt_field: str = "prompt"  # the row's own name for the prompt, for errors found when tokenizing

    def conversation(self, answer: str) -> Conversation:
        """Prompt + one answer; earlier assistant turns of the prompt are context, never trained."""
        context = tuple(Message(m.role, m.content, False if m.role == "assistant" else None) for m in self.prompt)
        return Conversation((*context, Message("assistant", answer)), source=self.source)

    def chosen_conversation(self) -> Conversation:
        """What generation metrics and SFT-style evaluation use: the prompt and its preferred answer."""
        return self.conversation(self.chosen)


@dataclass
class LoadedPairs(LoadedFiles):
    pairs: list[PreferenceRow] = field(default_factory=list)


IDENTICAL_FIX = "give a rejected answer that differs from the chosen one, or drop the row: an identical pair teaches nothing"
PROMPT_END_FIX = "end the prompt with the user turn the two answers respond to"


def load_pairs(paths: str | Path | list, fmt: str = "auto", *, objective: str | None = None,
               files: list[DetectedFile] | None = None) -> LoadedPairs:
    """Read preference files into PreferenceRows, collecting (never raising for) bad rows, in line order.

    Instruction data (one answer per prompt) raises DataKindError naming the file and the fix.
    """
    files, bad = files_of_kind(paths, fmt, files, "preference", objective)
    loaded = LoadedPairs(bad_rows=bad)
    for f in files:
        file_bad = note_file(loaded, f, fmt)
        if f.fmt is not None and f.read.records:
            convert = _openai_dpo if f.fmt == "dpo" else _trl
            for rec in f.read.records:
                try:
                    loaded.pairs.append(check_pair(convert(rec.row), rec.source))
                except RowError as e:
                    file_bad.append(e.bad_row(rec.source))
        loaded.bad_rows.extend(sorted(file_bad, key=lambda b: position(b.source)))
    return loaded


def check_pair(parts: tuple[list[Message], str, str, str, str, str], source: str) -> PreferenceRow:
    """The checks every pair passes whatever its format; parts = prompt, chosen, rejected and their field names."""
    prompt, chosen, rejected, prompt_field, chosen_field, rejected_field = parts
    if not prompt:
        raise RowError(prompt_field, "empty prompt", "give the user message the answers respond to")
    if prompt[-1].role != "user":
        raise RowError(f"{prompt_field}[{len(prompt) - 1}].role", f"the prompt's last turn is {prompt[-1].role}, not user", PROMPT_END_FIX)
    problem = role_order_problem([m.role for m in prompt])
    if problem is not None:
        raise RowError(f"{prompt_field}[{problem[0]}].role", problem[1], ROLE_ORDER_RULE)
    for text, name in ((chosen, chosen_field), (rejected, rejected_field)):
        if not text.strip():
            raise RowError(name, "empty answer", EMPTY_REPLY_FIX)
    if chosen.strip() == rejected.strip():
        raise RowError(rejected_field, "chosen and rejected answers are identical", IDENTICAL_FIX)
    return PreferenceRow(tuple(prompt), chosen, rejected, source, prompt_field)


def _openai_dpo(row: dict) -> tuple:
    """OpenAI: {"input": {"messages": [...]}, "preferred_output": [assistant], "non_preferred_output": [assistant]}."""
    inp = row.get("input")
    if not isinstance(inp, dict):
        got = "missing field" if inp is None else f"expected an object, got {type(inp).__name__}"
        raise RowError("input", got, 'write the prompt as "input": {"messages": [...]}')
    prompt = _message_list(inp.get("messages"), "input.messages")
    chosen = _one_answer(row.get("preferred_output"), "preferred_output")
    rejected = _one_answer(row.get("non_preferred_output"), "non_preferred_output")
    return prompt, chosen, rejected, "input.messages", "preferred_output[0].content", "non_preferred_output[0].content"


def _trl(row: dict) -> tuple:
    """TRL: prompt/chosen/rejected as strings or message lists; without a prompt, chosen and rejected share it."""
    if row.get("prompt") is None:
        return _implicit_prompt(row)
    prompt_value = row["prompt"]
    prompt = [Message("user", prompt_value)] if isinstance(prompt_value, str) else _message_list(prompt_value, "prompt")
    chosen, chosen_field = _trl_answer(row.get("chosen"), "chosen")
    rejected, rejected_field = _trl_answer(row.get("rejected"), "rejected")
    return prompt, chosen, rejected, "prompt", chosen_field, rejected_field


def _trl_answer(value: Any, key: str) -> tuple[str, str]:
    if isinstance(value, str) or value is None:
        if value is None:
            raise RowError(key, "missing field", f"add the '{key}' answer (a string or a list with one assistant message)")
        return value, key
    return _one_answer(value, key), f"{key}[0].content"


def _implicit_prompt(row: dict) -> tuple:
    """TRL's implicit prompt: chosen and rejected are whole chats; the prompt is the turns they share."""
    for key in ("chosen", "rejected"):
        if not isinstance(row.get(key), list):
            raise RowError("prompt", "missing field", "add a 'prompt' (or give chosen and rejected as whole chats that share the prompt turns)")
    chosen = _message_list(row["chosen"], "chosen")
    rejected = _message_list(row["rejected"], "rejected")
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    for msgs, key in ((chosen, "chosen"), (rejected, "rejected")):
        if len(msgs) != shared + 1 or msgs[-1].role != "assistant":
            raise RowError(f"{key}[{shared}]", "chosen and rejected must differ only in their last turn, an assistant answer",
                           "give the shared turns as 'prompt' and one assistant message each as 'chosen' and 'rejected'")
    return chosen[:shared], chosen[-1].content, rejected[-1].content, "chosen", f"chosen[{shared}].content", f"rejected[{shared}].content"


def _message_list(value: Any, key: str) -> list[Message]:
    """A list of {"role", "content"} messages (OpenAI roles), each field named as `key[i].role`."""
    if value is None:
        raise RowError(key, "missing field", f"add '{key}' as a list of messages")
    if not isinstance(value, list):
        raise RowError(key, f"expected a list, got {type(value).__name__}", f"make '{key}' a list of messages")
    msgs = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RowError(f"{key}[{i}]", f"expected an object, got {type(m).__name__}", "write each message as {\"role\": ..., \"content\": ...}")
        role = _role(m.get("role"), MESSAGE_ROLES, f"{key}[{i}].role")
        msgs.append(Message(role, _content(m.get("content"), f"{key}[{i}].content")))
    return msgs


def _one_answer(value: Any, key: str) -> str:
    """A list holding exactly one assistant message: its text."""
    msgs = _message_list(value, key)
    if len(msgs) != 1:
        raise RowError(key, f"expected one assistant message, got {len(msgs)}", f"give '{key}' exactly one {{\"role\": \"assistant\", \"content\": ...}} message")
    if msgs[0].role != "assistant":
        raise RowError(f"{key}[0].role", f"answer has role {msgs[0].role}, not assistant", 'set "role": "assistant"')
    return msgs[0].content
