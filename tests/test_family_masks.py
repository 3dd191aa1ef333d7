"""Every supported model family: its fixture loads like a real checkpoint, and its loss mask is exactly right."""
from __future__ import annotations

import json

import pytest
from families import FAMILY_SPECS


def test_family_folder_loads_like_a_real_checkpoint(family_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = family_dir.name.removeprefix("tiny-")
    spec = FAMILY_SPECS[name]
    model = AutoModelForCausalLM.from_pretrained(family_dir)
    tok = AutoTokenizer.from_pretrained(family_dir)
    assert model.config.model_type == spec.model_type
    assert type(model.config).__name__ == spec.config_class
    assert model.config.vocab_size == len(tok)
    assert (family_dir / "tokenizer.model").exists() == (spec.tokenizer_kind == "sentencepiece")
    # the end-of-turn marker is one special token, never split into pieces
    eot_ids = tok(spec.end_of_turn, add_special_tokens=False)["input_ids"]
    assert eot_ids == [tok.convert_tokens_to_ids(spec.end_of_turn)] and eot_ids[0] != tok.unk_token_id
    ids = tok.apply_chat_template([{"role": "user", "content": "hello world"}], add_generation_prompt=True,
                                  tokenize=True, return_dict=False)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok)) and torch.isfinite(logits).all()
    tied = json.loads((family_dir / "config.json").read_text()).get("tie_word_embeddings")
    assert tied == spec.config_kwargs["tie_word_embeddings"]


SYSTEM = "You answer briefly."
EXCHANGES = [("What is the quick brown fox?", "It jumps over the lazy dog."), ("hello world", "hello world to you")]


def conversation(system: str | None = SYSTEM, answers: list[str] | None = None):
    from tunewright.data import Conversation, Message

    msgs = [Message("system", system)] if system else []
    for (question, answer), given in zip(EXCHANGES, answers or [a for _, a in EXCHANGES]):
        msgs += [Message("user", question), Message("assistant", given)]
    return Conversation(tuple(msgs))


def trained_texts(tok, example) -> list[str]:
    """The decoded runs of trained tokens (labels equal the input ids there; the model shifts them)."""
    spans, current = [], []
    for tok_id, label in zip(example.input_ids, example.labels):
        if label != -100:
            assert label == tok_id
            current.append(tok_id)
        elif current:
            spans, current = spans + [current], []
    spans += [current] if current else []
    # sentencepiece and Mistral's " answer</s>" put the separating space in the answer's first token
    return [tok.decode(s).lstrip(" ") for s in spans]


def test_trained_tokens_are_each_answer_and_its_end_of_turn(family_tokenizer):
    from tunewright.data.templates import tokenize_conversation

    name, tok = family_tokenizer
    eot = FAMILY_SPECS[name].end_of_turn
    ex = tokenize_conversation(tok, conversation())
    assert trained_texts(tok, ex) == [a + eot for _, a in EXCHANGES], name
    spec = FAMILY_SPECS[name]
    if spec.add_bos or "bos_token" in spec.chat_template:  # the template writes BOS; tokenizing must not add another
        assert ex.input_ids[0] == tok.bos_token_id and ex.input_ids.count(tok.bos_token_id) == 1, name


def test_system_message_is_kept_the_way_the_family_template_keeps_it(family_tokenizer):
    """The system text reaches the model (folded into a user turn where the family has no system role)."""
    from tunewright.data.templates import tokenize_conversation

    name, tok = family_tokenizer
    ex = tokenize_conversation(tok, conversation())
    text = tok.decode(ex.input_ids)
    assert SYSTEM in text, name
    assert text.count(SYSTEM) == 1
    if name.startswith("gemma"):  # Gemma: no system role; it opens the first user turn, as Gemma 3's template does
        assert f"<start_of_turn>user\n{SYSTEM}\n\n{EXCHANGES[0][0]}<end_of_turn>" in text
        assert "<start_of_turn>model\nIt jumps" in text


def test_qwen3_reasoning_of_the_last_turn_is_trained_past_reasoning_is_not_rendered():
    from families import build_family_tokenizer

    from tunewright.data.templates import tokenize_conversation

    tok = build_family_tokenizer("qwen3")
    answers = ["<think>\nfoxes jump\n</think>\n\nIt jumps over the lazy dog.", "<think>\nbe kind\n</think>\n\nhello world to you"]
    ex = tokenize_conversation(tok, conversation(answers=answers))
    assert "foxes jump" not in tok.decode(ex.input_ids)  # Qwen3's template drops past turns' reasoning
    assert trained_texts(tok, ex) == ["It jumps over the lazy dog.<|im_end|>",
                                      "<think>\nbe kind\n</think>\n\nhello world to you<|im_end|>"]


def test_end_of_turn_ids_hold_each_family_stop_token(family_tokenizer):
    from tunewright.data.templates import end_of_turn_ids

    name, tok = family_tokenizer
    eot = tok.convert_tokens_to_ids(FAMILY_SPECS[name].end_of_turn)
    assert eot in end_of_turn_ids(tok)
    assert tok.eos_token_id in end_of_turn_ids(tok)
