"""An Ollama `Modelfile` beside an exported GGUF: the chat template in Go-template form and its stop tokens.

Ollama does not run Jinja, so the Hugging Face chat template is translated for the families we
recognise by their turn markers: ChatML (SmolLM2, Qwen2.5, Qwen3), Llama 3, Mistral [INST],
Gemma <start_of_turn> and Phi-3 <|user|>. Each template renders a conversation (ending in a user
turn) to exactly the text the Hugging Face template gives it with the generation prompt, less the
leading BOS that llama.cpp adds itself. Where the family's template folds the system message into a
user turn (Mistral: the last one; Gemma: the first one), the Go template does the same with
`.System`. A default system prompt the template inserts (SmolLM2, Qwen2.5) becomes `SYSTEM`, which
Ollama uses when a conversation has none. Other templates get a Modelfile without TEMPLATE and a
comment saying so, and Ollama falls back to the template embedded in the GGUF metadata.
"""
from __future__ import annotations

from pathlib import Path

CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
LLAMA3_TURNS = (
    '{{- range .Messages }}{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n'
    "{{ .Content }}<|eot_id|>{{- end }}{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
MISTRAL = (  # the system message goes into the last user turn, as Mistral v0.3's template does
    '{{- range $i, $_ := .Messages }}{{- if eq .Role "user" }}[INST] '
    "{{ if and $.System (eq (len (slice $.Messages $i)) 1) }}{{ $.System }}\n\n{{ end }}{{ .Content }}[/INST]"
    '{{- else if eq .Role "assistant" }} {{ .Content }}</s>{{- end }}{{- end }}'
)
GEMMA = (  # no system role: Gemma 3's template folds it into the first user turn
    "{{- $first := true }}{{- range .Messages }}"
    '{{- if eq .Role "user" }}<start_of_turn>user\n{{ if and $first $.System }}{{ $.System }}\n\n{{ end }}'
    "{{ $first = false }}{{ .Content }}<end_of_turn>\n"
    '{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n'
    "{{ end }}{{- end }}<start_of_turn>model\n"
)
PHI3 = (
    '{{- range .Messages }}{{- if or (ne .Role "system") .Content }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n'
    "{{ end }}{{- end }}<|assistant|>\n"
)
SENTINEL_SYSTEM, SENTINEL_USER = "\x00", "\x01"


def _render(tokenizer, messages: list[dict]) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that refuses this conversation tells us nothing
        return None


def llama3_template(tokenizer=None) -> str:
    """Llama 3's turns, with the system header as the model's template writes it (3.1+ always writes one,
    with a dated preamble before the system text; 3.0 only when there is a system message)."""
    header = "<|start_header_id|>system<|end_header_id|>\n\n"
    preamble, always = "", False
    if tokenizer is not None:
        text = _render(tokenizer, [{"role": "system", "content": SENTINEL_SYSTEM}, {"role": "user", "content": SENTINEL_USER}])
        if text and header in text and SENTINEL_SYSTEM in text:
            preamble = text.split(header, 1)[1].split(SENTINEL_SYSTEM, 1)[0]
        alone = _render(tokenizer, [{"role": "user", "content": SENTINEL_USER}]) or ""
        always = header in alone
    if always:
        system = f"{header}{preamble}{{{{ if .System }}}}{{{{ .System }}}}{{{{ end }}}}<|eot_id|>"
    else:
        system = f"{{{{- if .System }}}}{header}{preamble}{{{{ .System }}}}<|eot_id|>{{{{ end }}}}"
    return system + LLAMA3_TURNS


def chatml_answer_prefix(tokenizer=None) -> str:
    """What the template writes after `<|im_start|>assistant\n` in its generation prompt: a run of Qwen3 trained
    without reasoning has `enable_thinking` false in its template, so its prompt ends with an empty think block."""
    start = "<|im_start|>assistant\n"
    text = _render(tokenizer, [{"role": "user", "content": SENTINEL_USER}]) if tokenizer is not None else None
    return text.rsplit(start, 1)[1] if text and start in text else ""


def go_template_for(chat_template: str | None, tokenizer=None) -> str | None:
    """The Ollama template equivalent to a Hugging Face chat template, when its family is recognised."""
    if not chat_template:
        return None
    if "<|im_start|>" in chat_template:
        return CHATML + chatml_answer_prefix(tokenizer)
    if "<|start_header_id|>" in chat_template:
        return llama3_template(tokenizer)
    if "[INST]" in chat_template:
        return MISTRAL
    if "<start_of_turn>" in chat_template:
        return GEMMA
    if "<|user|>" in chat_template and "<|end|>" in chat_template:
        return PHI3
    return None


def default_system_prompt(tokenizer) -> str | None:
    """A system prompt a ChatML template inserts when the conversation has none (SmolLM2, Qwen2.5 do)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return None
    text = _render(tokenizer, [{"role": "user", "content": SENTINEL_USER}])
    start = "<|im_start|>system\n"
    if text and start in text and text.index(start) < text.index(SENTINEL_USER):
        body = text.split(start, 1)[1]
        return body.split("<|im_end|>", 1)[0] or None
    return None


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile_text(gguf_name: str, chat_template: str | None, stop_tokens: list[str], system: str | None = None,
                   tokenizer=None) -> str:
    lines = [f"FROM ./{gguf_name}", ""]
    template = go_template_for(chat_template, tokenizer)
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
    path.write_text(modelfile_text(gguf_path.name, chat_template, stop_tokens, default_system_prompt(tokenizer), tokenizer))
    return path
