"""The one conversation type every input format becomes at the edge."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    train: bool | None = None  # None: the default policy decides (assistant turns train)


@dataclass(frozen=True)
class Conversation:
    """A chat (or raw text when `text` is set) plus where it came from, for error messages."""

    messages: tuple[Message, ...] = ()
    text: str | None = None  # raw-text examples: trained on every token
    source: str = ""  # "file:line"

    @property
    def is_text(self) -> bool:
        return self.text is not None

    def prompt_messages(self) -> list[dict]:
        """Everything before the last assistant turn, as plain dicts for a chat template."""
        msgs = list(self.messages)
        if msgs and msgs[-1].role == "assistant":
            msgs = msgs[:-1]
        return [{"role": m.role, "content": m.content} for m in msgs]

    def reference(self) -> str:
        """The last assistant answer: the reference an evaluation compares against."""
        if self.is_text:
            return self.text or ""
        for m in reversed(self.messages):
            if m.role == "assistant":
                return m.content
        return ""


@dataclass
class BadRow:
    source: str  # file:line
    field: str
    reason: str
    fix: str

    def __str__(self) -> str:
        return f"{self.source}: {self.field}: {self.reason} (fix: {self.fix})"


@dataclass
class LoadedFiles:
    """What reading data files found, whatever kind of rows they hold."""

    bad_rows: list[BadRow] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)  # file -> detected format
    rows_per_file: dict[str, int] = field(default_factory=dict)


@dataclass
class LoadedRows(LoadedFiles):
    conversations: list[Conversation] = field(default_factory=list)
    role_order_allowed: int = 0  # chats kept with roles out of order (data.allow_any_role_order; the template renders them)
