"""An Ollama `Modelfile` beside an exported GGUF: the chat template in Go-template form and its stop tokens.

Ollama does not run Jinja, so the Hugging Face chat template is translated for the families we
recognise (ChatML, Llama 3, Mistral); other templates get a Modelfile without TEMPLATE and a
comment saying so, and Ollama falls back to the template embedded in the GGUF metadata.
"""
from __future__ import annotations

from pathlib import Path

CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
LLAMA3 = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
MISTRAL = (
    '{{- range .Messages }}{{- if eq .Role "user" }}[INST] {{ .Content }} [/INST]'
    '{{- else if eq .Role "system" }}[INST] {{ .Content }} [/INST]'
    "{{- else }} {{ .Content }}</s>{{- end }}{{- end }}"
)


def go_template_for(chat_template: str | None) -> str | None:
    """The Ollama template equivalent to a Hugging Face chat template, when its family is recognised."""
    if not chat_template:
        return None
    if "<|im_start|>" in chat_template:
        return CHATML
    if "<|start_header_id|>" in chat_template:
        return LLAMA3
    if "[INST]" in chat_template:
        return MISTRAL
    return None


def default_system_prompt(tokenizer) -> str | None:
    """A system prompt the chat template inserts when the conversation has none (SmolLM2 does)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "\x00"}], tokenize=False)
    except Exception:  # a template that refuses a lone user turn has no default to extract
        return None
    start = "<|im_start|>system\n"
    if start in text and text.index(start) < text.index("\x00"):
        body = text.split(start, 1)[1]
        return body.split("<|im_end|>", 1)[0] or None
    return None


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile_text(gguf_name: str, chat_template: str | None, stop_tokens: list[str], system: str | None = None) -> str:
    lines = [f"FROM ./{gguf_name}", ""]
    template = go_template_for(chat_template)
    if template:
        lines += [f'TEMPLATE """{template}"""', ""]
    else:
        lines += ["# chat template not translated: Ollama uses the one stored in the GGUF metadata", ""]
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    lines += [f"PARAMETER stop {_quote(tok)}" for tok in stop_tokens]
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: Path, chat_template: str | None, stop_tokens: list[str], tokenizer=None) -> Path:
    """Write `Modelfile` next to the GGUF file, so `ollama create NAME -f Modelfile` works from that folder."""
    path = gguf_path.parent / "Modelfile"
    path.write_text(modelfile_text(gguf_path.name, chat_template, stop_tokens, default_system_prompt(tokenizer)))
    return path
