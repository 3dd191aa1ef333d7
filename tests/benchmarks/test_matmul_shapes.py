"""benchmarks/matmul_shapes.py times the products a LoRA step does at a model's real width (shapes, not speed)."""
from __future__ import annotations

import sys
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import matmul_shapes


def test_one_layers_products_are_the_decoder_layers_linear_weights():
    """The listed (in, out) pairs are exactly the frozen linear weights of a real SmolLM2-135M-shaped layer."""
    hidden, intermediate, heads, kv_heads, _head_dim = matmul_shapes.SHAPES["smollm2-135m"]
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, num_hidden_layers=1, vocab_size=32)
    layer = LlamaForCausalLM(config).model.layers[0]
    real = sorted((m.in_features, m.out_features) for m in layer.modules() if m.__class__.__name__ == "Linear")
    listed = sorted((i, o) for _, i, o in matmul_shapes.layer_products(*matmul_shapes.SHAPES["smollm2-135m"]))
    assert listed == real


def test_measure_times_forward_and_input_gradient_of_every_product():
    r = matmul_shapes.measure("smollm2-135m", tokens=8, dtype_name="float32", budget_s=0.001)
    assert len(r["products"]) == 14
    assert {(p["k"], p["n"]) for p in r["products"] if p["product"] == "down input grad"} == {(576, 1536)}
    assert r["layer_gflops"] > 0
