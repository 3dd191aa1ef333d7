"""Request bodies of the OpenAI inference endpoints, with OpenAI's ranges and defaults.

Fields we cannot honour (tools, logprobs, n > 1, penalties) are refused with a 400 naming the
parameter rather than silently ignored: a client relying on them should learn that at once.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import OpenAIError


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields are checked by `refuse_unsupported`


class TextPart(BaseModel):
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-2**63, le=2**63 - 1)  # what OpenAI and torch's generators accept
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise OpenAIError(400, "'stop' may hold at most 4 sequences.", param="stop", code="invalid_value")
        return [s for s in stops if s]


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = False
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None


# fields OpenAI defines that change the answer in ways this server does not implement
_UNSUPPORTED = {
    "n": lambda v: v not in (None, 1),
    "best_of": lambda v: v not in (None, 1),
    "logprobs": lambda v: v not in (None, False),
    "top_logprobs": lambda v: v not in (None, 0),
    "tools": bool,
    "functions": bool,
    "tool_choice": lambda v: v not in (None, "none"),
    "presence_penalty": lambda v: v not in (None, 0),
    "frequency_penalty": lambda v: v not in (None, 0),
    "logit_bias": bool,
    "echo": bool,
    "suffix": bool,
    "response_format": lambda v: v not in (None, {"type": "text"}),
}


def refuse_unsupported(body: _Body) -> None:
    """400 for the first field set to something this server cannot do."""
    for name, unsupported in _UNSUPPORTED.items():
        if name in type(body).model_fields and unsupported(getattr(body, name)):
            raise OpenAIError(400, f"'{name}' is not supported by this server (value: {getattr(body, name)!r}).",
                              param=name, code="unsupported_parameter")
    for message in getattr(body, "messages", []) or []:
        if isinstance(message.content, list) and any(part.type != "text" for part in message.content):
            raise OpenAIError(400, "Only text content parts are supported.", param="messages", code="unsupported_parameter")


def refuse_lone_surrogates(body: _Body) -> None:
    """400 naming the first field whose text holds half a UTF-16 pair: JSON can escape one, no tokenizer can read it."""
    path = _first_unencodable(body.model_dump(exclude_unset=True), "")
    if path is not None:
        raise OpenAIError(400, f"Invalid value for '{path}': the text holds a lone UTF-16 surrogate (e.g. \\ud800), "
                          "which is not valid Unicode text.", param=path, code="invalid_value")


def _first_unencodable(value: Any, path: str) -> str | None:
    """OpenAI-style path (`messages[0].content`) of the first string, or dict key, that is not valid UTF-8 text."""
    if isinstance(value, str):
        return None if _encodable(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and not _encodable(key):
                return path or "body"
            found = _first_unencodable(item, where)
            if found is not None:
                return found
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _first_unencodable(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def plain_messages(body: ChatCompletionRequest) -> list[dict]:
    """Messages as the chat template expects them: role + text ('developer' is OpenAI's new 'system')."""
    out = []
    for message in body.messages:
        content = message.content
        if isinstance(content, list):
            content = "".join(part.text or "" for part in content)
        out.append({"role": "system" if message.role == "developer" else message.role, "content": content or ""})
    return out
