"""The fused LoRA op keeps PEFT's maths: same outputs and gradients (x, A, B) as PEFT's forward and backward.

Both sides draw their dropout masks from `dropout_keep_mask` in the same order (PEFT's side through
the `FastLoraDropout` the loop swaps in), so one seed gives both the same mask and the comparison
is exact up to rounding. Tolerances:
- fp32: 1e-5 (relative and absolute): the same matmuls, summed in another order.
- bf16 autocast: both sides run every matmul in bf16 (rounding step 2^-8 = 3.9e-3) but round in
  different places (the fused op adds the scaled LoRA product inside one addmm, PEFT rounds it to
  bf16 first; gradients are sums over tokens, so one element may move by more than its own rounding
  step). Held to: ||fused - PEFT|| <= 1.5e-2 ||PEFT|| for the output and each gradient, and the same
  bound to the fp32 result. Measured over 20 seeds: at most 5.1e-3 fused vs PEFT, 4.6e-3 either vs fp32.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunewright.train import fused_lora
from tunewright.train.dropout import use_fast_lora_dropout
from tunewright.train.fused_lora import FusedLoraLinear, use_fused_lora

FP32_TOL = {"rtol": 1e-5, "atol": 1e-5}
BF16_REL_NORM = 1.5e-2
IN, OUT, R = 48, 40, 8
NAMES = ("y", "x.grad", "A.grad", "B.grad")


class Net(torch.nn.Module):
    def __init__(self, bias: bool):
        super().__init__()
        self.proj = torch.nn.Linear(IN, OUT, bias=bias)

    def forward(self, x):
        return self.proj(x)


def _peft_pair(dropout: float, bias: bool = True, **lora) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(PEFT as the loop had it: FastLoraDropout; the same model with the fused op), LoRA B random, not zero."""
    torch.manual_seed(0)
    cfg = LoraConfig(r=R, lora_alpha=16, lora_dropout=dropout, target_modules=["proj"], init_lora_weights=False, **lora)
    stock = get_peft_model(Net(bias), cfg)
    use_fast_lora_dropout(stock)
    fused = copy.deepcopy(stock)
    fused.base_model.model.proj.__class__ = FusedLoraLinear  # what use_fused_lora does (DoRA layers included here)
    return stock.train(), fused.train()


def _count_fused_calls(monkeypatch) -> list[int]:
    calls = [0]
    apply = fused_lora._FusedLora.apply

    def counting(*args):
        calls[0] += 1
        return apply(*args)

    monkeypatch.setattr(fused_lora._FusedLora, "apply", counting)
    return calls


def _forward_backward(model, x, upstream, autocast: bool, seed: int = 1):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = model(x)
    y.backward(upstream.to(y.dtype))
    layer = model.base_model.model.proj
    return y, x.grad, layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad


def _assert_same(stock_out, fused_out, tol):
    for name, a, b in zip(NAMES, stock_out, fused_out, strict=True):
        assert a.dtype == b.dtype, f"{name}: PEFT gives {a.dtype}, fused {b.dtype}"
        torch.testing.assert_close(b.float(), a.float(), **tol, msg=lambda m, n=name: f"{n}: {m}")


def _assert_near(expected, got, bound: float):
    for name, a, b in zip(NAMES, expected, got, strict=True):
        relative = ((b.float() - a.float()).norm() / a.float().norm()).item()
        assert relative <= bound, f"{name}: relative difference {relative:.2e} > {bound}"


@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_equals_peft_forward_and_gradients_in_fp32(dropout, rslora, bias, monkeypatch):
    stock, fused = _peft_pair(dropout, bias, use_rslora=rslora)
    calls = _count_fused_calls(monkeypatch)
    x, upstream = torch.randn(3, 5, IN), torch.randn(3, 5, OUT)
    expected = _forward_backward(stock, x, upstream, autocast=False)
    assert calls[0] == 0
    got = _forward_backward(fused, x, upstream, autocast=False)
    assert calls[0] == 1, "the fused op must have run"
    _assert_same(expected, got, FP32_TOL)
    assert fused.base_model.model.proj.scaling["default"] == (16 / R**0.5 if rslora else 16 / R)


@pytest.mark.parametrize("base_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_fused_equals_peft_under_bf16_autocast_with_fp32_lora_grads(base_dtype, dropout, monkeypatch):
    """Autocast as the loop runs bf16: bf16 output, fp32 masters get fp32 grads; the base may be stored in bf16."""
    stock, fused = _peft_pair(dropout)
    for model in (stock, fused):
        model.base_model.model.proj.base_layer.to(base_dtype)
    fp32_truth = _peft_pair(dropout)[0]
    calls = _count_fused_calls(monkeypatch)
    x, upstream = torch.randn(3, 5, IN), torch.randn(3, 5, OUT)
    expected = _forward_backward(stock, x, upstream, autocast=True)
    got = _forward_backward(fused, x, upstream, autocast=True)
    assert calls[0] == 1
    assert [t.dtype for t in got] == [t.dtype for t in expected] == [torch.bfloat16] + [torch.float32] * 3, \
        "bf16 output; x and the fp32 LoRA masters get fp32 grads, as under autocast"
    _assert_near(expected, got, BF16_REL_NORM)
    _assert_near(_forward_backward(fp32_truth, x, upstream, autocast=False), got, BF16_REL_NORM)


def test_the_mask_is_the_one_fast_lora_dropout_draws():
    """Dropout really is applied (at 0.5 a wrong or missing mask could not pass the fp32 comparison) and is FastLoraDropout's."""
    stock, fused = _peft_pair(0.5)
    x, upstream = torch.randn(4, IN), torch.randn(4, OUT)
    no_dropout = copy.deepcopy(fused).eval()
    _assert_same(_forward_backward(stock, x, upstream, False), _forward_backward(fused, x, upstream, False), FP32_TOL)
    assert not torch.allclose(_forward_backward(fused, x, upstream, False)[0], no_dropout(x))
    assert not torch.allclose(_forward_backward(fused, x, upstream, False, seed=1)[0],
                              _forward_backward(fused, x, upstream, False, seed=2)[0])


def test_saves_one_byte_mask_and_low_rank_activation_instead_of_a_dropped_copy_of_x():
    """Per adapted layer, beyond x itself and the weights, the op keeps a bool mask and an (n, r) activation."""
    stock, fused = _peft_pair(0.1)

    def saved_by(model, x) -> list[torch.Tensor]:
        saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            model(x)
        return saved

    x = torch.randn(64, IN, requires_grad=True)
    params = {p.data_ptr() for p in fused.parameters()}
    extra = [t for t in saved_by(fused, x) if t.data_ptr() not in params | {x.data_ptr()}]
    assert sorted((tuple(t.shape), t.dtype) for t in extra) == [((64, R), torch.float32), ((64, IN), torch.bool)]
    stock_x_sized = [t for t in saved_by(stock, x) if t.shape == x.shape and t.dtype == torch.float32
                     and t.data_ptr() != x.data_ptr()]
    assert stock_x_sized, "PEFT keeps a dropped-out fp32 copy of x: what the fused op saves"


def test_disabled_adapter_gives_the_base_output_in_training(monkeypatch):
    """The DPO reference pass disables the adapter: base output only, PEFT's path, no fused op."""
    _, fused = _peft_pair(0.2)
    calls = _count_fused_calls(monkeypatch)
    x = torch.randn(6, IN)
    base = fused.base_model.model.proj.base_layer
    with fused.disable_adapter():
        torch.testing.assert_close(fused(x), base(x), rtol=0, atol=0)
    assert calls[0] == 0
    assert not torch.allclose(fused(x), base(x)) and calls[0] == 1


def test_eval_no_grad_and_two_active_adapters_use_peft_forward(monkeypatch):
    stock, fused = _peft_pair(0.2)
    calls = _count_fused_calls(monkeypatch)
    x = torch.randn(6, IN)
    torch.testing.assert_close(fused.eval()(x), stock.eval()(x), rtol=0, atol=0)
    fused.train()
    with torch.no_grad():
        fused(x)
    assert calls[0] == 0
    fused.add_adapter("second", LoraConfig(r=2, lora_alpha=4, target_modules=["proj"], init_lora_weights=False))
    fused.base_model.set_adapter(["default", "second"])
    layer = fused.base_model.model.proj
    assert isinstance(layer, FusedLoraLinear) and len(layer.active_adapters) == 2
    fused(x.requires_grad_(True))
    assert calls[0] == 0, "two active adapters: PEFT's forward sums them"


def test_dora_falls_back_to_peft_forward_with_the_same_gradients(monkeypatch):
    stock, fused = _peft_pair(0.2, use_dora=True)
    assert use_fused_lora(stock) == 0, "a DoRA layer is not swapped"
    fused.base_model.model.proj.__class__ = FusedLoraLinear  # and were it swapped, its forward would be PEFT's
    calls = _count_fused_calls(monkeypatch)
    x, upstream = torch.randn(3, 5, IN), torch.randn(3, 5, OUT)
    _assert_same(_forward_backward(stock, x, upstream, False), _forward_backward(fused, x, upstream, False), FP32_TOL)
    assert calls[0] == 0, "DoRA's magnitude vector is not in the fused op: PEFT's forward must run"


def test_state_dict_and_merge_are_peft_s(tmp_path):
    stock, fused = _peft_pair(0.1)
    assert use_fused_lora(copy.deepcopy(stock)) == 1
    assert stock.state_dict().keys() == fused.state_dict().keys()
    fused.save_pretrained(tmp_path / "adapter")
    from peft import PeftModel

    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(Net(True), tmp_path / "adapter").eval()
    x = torch.randn(4, IN)
    torch.testing.assert_close(loaded(x), stock.eval()(x), **FP32_TOL)
    merged = fused.eval().merge_and_unload()
    assert type(merged.proj) is torch.nn.Linear
    torch.testing.assert_close(merged(x), stock(x), **FP32_TOL)


def test_train_fused_lora_gives_the_loop_the_fused_op_on_cpu(tiny_model_dir):
    from tunewright.config import load_config
    from tunewright.models import load_model
    from tunewright.train.methods import apply_method

    def fused_layers(*overrides: str) -> int:
        model = apply_method(load_model(str(tiny_model_dir)), load_config(model=str(tiny_model_dir), overrides=list(overrides)))
        return sum(isinstance(m, FusedLoraLinear) for m in model.modules())

    assert fused_layers() == 2 * 7, "on by default: every adapted linear layer of the 2-block Llama"
    assert fused_layers("train.fused_lora=false") == 0, "false keeps PEFT's forward"
    assert fused_layers("train.fused_lora=true", "method=dora") == 0, "DoRA keeps PEFT's layer"


def _losses_and_adapter(model_dir, data, out, precision: str, fused: bool):
    from safetensors.torch import load_file

    from tunewright.config import load_config
    from tunewright.train import train

    overrides = [f"train.precision={precision}", "train.max_steps=6", "train.batch_size=8", "train.learning_rate=1e-2",
                 "lora.dropout=0.1", "train.threads=1", "eval.after_train=false", f"train.fused_lora={str(fused).lower()}"]
    train(load_config(model=str(model_dir), data__train=str(data), output_dir=str(out), overrides=overrides))
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return torch.tensor(losses), load_file(str(out / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("precision, rtol", [("fp32", 1e-5), ("bf16", 1e-3)])
def test_a_training_run_with_the_fused_op_matches_one_without(precision, rtol, tiny_model_dir, tmp_path, monkeypatch):
    """Same seed, same masks: the fused run's losses (6 steps, dropout 0.1) and adapter equal PEFT's.

    fp32: 1e-5 relative (summation order). bf16: 1e-3 relative on the losses, the bound
    tests/train/test_bf16.py holds bf16 to against fp32; adapters within 2e-2 of their norm.
    """
    from helpers import repeat_word_rows, write_jsonl

    from tunewright.train.hparams import native_bf16

    if precision == "bf16" and not native_bf16(torch.device("cpu")):
        pytest.skip("no native bf16 on this CPU (emulated bf16 is ~100x slower)")
    data = write_jsonl(tmp_path / "train.jsonl", repeat_word_rows(48))
    calls = _count_fused_calls(monkeypatch)
    fused_losses, fused_adapter = _losses_and_adapter(tiny_model_dir, data, tmp_path / "fused", precision, fused=True)
    assert calls[0] > 0, "the fused run must use the fused op"
    calls[0] = 0
    peft_losses, peft_adapter = _losses_and_adapter(tiny_model_dir, data, tmp_path / "peft", precision, fused=False)
    assert calls[0] == 0
    assert len(fused_losses) == 6 and peft_losses[-1] < peft_losses[0]
    torch.testing.assert_close(fused_losses, peft_losses, rtol=rtol, atol=0)
    assert fused_adapter.keys() == peft_adapter.keys()
    for key, value in peft_adapter.items():
        relative = ((fused_adapter[key] - value).norm() / value.norm()).item()
        assert relative < (1e-4 if precision == "fp32" else 2e-2), (key, relative)
