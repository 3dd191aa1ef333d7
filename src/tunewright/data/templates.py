"""Render conversations with the tokenizer's own chat template and mark the trained tokens.

The whole conversation is rendered once, and each assistant turn's trained span is found in that one rendering:
it starts where the template's own generation prompt for that turn ends (when the template renders the earlier
turns the same way with and without what follows) or else where the answer's text begins, runs through the answer's
text, and ends with the end-of-turn token the template writes after it. Rendering prefixes alone is not enough:
Qwen3 drops past turns' reasoning and gives only the last turn a `<think>` block, and Mistral v0.3 moves the system
message into the last user turn, so a prefix renders differently from the same turns inside the full conversation
(TRL's all-zero assistant masks for such templates come from exactly this). Templates without a system role
(Gemma 2) get the system text folded into the first user turn, as Gemma 3's own template does.

Template variables such as Qwen3's `enable_thinking` are decided once per run (`data.chat_template_kwargs`,
see template_kwargs.py) and written into the run's template as defaults, so training, chat, eval, the server and
llama.cpp (which renders the GGUF's template with no such variables) all render the same prompt.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .conversation import Conversation
from .template_kwargs import has_template_defaults

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# turn closers written by the chat templates of the families we support, besides the tokenizer's EOS
END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>", "<end_of_turn>", "</s>", "<|endoftext|>")


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # -100 where not trained
    truncated: bool = False

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != -100)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False, **template_kwargs) -> str:
    """The chat template's text; a system message it refuses goes into the first user turn instead."""
    from jinja2 import TemplateError

    try:
        return _apply(tokenizer, messages, add_generation_prompt, template_kwargs)
    except TemplateError:
        folded = fold_system_into_first_user(messages)
        if folded is messages:
            raise
        return _apply(tokenizer, folded, add_generation_prompt, template_kwargs)


def _apply(tokenizer, messages: list[dict], add_generation_prompt: bool, template_kwargs: dict) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **template_kwargs)


def fold_system_into_first_user(messages: list[dict]) -> list[dict]:
    """Gemma 3's rule for a model without a system role: system text, a blank line, then the first user text."""
    if len(messages) < 2 or messages[0]["role"] != "system" or messages[1]["role"] != "user":
        return messages
    first = {**messages[1], "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
    return [first, *messages[2:]]


def encode_rendered(tokenizer, text: str) -> list[int]:
    """Tokenize rendered template text without a second BOS: the template already writes its own."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and not ids and getattr(tokenizer, "add_bos_token", False):
        ids = [bos]
    return ids


def tokenize_conversation(tokenizer, conv: Conversation, train_on: str = "assistant") -> TokenizedExample:
    """Token ids of the whole rendered conversation and labels that train only the chosen tokens."""
    if conv.is_text:
        ids = tokenizer(conv.text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        return TokenizedExample(ids, list(ids))
    msgs = [{"role": m.role, "content": m.content} for m in conv.messages]
    full = render(tokenizer, msgs)
    if train_on == "all":
        ids = encode_rendered(tokenizer, full)
        return TokenizedExample(ids, list(ids))
    trained = [span for i, span in enumerate(assistant_char_spans(tokenizer, msgs, full)) if _trains(conv, i)]
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [-100] * len(ids)
    eot_ids = end_of_turn_ids(tokenizer)
    for start, end in (s for s in trained if s is not None):
        covered = [j for j, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
        if not covered:
            continue
        last = covered[-1]
        if last + 1 < len(ids) and ids[last + 1] in eot_ids:  # the turn's closer: the model must learn to stop
            covered.append(last + 1)
        for j in covered:
            labels[j] = ids[j]
    return TokenizedExample(ids, labels)


def _trains(conv: Conversation, i: int) -> bool:
    m = conv.messages[i]
    return m.role == "assistant" and (m.train if m.train is not None else True)


def assistant_char_spans(tokenizer, msgs: list[dict], full: str) -> list[tuple[int, int] | None]:
    """Per message, the characters of `full` an assistant turn is trained on (None for other roles).

    The span ends where the answer's text ends (the end-of-turn token is added after tokenizing). It starts at
    the end of the turn's generation prompt when the full rendering begins with that prompt, so whatever the
    template writes as part of the answer (a reasoning block) is trained too; Qwen3's empty `<think>` block,
    which its non-thinking generation prompt already holds, is not. Otherwise it starts at the answer's text.
    """
    spans: list[tuple[int, int] | None] = []
    cursor = 0
    for i, m in enumerate(msgs):
        if m["role"] == "system" and i == 0:
            spans.append(None)
            continue
        is_answer = m["role"] == "assistant"
        prompt_end = _generation_prompt_end(tokenizer, msgs[:i], full) if is_answer else None
        found = _find_content(full, m["content"], cursor if prompt_end is None else max(cursor, prompt_end))
        if found is None:
            if not is_answer:
                spans.append(None)  # a template may drop or rewrite other roles; that is its business
                continue
            raise UserError(
                f"the model's chat template does not write assistant message {i + 1} ({m['content'][:40]!r}) as given,"
                " so the tokens to train cannot be found",
                "use a chat template that writes each assistant answer verbatim, or set data.train_on: all")
        pos, end = found
        cursor = end
        spans.append((pos if prompt_end is None else prompt_end, end) if is_answer else None)
    return spans


def _find_content(full: str, content: str, cursor: int) -> tuple[int, int] | None:
    """Where the message's text sits in the rendering: verbatim, trimmed (most templates trim), or its answer part."""
    candidates = [content, content.strip()]
    if "</think>" in content:  # Qwen3 renders past turns without their reasoning
        candidates.append(content.split("</think>")[-1].strip())
    for text in candidates:
        if text:
            pos = full.find(text, cursor)
            if pos >= 0:
                return pos, pos + len(text)
    return None


def _generation_prompt_end(tokenizer, before: list[dict], full: str) -> int | None:
    """Where the template's prompt for this turn ends in `full`, if `full` begins with it (else None)."""
    if not before:
        return None
    # a run's template holds its variables' values (the inference prompt): the answer starts where that prompt ends;
    # otherwise Qwen3's non-thinking prompt (an empty think block) fits answers without reasoning, the default the rest
    variants = ({},) if has_template_defaults(tokenizer) else ({"enable_thinking": False}, {})
    for kwargs in variants:
        try:
            prompt = render(tokenizer, before, add_generation_prompt=True, **kwargs)
        except Exception:  # a template that rejects a partial conversation: locate by the answer's text instead
            return None
        if full.startswith(prompt):
            return len(prompt)
    return None


def end_of_turn_ids(tokenizer) -> set[int]:
    """Token ids that close an assistant turn (generation and GGUF stop tokens): EOS plus the family markers."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    unk = getattr(tokenizer, "unk_token_id", None)
    for tok in END_OF_TURN_MARKERS:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid >= 0 and tid != unk:
            ids.add(tid)
    return ids


def truncate(example: TokenizedExample, max_len: int) -> TokenizedExample:
    if len(example.input_ids) <= max_len:
        return example
    return TokenizedExample(example.input_ids[:max_len], example.labels[:max_len], truncated=True)


def generation_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The ids a model continues from to answer `messages` (same template as training)."""
    return encode_rendered(tokenizer, render(tokenizer, messages, add_generation_prompt=True))
