"""NEFTune (`train.neftune_alpha`, train/neftune.py): noise scaled per packed example, in training forwards only.

The runs pin fp32, so a resumed run must reproduce an uninterrupted one exactly (the noise comes from torch's
generator, which checkpoints save) and a run with noise must differ from one without.
"""
from __future__ import annotations

import math

import pytest
import torch
import yaml
from helpers import (
    assert_same_adapter,
    build_tiny_model,
    build_tokenizer,
    repeat_word_rows,
    write_jsonl,
)
from peft import LoraConfig, get_peft_model

import tunewright.train.checkpoint as ckpt
from tunewright.config import load_config
from tunewright.train import train
from tunewright.train.neftune import (
    add_embedding_noise,
    decoder_backbone,
    noisy_embeddings,
)

ALPHA, HIDDEN = 5.0, 64
SETS = {"train.max_steps": 6, "train.save_every": 3, "train.eval_every": 3, "train.learning_rate": 1e-2,
        "train.precision": "fp32", "train.threads": 1, "eval.after_train": "false", "train.batch_size": 8,
        "train.save_total_limit": 5, "train.neftune_alpha": ALPHA}


def _bound(length: int) -> float:
    return ALPHA / math.sqrt(length * HIDDEN)


def test_each_packed_example_gets_noise_scaled_by_its_own_length():
    torch.manual_seed(0)
    clean = torch.zeros(1, 8, HIDDEN)
    packed = noisy_embeddings(clean, ALPHA, torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]]))
    alone = noisy_embeddings(clean[:, :3], ALPHA, torch.tensor([[0, 1, 2]]))
    largest = packed.abs().amax(dim=-1)[0]  # per token, over 64 uniform draws: within a few % of the bound
    for token, length in enumerate([3, 3, 3, 5, 5, 5, 5, 5]):
        assert 0.9 * _bound(length) < largest[token] <= _bound(length), (token, largest[token], _bound(length))
    # packed with a longer example, the short one keeps the noise it has alone (the row's length, 8, would shrink it)
    assert 0.9 * _bound(3) < alone.abs().amax() <= _bound(3) and _bound(8) < 0.9 * _bound(3)
    # every row of a batch of unpacked rows (no position ids) is one example of the row's length
    assert noisy_embeddings(torch.zeros(2, 4, HIDDEN), ALPHA, None).abs().amax() <= _bound(4)


@pytest.fixture
def lora_model():
    tokenizer = build_tokenizer("chatml")
    model = get_peft_model(build_tiny_model(tokenizer, hidden=HIDDEN), LoraConfig(r=4, target_modules="all-linear"))
    ids = torch.tensor([[5, 9, 14, 3, 7, 11]])
    return model, {"input_ids": ids, "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2]]), "use_cache": False}


@torch.no_grad()
def test_noise_reaches_both_training_paths_and_never_evaluation(lora_model):
    model, batch = lora_model
    backbone = decoder_backbone(model)
    model.eval()
    clean_logits, clean_hidden = model(**batch).logits, backbone(**batch).last_hidden_state
    handle = add_embedding_noise(model, ALPHA)
    assert torch.equal(model(**batch).logits, clean_logits), "evaluation saw noise"
    model.train()  # LoRA dropout is 0 here: only the noise can change a training forward
    noisy_logits = model(**batch).logits
    assert not torch.allclose(noisy_logits, clean_logits), "the causal LM's forward was not noised"
    assert not torch.allclose(backbone(**batch).last_hidden_state, clean_hidden), "the chunked loss's path was not noised"
    assert not torch.allclose(model(**batch).logits, noisy_logits), "the noise was drawn once, not per forward"
    handle.remove()
    assert torch.equal(model(**batch).logits, clean_logits), "noise outlived its handle"



@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("data")
    return {"train": str(write_jsonl(root / "train.jsonl", repeat_word_rows(32))),
            "validation": str(write_jsonl(root / "val.jsonl", repeat_word_rows(6, offset=3)))}


def _cfg(model_dir, data, out, **extra):
    sets = {**SETS, "data.validation": data["validation"], **extra}
    return load_config(model=str(model_dir), data__train=data["train"], output_dir=str(out), overrides=[f"{k}={v}" for k, v in sets.items()])


class Crash(Exception):
    """Stands in for a kill right after a checkpoint was written."""


def test_a_noised_run_trains_differently_resumes_exactly_and_leaves_no_hook(tiny_model_dir, data, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEWRIGHT_TOKENIZED_CACHE", str(tmp_path / "tokcache"))
    noised = train(_cfg(tiny_model_dir, data, tmp_path / "noised"))
    plain = train(_cfg(tiny_model_dir, data, tmp_path / "plain", **{"train.neftune_alpha": 0}))
    assert yaml.safe_load((tmp_path / "noised" / "config.yaml").read_text())["train"]["neftune_alpha"] == ALPHA
    with pytest.raises(AssertionError):
        assert_same_adapter(tmp_path / "noised", tmp_path / "plain")
    # training ends with the hook removed: the returned model's evaluation and any merge see clean embeddings
    backbone = decoder_backbone(noised.model)
    assert not backbone._forward_pre_hooks and not backbone.get_input_embeddings()._forward_hooks
    assert plain.summary["steps"] == noised.summary["steps"] == 6

    real = ckpt.save_checkpoint

    def save_then_crash(run_dir, step, *args, **kwargs):
        path = real(run_dir, step, *args, **kwargs)
        if step == 3:
            raise Crash("killed after checkpoint 3")
        return path

    killed = tmp_path / "killed"
    with monkeypatch.context() as m:
        m.setattr(ckpt, "save_checkpoint", save_then_crash)
        with pytest.raises(Crash):
            train(_cfg(tiny_model_dir, data, killed))
    train(_cfg(tiny_model_dir, data, killed), resume=True)
    assert_same_adapter(killed, tmp_path / "noised")
