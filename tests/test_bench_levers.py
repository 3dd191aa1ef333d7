"""The lever prototypes in benchmarks/levers.py keep the maths (nothing timed here)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import levers  # noqa: E402
from tunewright.data.templates import TokenizedExample  # noqa: E402


def _ex(n: int) -> TokenizedExample:
    return TokenizedExample(list(range(n)), list(range(n)))


def test_balanced_rows_keep_every_example_within_the_row_length():
    examples = [_ex(n) for n in (131, 60, 78, 95, 64, 80, 72, 110)]
    rows = levers.balanced_rows(examples, 512)
    assert sorted(id(e) for r in rows for e in r) == sorted(id(e) for e in examples)
    lengths = [sum(len(e.input_ids) for e in r) for r in rows]
    assert len(rows) == 2 and max(lengths) <= 512 and max(lengths) - min(lengths) <= 131


def test_balanced_rows_add_a_row_when_the_lower_bound_does_not_fit():
    rows = levers.balanced_rows([_ex(300), _ex(300), _ex(300)], 512)  # 900 tokens, but no two fit in one row
    assert len(rows) == 3


def test_fast_lora_dropout_keeps_the_distribution_and_gradient():
    torch.manual_seed(0)
    drop = levers.FastLoraDropout(0.05)
    x = torch.randn(400, 500, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.95) < 0.003  # 200k Bernoulli draws: 4 standard deviations
    torch.testing.assert_close(y[kept], x[kept] / 0.95)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.95)


def test_fast_lora_dropout_follows_torch_seed_and_eval_mode():
    drop = levers.FastLoraDropout(0.1)
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
    assert levers.use_fast_lora_dropout(model) == 2 * 7  # 2 layers x 7 linear layers
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for n, m in model.named_modules() if "lora_dropout" in n)
