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
