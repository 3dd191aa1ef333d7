"""The loss mask, checked by decoding the trained tokens, for the ChatML, Llama-3 and Mistral template families."""
from __future__ import annotations

import pytest
from helpers import write_jsonl

from tunewright.data import Conversation, Message, load_conversations
from tunewright.data.templates import tokenize_conversation

END_TOKEN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>"}
MULTI_TURN = Conversation((
    Message("system", "You answer briefly."),
    Message("user", "What is the quick brown fox?"),
    Message("assistant", "It jumps over the lazy dog."),
    Message("user", "hello world"),
    Message("assistant", "hello world to you"),
))


def trained_spans(example) -> list[list[int]]:
    """Runs of consecutive trained positions, as token ids."""
    spans, current = [], []
    for tok, lab in zip(example.input_ids, example.labels):
        if lab != -100:
            assert lab == tok  # labels are the input ids themselves; the model shifts them
            current.append(tok)
        elif current:
            spans.append(current)
            current = []
    return spans + ([current] if current else [])


def test_trained_tokens_are_exactly_the_assistant_replies(tokenizer_family):
    family, tok = tokenizer_family
    ex = tokenize_conversation(tok, MULTI_TURN)
    decoded = [tok.decode(span) for span in trained_spans(ex)]
    expected = [m.content + END_TOKEN[family] for m in MULTI_TURN.messages if m.role == "assistant"]
    # Mistral renders " answer</s>" after "[/INST]": the separating space belongs to the answer
    assert [d.lstrip(" ") for d in decoded] == expected


def test_weight_zero_turn_is_not_trained(tokenizer_family, tmp_path):
    family, tok = tokenizer_family
    rows = [{"messages": [
        {"role": "user", "content": "What is the quick brown fox?"},
        {"role": "assistant", "content": "It jumps over the lazy dog.", "weight": 0},
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": "hello world to you"},
    ]}]
    (conv,) = load_conversations(write_jsonl(tmp_path / "w.jsonl", rows)).conversations
    decoded = [tok.decode(s).lstrip(" ") for s in trained_spans(tokenize_conversation(tok, conv))]
    assert decoded == ["hello world to you" + END_TOKEN[family]]


def test_train_on_all_trains_every_token(tokenizer_family):
    _, tok = tokenizer_family
    ex = tokenize_conversation(tok, MULTI_TURN, train_on="all")
    assert ex.labels == ex.input_ids


@pytest.mark.parametrize("family", ["llama3", "mistral"])
def test_no_double_bos(family):
    from helpers import build_tokenizer

    tok = build_tokenizer(family)
    for conv in (MULTI_TURN, Conversation(text="hello world")):
        ids = tokenize_conversation(tok, conv).input_ids
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1, family


def test_end_of_turn_trained_even_when_pad_is_eos():
    from helpers import build_tokenizer

    tok = build_tokenizer("chatml")
    tok.pad_token = tok.eos_token
    ex = tokenize_conversation(tok, MULTI_TURN)
    eos_positions = [i for i, t in enumerate(ex.input_ids) if t == tok.eos_token_id]
    trained_eos = [i for i in eos_positions if ex.labels[i] != -100]
    assert len(trained_eos) == 2  # one per assistant turn; the user/system closers stay untrained
