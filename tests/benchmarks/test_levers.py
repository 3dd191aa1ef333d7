"""benchmarks/levers.py measures the code the loop ships, and that code keeps the maths (nothing timed here)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import levers

from tunewright.data.templates import TokenizedExample
from tunewright.train import batching, dropout
from tunewright.train.batching import micro_batches, pack_rows


def _ex(n: int, start: int = 0) -> TokenizedExample:
    return TokenizedExample(list(range(start, start + n)), list(range(start, start + n)))


def test_balanced_rows_keep_every_example_within_the_row_length():
    examples = [_ex(n) for n in (131, 60, 78, 95, 64, 80, 72, 110)]  # 790 tokens: two rows of 512 are enough
    rows = pack_rows(examples, 512)
    assert sorted(id(e) for r in rows for e in r) == sorted(id(e) for e in examples)
    lengths = sorted(sum(len(e.input_ids) for e in r) for r in rows)
    assert lengths == [343, 347]  # longest example to the emptiest row; first-fit would give 512 + 278


def test_balanced_rows_add_a_row_when_the_lower_bound_does_not_fit():
    rows = pack_rows([_ex(300), _ex(300), _ex(300)], 512)  # 900 tokens, but no two fit in one row
    assert [len(r) for r in rows] == [1, 1, 1]


def test_an_example_longer_than_the_row_gets_a_row_of_its_own():
    rows = pack_rows([_ex(600), _ex(100), _ex(50)], 512)
    assert sorted(sum(len(e.input_ids) for e in r) for r in rows) == [50, 100, 600]


@pytest.mark.parametrize("batching_name, packing, rows", [("balanced", True, [1, 1]), ("padded", False, [3, 5])])
def test_levers_batch_a_step_exactly_as_the_loop_does(batching_name, packing, rows):
    examples = [_ex(n, start=10 * i) for i, n in enumerate((131, 60, 78, 95, 64, 80, 72, 110))]
    ours = levers._step_batches(examples, batching_name, 0, 512, 512)
    loop = micro_batches(examples, 0, 512, packing, 512)
    assert [len(mb.input_ids) for mb in loop] == rows  # 512-token budget: 2 packed rows of ~345, or 8 padded rows
    assert len(ours) == len(loop)
    for a, b in zip(ours, loop):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.position_ids, b.position_ids)


def test_levers_hold_no_prototype_copies():
    assert not hasattr(levers, "balanced_rows")
    assert levers.micro_batches is batching.micro_batches
    assert levers.FastLoraDropout is dropout.FastLoraDropout
    assert levers.use_fast_lora_dropout is dropout.use_fast_lora_dropout


def test_fast_lora_dropout_keeps_the_distribution_and_gradient():
    torch.manual_seed(0)
    drop = dropout.FastLoraDropout(0.05)
    x = torch.randn(400, 500, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.95) < 0.003  # 200k Bernoulli draws: 4 standard deviations
    torch.testing.assert_close(y[kept], x[kept] / 0.95)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.95)


def test_fast_lora_dropout_follows_torch_seed_and_eval_mode():
    drop = dropout.FastLoraDropout(0.1)
    x = torch.ones(50, 60)
    torch.manual_seed(7)
    a = drop(x)
    torch.manual_seed(7)
    b = drop(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, drop(x))
    drop.eval()
    assert drop(x) is x


def test_swap_replaces_every_peft_dropout(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, target_modules="all-linear"))
    assert dropout.use_fast_lora_dropout(model) == 2 * 7  # 2 layers x 7 linear layers
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for n, m in model.named_modules() if "lora_dropout" in n)


def test_padding_rows_to_one_compiled_width_keeps_the_loss():
    from helpers import build_tiny_model, build_tokenizer

    from tunewright.models import ensure_pad_token
    from tunewright.train.loop import TokenLoss

    tok = build_tokenizer("chatml")
    ensure_pad_token(tok)
    model = build_tiny_model(tok, seed=4).eval()
    mb = micro_batches([_ex(n, start=5 * i) for i, n in enumerate((40, 25, 31))], tok.pad_token_id, 512, True, 128)[0]
    wide = levers.padded_to(mb, 128, tok.pad_token_id)
    assert wide.input_ids.shape[1] == 128 > mb.input_ids.shape[1] and wide.trained_tokens == mb.trained_tokens
    with torch.no_grad():
        loss = TokenLoss(model)
        torch.testing.assert_close(loss(wide.input_ids, wide.position_ids, wide.labels),
                                   loss(mb.input_ids, mb.position_ids, mb.labels), rtol=1e-5, atol=1e-5)
