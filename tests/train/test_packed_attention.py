"""Attention per example inside packed rows (`train.attention: per_example`) keeps transformers' maths.

The reference is today's path: the same packed micro-batch (restarted position ids, no mask) through
the model's own SDPA attention, for which transformers builds the dense block-causal mask. With the
lever the loss and every gradient must agree: fp32 to 1e-5 (the same kernel, fewer blocks, summed in
another order; measured: the same loss, gradients within 1.2e-6). bf16 autocast: within 2e-3 of the
loss and 2e-2 of each gradient's norm (the masked path runs SDPA in bf16, rounding step 3.9e-3; the
lever attends in fp32 on CPU; measured at most 1.4e-5 and 1.4e-2, Qwen2). Each comparison also counts
the SDPA calls, so a lever that silently fell back to the mask would fail.
"""
from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from families import build_family_model, build_family_tokenizer
from transformers import AutoModelForCausalLM

from tunewright.data.templates import TokenizedExample
from tunewright.errors import UserError
from tunewright.train.batching import collate, pair_micro_batches
from tunewright.train.loop import TokenLoss
from tunewright.train.packed_attention import (
    per_example_attention,
    use_per_example_attention,
)
from tunewright.train.preference_loss import SequenceLogps

FP32 = {"rtol": 1e-5, "atol": 1e-5}
BF16_GRAD_REL_NORM = 2e-2
BF16_LOSS_REL = 2e-3
ROWS = ((30, 20), (17, 12, 6))  # two packed rows; the second is 35 tokens long and gets a 15-token pad tail
SEGMENTS = 2 + 4  # examples per row, the pad tail counting as one


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {}


def _model(models: dict, family: str, window: int | None = None) -> torch.nn.Module:
    """The family's tiny fixture model (tests/families.py), in fp32 train mode; `window` sets a sliding window."""
    if family not in models:
        models[family] = build_family_model(family, build_family_tokenizer(family), seed=0)
    model = models[family]
    if window is not None:
        config = copy.deepcopy(model.config)
        config.sliding_window = window
        windowed = AutoModelForCausalLM.from_config(config)
        windowed.load_state_dict(model.state_dict())
        model = windowed
    return model.float().train()


def _example(rng: random.Random, vocab: int, length: int) -> TokenizedExample:
    ids = [rng.randrange(3, vocab) for _ in range(length)]
    prompt = length // 3
    return TokenizedExample(ids, [-100] * prompt + ids[prompt:])


def _micro_batch(vocab: int, pad_id: int):
    rng = random.Random(0)
    rows = [[_example(rng, vocab, n) for n in row] for row in ROWS]
    mb = collate(rows, pad_id)
    assert mb.input_ids.shape == (2, 50) and (mb.labels[1, 35:] == -100).all(), "the second row ends in a pad tail"
    return mb


def _count_sdpa(monkeypatch) -> dict[str, int]:
    """Counts SDPA calls with and without a mask (transformers' path passes one; per example passes none)."""
    counts = {"masked": 0, "causal": 0}
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        counts["masked" if kwargs.get("attn_mask") is not None else "causal"] += 1
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return counts


def _loss_and_grads(model, mb, per_example: bool, bf16: bool = False):
    model.zero_grad(set_to_none=True)
    loss_module = TokenLoss(model)
    with per_example_attention(model, per_example), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        loss = loss_module(mb.input_ids, mb.position_ids, mb.labels)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_close(expected: dict, got: dict, **tol) -> None:
    assert expected.keys() == got.keys() and len(expected) > 10
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, **tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("family", ["smollm2", "qwen2", "mistral", "phi3", "gemma3"])
def test_packed_loss_and_gradients_equal_the_masked_path_in_fp32(family, models, monkeypatch):
    """Llama (SmolLM2), Qwen2, Mistral, Phi-3 (fused qkv) and Gemma 3 (sliding + full layers), all GQA."""
    model = _model(models, family)
    mb = _micro_batch(model.config.vocab_size, pad_id=0)
    counts = _count_sdpa(monkeypatch)
    loss, grads = _loss_and_grads(model, mb, per_example=False)
    layers = model.config.num_hidden_layers
    assert counts == {"masked": layers, "causal": 0}, "today: one masked call per layer over each whole row"
    counts.update(masked=0, causal=0)
    loss_pe, grads_pe = _loss_and_grads(model, mb, per_example=True)
    assert counts == {"masked": 0, "causal": layers * SEGMENTS}, "per example: one unmasked causal call per example"
    torch.testing.assert_close(loss_pe, loss, **FP32)
    _assert_grads_close(grads, grads_pe, **FP32)
    assert model.config._attn_implementation == "sdpa", "the model's own attention is back afterwards"


@pytest.mark.parametrize("family", ["mistral", "gemma3"])
def test_examples_longer_than_a_sliding_window_are_windowed_as_transformers_does(family, models, monkeypatch):
    """A window of 8 tokens: examples of 12-30 tokens see only their last 8 positions, as in transformers' mask."""
    model = _model(models, family, window=8)
    mb = _micro_batch(model.config.vocab_size, pad_id=0)
    loss, grads = _loss_and_grads(model, mb, per_example=False)
    counts = _count_sdpa(monkeypatch)
    loss_pe, grads_pe = _loss_and_grads(model, mb, per_example=True)
    assert counts["masked"] > 0, "examples longer than the window need their own small mask"
    torch.testing.assert_close(loss_pe, loss, **FP32)
    _assert_grads_close(grads, grads_pe, **FP32)
    # without the window the result differs: the test would notice a lever that ignored it
    unwindowed = _model(models, family)
    assert not torch.allclose(_loss_and_grads(unwindowed, mb, per_example=True)[0], loss, rtol=1e-4)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("family", ["smollm2", "qwen2"])
def test_bf16_autocast_stays_within_the_stated_tolerance(family, models):
    model = _model(models, family)
    mb = _micro_batch(model.config.vocab_size, pad_id=0)
    loss, grads = _loss_and_grads(model, mb, per_example=False, bf16=True)
    loss_pe, grads_pe = _loss_and_grads(model, mb, per_example=True, bf16=True)
    assert abs(loss_pe.item() - loss.item()) <= BF16_LOSS_REL * abs(loss.item())
    worst = max(_rel(grads_pe[n], g) for n, g in grads.items())
    assert worst <= BF16_GRAD_REL_NORM, f"worst gradient relative difference {worst:.2e}"


def _pairs(vocab: int):
    from tunewright.data.preference import PreferencePair

    rng = random.Random(1)
    return [PreferencePair(_example(rng, vocab, c), _example(rng, vocab, r)) for c, r in ((14, 9), (11, 16), (7, 6))]


def test_dpo_pair_rows_give_the_same_log_probs_and_gradients(models, monkeypatch):
    """Chosen and rejected answers of several pairs share a row (PairMicroBatch): per answer, not per row."""
    model = _model(models, "smollm2")
    batches = pair_micro_batches(_pairs(model.config.vocab_size), [0, 1, 2], pad_id=0, token_budget=200,
                                 packing=True, row_len=50)
    assert len(batches) == 1 and batches[0].input_ids.shape[0] == 2, "two rows of pairs, one with a pad tail"
    mb = batches[0]
    logps = SequenceLogps(model)

    def run(per_example: bool):
        model.zero_grad(set_to_none=True)
        with per_example_attention(model, per_example):
            out = logps(*mb.model_args())
        (out[0::2] - out[1::2]).sigmoid().log().sum().backward()  # a DPO-shaped use of both answers
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    expected, grads = run(False)
    counts = _count_sdpa(monkeypatch)
    got, grads_pe = run(True)
    assert counts["masked"] == 0 and counts["causal"] > model.config.num_hidden_layers * 6
    torch.testing.assert_close(got, expected, **FP32)
    _assert_grads_close(grads, grads_pe, **FP32)


def test_generation_with_a_cache_keeps_transformers_own_path(models):
    """Decoding (query shorter than keys, a cache) falls back to the mask and SDPA: the same tokens either way."""
    model = _model(models, "qwen2").eval()
    prompt = torch.tensor([[5, 9, 13, 2, 7]])
    expected = model.generate(prompt, max_new_tokens=6, do_sample=False)
    with per_example_attention(model):
        got = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, expected)


def test_a_model_without_sdpa_attention_is_refused(models):
    model = _model(models, "gemma2")
    assert model.config._attn_implementation == "eager", "Gemma 2 soft-caps attention logits, which SDPA cannot"
    with pytest.raises(UserError, match="train.attention=mask"):
        use_per_example_attention(model)
    assert model.config._attn_implementation == "eager"


def _train(model_dir, data, out, attention: str):
    import json

    from tunewright.config import load_config
    from tunewright.train import train

    overrides = ["train.precision=fp32", "train.max_steps=3", "train.batch_size=8", "train.learning_rate=1e-2",
                 "train.threads=1", "eval.after_train=false", "lora.dropout=0", f"train.attention={attention}"]
    result = train(load_config(model=str(model_dir), data__train=str(data), output_dir=str(out), overrides=overrides))
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return torch.tensor(losses), result


def test_a_training_run_with_per_example_attention_matches_the_default(tiny_model_dir, tmp_path, monkeypatch):
    """`--set train.attention=per_example` reaches the loop: no masked SDPA call, the same losses, the model's own attention after."""
    from helpers import write_jsonl

    words = ["apple", "river", "stone", "cloud", "green", "tiger", "paper", "light"] * 3
    data = write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": f"Repeat the word {w}." + " please" * i},
                                                                {"role": "assistant", "content": f"{w} " * (i + 1)}]}
                                                  for i, w in enumerate(words)])
    counts = _count_sdpa(monkeypatch)
    lever, result = _train(tiny_model_dir, data, tmp_path / "per_example", "per_example")
    assert counts["masked"] == 0 and counts["causal"] > 0
    assert "attention: per_example" in (tmp_path / "per_example" / "config.yaml").read_text()
    assert result.model.config._attn_implementation == "sdpa"
    counts.update(masked=0, causal=0)
    default, _ = _train(tiny_model_dir, data, tmp_path / "default", "auto")
    assert counts["masked"] > 0, "auto keeps transformers' mask (until a quiet measurement says otherwise)"
    assert "attention: mask  # auto: mask" in (tmp_path / "default" / "config.yaml").read_text()
    assert len(lever) == 3
    torch.testing.assert_close(lever, default, rtol=1e-5, atol=0)
