"""Detect each file's format and turn its records into the one Conversation type, or into BadRows.

Formats (DESIGN.md, "Data"): alpaca, messages (OpenAI chat, per-message `weight`), sharegpt,
completion and text. Every check names the field, so a bad row says exactly what to fix.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from .conversation import BadRow, Conversation, LoadedFiles, LoadedRows, Message
from .readers import FileRecords, Record, expand_paths, read_file

FORMATS = ("alpaca", "messages", "sharegpt", "completion", "text")
# preference pairs (objective dpo / orpo, see preference.py): OpenAI's DPO format and TRL's prompt/chosen/rejected
PREFERENCE_FORMATS = ("dpo", "preference")
MESSAGE_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant", "model": "assistant"}
_DETECT_SAMPLE = 50


class RowError(Exception):
    """One problem in one row: the field it is in, why, and how to fix it."""

    def __init__(self, field: str, reason: str, fix: str):
        super().__init__(reason)
        self.field, self.reason, self.fix = field, reason, fix

    def bad_row(self, source: str) -> BadRow:
        return BadRow(source, self.field, self.reason, self.fix)


class RoleOrderError(RowError):
    """A chat that is valid except for the order of its roles; it carries the conversation for the opt-in."""

    def __init__(self, field: str, reason: str, conversation: Conversation):
        super().__init__(field, reason, ROLE_ORDER_FIX)
        self.conversation = conversation


def format_of_row(row: dict) -> str | None:
    """The format a single row's keys say it is in, or None."""
    if "preferred_output" in row or "non_preferred_output" in row:
        return "dpo"
    if "chosen" in row and "rejected" in row:
        return "preference"
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "completion"
    if "text" in row:
        return "text"
    return None


def detect_format(records: list[Record]) -> str | None:
    """The most common row format among the first rows of a file (files hold one format)."""
    votes = Counter(f for f in (format_of_row(r.row) for r in records[:_DETECT_SAMPLE]) if f)
    return votes.most_common(1)[0][0] if votes else None


def undetected_row(path: str, records: list[Record]) -> BadRow:
    keys = sorted({k for r in records[:_DETECT_SAMPLE] for k in r.row})
    return BadRow(
        f"{path}:0", "format", f"cannot tell the data format from the columns {keys}",
        "use messages, conversations, instruction/output, prompt/completion or text columns (or, for dpo/orpo, "
        "input/preferred_output/non_preferred_output or prompt/chosen/rejected), or set data.format",
    )


def to_conversations(records: list[Record], fmt: str, any_role_order: bool = False) -> tuple[list[Conversation], list[BadRow], list[BadRow]]:
    """Convert every record with the file's format; rows that do not fit become BadRows.

    With `any_role_order`, chats whose only fault is their role order are kept, and their would-be
    BadRows come back third: the caller keeps them only if the chat template renders those rows.
    """
    convert = CONVERTERS[fmt]
    good, bad, unusual = [], [], []
    for rec in records:
        try:
            good.append(convert(rec.row, rec.source))
        except RoleOrderError as e:
            if any_role_order:
                good.append(e.conversation)
                unusual.append(e.bad_row(rec.source))
            else:
                bad.append(e.bad_row(rec.source))
        except RowError as e:
            bad.append(e.bad_row(rec.source))
    return good, bad, unusual


EMPTY_REPLY_FIX = "write the answer the model should give, or drop the row"
ROLE_ORDER_RULE = "order the turns as an optional system message first, then user and assistant turns alternating, starting with user"
ROLE_ORDER_FIX = f"{ROLE_ORDER_RULE} (or set data.allow_any_role_order: true if the model's chat template renders this order)"


def role_order_problem(roles: list[str]) -> tuple[int, str] | None:
    """Where a chat leaves the order every chat template accepts, and why; None when it keeps to it.

    The order: an optional system message at position 0, then user and assistant turns alternating,
    starting with user. Many templates (Llama 2, Mistral, Gemma) raise on anything else; others render
    it into a prompt the model never saw.
    """
    start = 1 if roles and roles[0] == "system" else 0
    for i in range(start, len(roles)):
        role, expected = roles[i], ("user" if (i - start) % 2 == 0 else "assistant")
        if role == expected:
            continue
        if role == "system":
            return i, "system message after the first turn (only the first message may be a system message)"
        if i == 0:
            return i, f"conversation starts with an {role} turn, not a user turn"
        if i == start:
            return i, f"the system message is followed by an {role} turn, not a user turn"
        return i, f"two {role} turns in a row (user and assistant turns must alternate)"
    return None


def check_role_order(conv: Conversation, key: str, role_attr: str, offset: int = 0) -> Conversation:
    """The conversation, or a RoleOrderError naming the first turn out of order (fields as in check_turns)."""
    problem = role_order_problem([m.role for m in conv.messages])
    if problem is None:
        return conv
    i, reason = problem
    raise RoleOrderError(f"{key}[{i - offset}].{role_attr}", reason, conv)


def check_turns(msgs: list[Message], key: str, role_attr: str, content_attr: str, offset: int = 0) -> None:
    """A chat must have a non-empty answer in every assistant turn and end with one.

    `key`/`role_attr`/`content_attr` name the row's own fields (messages[i].content, conversations[i].value),
    and `offset` counts turns added before the row's list (a sharegpt `system` column).
    """
    if not msgs:
        raise RowError(key, "no messages", "give each example at least a user and an assistant message")
    for i, m in enumerate(msgs):
        if m.role == "assistant" and not m.content.strip():
            raise RowError(f"{key}[{i - offset}].{content_attr}", "empty assistant reply", EMPTY_REPLY_FIX)
    if msgs[-1].role != "assistant":
        raise RowError(f"{key}[{len(msgs) - 1 - offset}].{role_attr}", f"conversation ends with a {msgs[-1].role} turn, not an assistant turn",
                       "end every example with the assistant's answer (drop the trailing turn)")


def _text(row: dict, key: str, required: bool = True, field: str | None = None) -> str:
    """A string field; missing, null, or non-string values raise RowError naming the field."""
    field = field or key
    value = row.get(key)
    if value is None:
        if required:
            raise RowError(field, "missing field", f"add a '{key}' string to the row")
        return ""
    if not isinstance(value, str):
        raise RowError(field, f"expected a string, got {type(value).__name__}", f"make '{key}' a string")
    return value


def _alpaca(row: dict, source: str) -> Conversation:
    instruction = _text(row, "instruction")
    extra = _text(row, "input", required=False)
    output = _text(row, "output")
    system = _text(row, "system", required=False)
    if not (instruction.strip() or extra.strip()):
        raise RowError("instruction", "empty instruction", "write the instruction the answer responds to")
    if not output.strip():
        raise RowError("output", "empty assistant reply", EMPTY_REPLY_FIX)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    msgs = ([Message("system", system)] if system.strip() else []) + [Message("user", user), Message("assistant", output)]
    return Conversation(tuple(msgs), source=source)


def _completion(row: dict, source: str) -> Conversation:
    prompt = _text(row, "prompt")
    completion = _text(row, "completion")
    if not completion.strip():
        raise RowError("completion", "empty assistant reply", EMPTY_REPLY_FIX)
    return Conversation((Message("user", prompt), Message("assistant", completion)), source=source)


def _raw_text(row: dict, source: str) -> Conversation:
    text = _text(row, "text")
    if not text.strip():
        raise RowError("text", "empty text", "drop the row or give it text")
    return Conversation(text=text, source=source)


def _turns(row: dict, key: str) -> list:
    turns = row.get(key)
    if turns is None:
        raise RowError(key, "missing field", f"add a '{key}' list to the row")
    if not isinstance(turns, list):
        raise RowError(key, f"expected a list, got {type(turns).__name__}", f"make '{key}' a list of turns")
    if not turns:
        raise RowError(key, "empty list", "give each example at least a user and an assistant turn")
    return turns


def _content(value: Any, field: str) -> str:
    """Message content: a string, or OpenAI's list of text parts joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    if value is None:
        raise RowError(field, "missing field", "give every message its text content")
    raise RowError(field, f"expected a string, got {type(value).__name__}", "make the content a string (only text parts are supported)")


def _weight(value: Any, field: str) -> bool | None:
    """OpenAI's per-message weight, 0 or 1 (Parquet written from pandas may give 1.0, or NaN for unset)."""
    if value is None or isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (bool, int, float)) and value in (0, 1):
        return bool(value)
    raise RowError(field, f"weight must be 0 or 1, got {value!r}", "use 0 to keep a turn out of the loss, 1 to train it")


def _messages(row: dict, source: str) -> Conversation:
    msgs = []
    for i, m in enumerate(_turns(row, "messages")):
        if not isinstance(m, dict):
            raise RowError(f"messages[{i}]", f"expected an object, got {type(m).__name__}", "write each message as {\"role\": ..., \"content\": ...}")
        role = _role(m.get("role"), MESSAGE_ROLES, f"messages[{i}].role")
        weight = _weight(m.get("weight"), f"messages[{i}].weight")
        if weight is not None and role != "assistant":
            weight = None  # OpenAI: weight only applies to assistant messages
        msgs.append(Message(role, _content(m.get("content"), f"messages[{i}].content"), weight))
    check_turns(msgs, "messages", "role", "content")
    return check_role_order(Conversation(tuple(msgs), source=source), "messages", "role")


def _sharegpt(row: dict, source: str) -> Conversation:
    msgs = []
    system = row.get("system")
    system_added = isinstance(system, str) and bool(system.strip())
    if system_added:
        msgs.append(Message("system", system))
    for i, m in enumerate(_turns(row, "conversations")):
        if not isinstance(m, dict):
            raise RowError(f"conversations[{i}]", f"expected an object, got {type(m).__name__}", "write each turn as {\"from\": ..., \"value\": ...}")
        role = _role(m.get("from"), SHAREGPT_ROLES, f"conversations[{i}].from")
        msgs.append(Message(role, _content(m.get("value"), f"conversations[{i}].value")))
    offset = 1 if system_added else 0
    check_turns(msgs, "conversations", "from", "value", offset=offset)
    return check_role_order(Conversation(tuple(msgs), source=source), "conversations", "from", offset=offset)


def _role(value: Any, roles: dict[str, str], field: str) -> str:
    if value is None:
        raise RowError(field, "missing field", "give every turn a role")
    if not isinstance(value, str) or value.lower() not in roles:
        known = ", ".join(sorted(roles))
        raise RowError(field, f"unknown role {value!r}", f"use one of: {known}")
    return roles[value.lower()]


CONVERTERS: dict[str, Callable[[dict, str], Conversation]] = {
    "alpaca": _alpaca,
    "messages": _messages,
    "sharegpt": _sharegpt,
    "completion": _completion,
    "text": _raw_text,
}


@dataclass
class DetectedFile:
    """One file's records and the format they are in (None: no records, or none recognised)."""

    read: FileRecords
    fmt: str | None

    @property
    def kind(self) -> str | None:
        return None if self.fmt is None else ("preference" if self.fmt in PREFERENCE_FORMATS else "sft")


class DataKindError(UserError):
    """Preference pairs where instruction data is needed, or the reverse (the jobs API maps it to its own error)."""

    def __init__(self, message: str, fix: str, found: str):
        super().__init__(message, fix)
        self.found = found  # "sft" | "preference": what the data is


PAIRS_FIX = ('give rows with a chosen and a rejected answer: {"input": {"messages": [...]}, "preferred_output": [...], '
             '"non_preferred_output": [...]} or {"prompt": ..., "chosen": ..., "rejected": ...} (docs/preference.md)')


def read_detected(paths: str | Path | list, fmt: str = "auto") -> tuple[list[DetectedFile], list[BadRow]]:
    """Every data file read and its format detected (or forced), plus BadRows for paths that are not there."""
    if fmt not in ("auto", *FORMATS, *PREFERENCE_FORMATS):
        raise UserError(f"data format '{fmt}' is not known", f"use auto or one of: {', '.join(FORMATS + PREFERENCE_FORMATS)}")
    files, bad = expand_paths(paths)
    detected = []
    for path in files:
        read = read_file(path)
        detected.append(DetectedFile(read, (fmt if fmt != "auto" else detect_format(read.records)) if read.records else None))
    return detected, bad


def data_kind(files: list[DetectedFile]) -> str | None:
    """"preference" or "sft" for the files' detected formats (None when none was recognised); mixing is an error."""
    kinds = {f.kind for f in files} - {None}
    if len(kinds) > 1:
        pairs = next(f for f in files if f.kind == "preference")
        sft = next(f for f in files if f.kind == "sft")
        raise UserError(f"the data mixes preference pairs ({pairs.read.path}: {pairs.fmt}) and instruction data ({sft.read.path}: {sft.fmt})",
                        "train on one kind: pairs for objective dpo/orpo, one answer per prompt for sft")
    return kinds.pop() if kinds else None


def require_kind(files: list[DetectedFile], wanted: str, objective: str | None = None) -> None:
    """One clear error when the data is the other kind than the objective trains on."""
    found = data_kind(files)
    if found is None or found == wanted:
        return
    f = next(f for f in files if f.kind == found)
    if found == "preference":
        what = f"objective {objective}" if objective else "this command"
        raise DataKindError(f"{f.read.path} holds preference pairs ({f.fmt} format), which {what} cannot train on",
                            "train with --set objective=dpo (or orpo), or give instruction data (messages, alpaca, sharegpt, completion or text rows)",
                            found)
    what = f"objective {objective}" if objective else "this command"
    raise DataKindError(f"{f.read.path} is {f.fmt} data (one answer per prompt), but {what} trains on preference pairs",
                        f"{PAIRS_FIX}, or train with --set objective=sft", found)


def files_of_kind(paths, fmt: str, files: list[DetectedFile] | None, kind: str,
                  objective: str | None) -> tuple[list[DetectedFile], list[BadRow]]:
    """The files (read now unless `files` were read already) and missing-path BadRows; DataKindError for the other kind."""
    files, bad = read_detected(paths, fmt) if files is None else (files, [])
    require_kind(files, kind, objective)
    return files, bad


def note_file(loaded: LoadedFiles, f: DetectedFile, fmt: str) -> list[BadRow]:
    """Record a file's row count and format; its bad rows so far (a file whose format is unknown is one)."""
    read = f.read
    loaded.rows_per_file[read.path] = read.rows
    loaded.formats[read.path] = f.fmt or (fmt if fmt != "auto" else "unknown")
    bad = list(read.bad_rows)
    if read.records and f.fmt is None:
        bad.append(undetected_row(read.path, read.records))
    return bad


def load_conversations(paths: str | Path | list, fmt: str = "auto", *, any_role_order: bool = False, tokenizer=None,
                       files: list[DetectedFile] | None = None, objective: str | None = None) -> LoadedRows:
    """Read files, lists of files or folders into Conversations, collecting (never raising for) bad rows.

    `any_role_order` (data.allow_any_role_order) keeps chats with roles out of order only when
    `tokenizer`'s chat template renders them; the rest stay bad rows that name the template's error.
    Preference pairs raise DataKindError (they load with preference.load_pairs). `files`: already read.
    """
    if any_role_order and tokenizer is None:
        raise ValueError("any_role_order needs the tokenizer whose chat template must render those rows")
    files, bad = files_of_kind(paths, fmt, files, "sft", objective)
    loaded = LoadedRows(bad_rows=bad)
    for f in files:
        bad = note_file(loaded, f, fmt)
        if f.fmt is not None and f.read.records:
            good, bad_rows, unusual = to_conversations(f.read.records, f.fmt, any_role_order)
            rejected = unrendered_rows(good, unusual, tokenizer) if unusual else []
            dropped = {b.source for b in rejected}
            loaded.conversations.extend(c for c in good if c.source not in dropped)
            loaded.role_order_allowed += len(unusual) - len(rejected)
            bad.extend(bad_rows + rejected)
        loaded.bad_rows.extend(sorted(bad, key=lambda b: position(b.source)))
    return loaded


def unrendered_rows(convs: list[Conversation], unusual: list[BadRow], tokenizer) -> list[BadRow]:
    """The out-of-order rows the chat template fails on (rendering each prefix as training does), as BadRows."""
    from .templates import tokenize_conversation

    by_source = {c.source: c for c in convs}
    rejected = []
    for b in unusual:
        try:
            tokenize_conversation(tokenizer, by_source[b.source])
        except Exception as e:  # jinja's TemplateError from raise_exception(), or whatever else a template raises
            reason = f"{b.reason}; the model's chat template rejects it ({_first_line(e)})"
            rejected.append(BadRow(b.source, b.field, reason, ROLE_ORDER_RULE))
    return rejected


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:200]


def position(source: str) -> int:
    """The line (or [row]) of a `file:line` source, for listing a file's bad rows in file order."""
    tail = source.rsplit(":", 1)[-1].strip("[]")
    return int(tail) if tail.isdigit() else 0
