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


# every id a family's model may close a turn with (its generation_config's eos list); generation and GGUF stop here
STOP_TOKENS = {
    "smollm2": {"<|im_end|>"}, "llama3": {"<|eot_id|>", "<|end_of_text|>"}, "mistral": {"</s>"},
    "qwen2": {"<|im_end|>", "<|endoftext|>"}, "qwen3": {"<|im_end|>", "<|endoftext|>"},
    "gemma2": {"<end_of_turn>", "<eos>"}, "gemma3": {"<end_of_turn>", "<eos>"},
    "phi3": {"<|end|>", "<|endoftext|>", "</s>"},
}


def test_end_of_turn_ids_are_each_family_stop_tokens(family_tokenizer):
    from tunewright.data.templates import end_of_turn_ids

    name, tok = family_tokenizer
    assert {tok.convert_ids_to_tokens(i) for i in end_of_turn_ids(tok)} == STOP_TOKENS[name]
    assert FAMILY_SPECS[name].end_of_turn in STOP_TOKENS[name]


def test_weight_zero_answer_is_not_trained(family_tokenizer):
    from tunewright.data import Conversation, Message
    from tunewright.data.templates import tokenize_conversation

    name, tok = family_tokenizer
    msgs = list(conversation().messages)
    msgs[2] = Message("assistant", msgs[2].content, train=False)
    ex = tokenize_conversation(tok, Conversation(tuple(msgs)))
    assert trained_texts(tok, ex) == [EXCHANGES[1][1] + FAMILY_SPECS[name].end_of_turn], name


def test_generation_prompt_with_a_system_message_matches_training(family_tokenizer):
    """Chat and serve build prompts the way training rendered them, system message included (Gemma 2 too)."""
    from tunewright.data import Conversation
    from tunewright.data.templates import generation_prompt_ids, tokenize_conversation

    name, tok = family_tokenizer
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": EXCHANGES[0][0]}]
    prompt = generation_prompt_ids(tok, messages)
    assert SYSTEM in tok.decode(prompt), name
    first_turn = Conversation(conversation().messages[:3])
    assert tokenize_conversation(tok, first_turn).input_ids[:len(prompt)] == prompt, name


def test_template_that_rewrites_the_answer_is_one_clear_error():
    from families import build_family_tokenizer

    from tunewright.data.templates import tokenize_conversation
    from tunewright.errors import UserError

    tok = build_family_tokenizer("qwen2")
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | upper }}<|im_end|>\n{% endfor %}"
    with pytest.raises(UserError, match="assistant message 3") as err:
        tokenize_conversation(tok, conversation())
    assert "train_on: all" in err.value.fix
