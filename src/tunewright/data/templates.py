"""Render conversations with the tokenizer's own chat template and mark the trained tokens.

The mask comes from rendering the conversation prefix by prefix: the tokens that appear when an
assistant turn is appended are that turn (header excluded via the generation prompt), so it works
for any template without marker strings or `{% generation %}` tags (most templates have none).
"""
from __future__ import annotations

from dataclasses import dataclass

from .conversation import Conversation

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # -100 where not trained
    truncated: bool = False

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != -100)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode_rendered(tokenizer, text: str) -> list[int]:
    """Tokenize rendered template text without a second BOS: the template already writes its own."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and not ids and getattr(tokenizer, "add_bos_token", False):
        ids = [bos]
    return ids


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def tokenize_conversation(tokenizer, conv: Conversation, train_on: str = "assistant") -> TokenizedExample:
    """Token ids of the whole rendered conversation and labels that train only the chosen tokens."""
    if conv.is_text:
        ids = tokenizer(conv.text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        return TokenizedExample(ids, list(ids))
    msgs = [{"role": m.role, "content": m.content} for m in conv.messages]
    full_ids = encode_rendered(tokenizer, render(tokenizer, msgs))
    if train_on == "all":
        return TokenizedExample(full_ids, list(full_ids))
    labels = [-100] * len(full_ids)
    for i, m in enumerate(conv.messages):
        trains = m.train if m.train is not None else m.role == "assistant"
        if m.role != "assistant" or not trains:
            continue
        # tokens of turn i = render(prefix + turn i) minus render(prefix, generation prompt)
        before = encode_rendered(tokenizer, render(tokenizer, msgs[:i], add_generation_prompt=True)) if i else []
        upto = encode_rendered(tokenizer, render(tokenizer, msgs[: i + 1]))
        start = _common_prefix_len(before, full_ids)
        end = _common_prefix_len(upto, full_ids)
        end = _extend_through_end_of_turn(tokenizer, full_ids, end)
        for j in range(start, end):
            labels[j] = full_ids[j]
    return TokenizedExample(full_ids, labels)


def _extend_through_end_of_turn(tokenizer, ids: list[int], end: int) -> int:
    """Make sure the end-of-turn token right after an answer is trained, so the model learns to stop.

    Some templates (Llama 3, ChatML) already end the rendered turn with it; a few render the last
    turn without its closer. Trailing newlines after the closer are not trained.
    """
    eot_ids = end_of_turn_ids(tokenizer)
    if end > 0 and ids[end - 1] in eot_ids:
        return end
    # the closer may sit a token or two before `end` (e.g. "<|im_end|>\n"): trim the trailing whitespace
    for back in range(1, 3):
        if end - back >= 0 and ids[end - back] in eot_ids:
            return end - back + 1
    if end < len(ids) and ids[end] in eot_ids:
        return end + 1
    return end


def end_of_turn_ids(tokenizer) -> set[int]:
    """Token ids that close an assistant turn: EOS plus the template's end-of-turn markers."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        unk = getattr(tokenizer, "unk_token_id", None)
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
