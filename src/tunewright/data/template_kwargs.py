"""Chat-template variables (Qwen3's `enable_thinking`): decided once per run, then part of the run's template.

Qwen3's template renders the generation prompt two ways: thinking on (`<|im_start|>assistant\\n`, the default) or
off (`enable_thinking=False`: an empty `<think>\\n\\n</think>\\n\\n` block follows). Training renders whole
conversations, so a model trained on plain answers learns them after the empty block; prompting it later with the
default (thinking on) asks for something it was never trained on, and it may start with `<think>`.

So a run decides the values (`data.chat_template_kwargs`; `auto`: thinking off unless some training answer holds
reasoning, i.e. a `</think>`) and writes them into the tokenizer's template as defaults, before tokenizing. The
run's saved tokenizer (adapter/, model/, merged and GGUF exports) then renders the trained prompt everywhere:
`tunewright chat`, eval, the server, stock `apply_chat_template`, and llama.cpp, which renders the GGUF's template
with none of these variables. A caller that passes a value explicitly still wins. Templates that do not read a
variable never get it.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..errors import UserError
from .conversation import Conversation

THINKING = "enable_thinking"
DEFAULTS_MARK = "{#- tunewright: data.chat_template_kwargs -#}"


def template_source(tokenizer) -> str | None:
    """The tokenizer's default chat template text (a dict of named templates: its 'default')."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template if isinstance(template, str) else None


def template_variables(template: str) -> set[str]:
    """Names the template reads without defining them: what a caller may pass to apply_chat_template."""
    from jinja2 import meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return set(meta.find_undeclared_variables(ImmutableSandboxedEnvironment().parse(template)))


def has_reasoning(conv: Conversation) -> bool:
    """True when an assistant turn carries reasoning (`<think>...</think>` before its answer)."""
    return any(m.role == "assistant" and "</think>" in m.content for m in conv.messages)


def resolve_template_kwargs(tokenizer, conversations: Iterable[Conversation], configured: dict | str) -> dict[str, Any]:
    """The values a run renders with: the configured ones, or for `auto` thinking on only for data with reasoning."""
    if configured != "auto":
        return dict(configured)
    template = template_source(tokenizer)
    if template is None or THINKING not in template_variables(template):
        return {}
    return {THINKING: any(has_reasoning(c) for c in conversations)}


def _jinja_literal(key: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "none"}[value]
    if isinstance(value, (int, float, str)):
        return json.dumps(value)
    raise UserError(f"data.chat_template_kwargs.{key}: {value!r} is not a plain value",
                    "give each chat template variable a true/false, number or string value")


def _without_defaults(template: str) -> str:
    if not template.startswith(DEFAULTS_MARK):
        return template
    return template.split(DEFAULTS_MARK, 2)[2]


def defaults_header(kwargs: dict[str, Any]) -> str:
    """Jinja that gives each variable its value unless the caller passed one."""
    body = "".join(f"{{%- if {k} is not defined %}}{{%- set {k} = {_jinja_literal(k, v)} %}}{{%- endif %}}"
                   for k, v in sorted(kwargs.items()))
    return f"{DEFAULTS_MARK}{body}{DEFAULTS_MARK}"


def apply_template_defaults(tokenizer, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Write the values the template reads into it as defaults; returns those applied (others are ignored).

    Idempotent: a template that already holds defaults (a run's saved tokenizer, on resume) gets them replaced.
    """
    template = template_source(tokenizer)
    if template is None:
        return {}
    for key in kwargs:
        if not str(key).isidentifier():
            raise UserError(f"data.chat_template_kwargs: {key!r} is not a template variable name",
                            "use the variable's name as the chat template spells it, e.g. enable_thinking")
    plain = _without_defaults(template)
    applied = {k: v for k, v in kwargs.items() if k in template_variables(plain)}
    _set_template(tokenizer, defaults_header(applied) + plain if applied else plain)
    return applied


def _set_template(tokenizer, template: str) -> None:
    if isinstance(tokenizer.chat_template, dict):
        tokenizer.chat_template = {**tokenizer.chat_template, "default": template}
    else:
        tokenizer.chat_template = template


def has_template_defaults(tokenizer) -> bool:
    """True for a run's template: its variables are fixed, so the plain generation prompt is the trained one."""
    template = template_source(tokenizer)
    return template is not None and template.startswith(DEFAULTS_MARK)
