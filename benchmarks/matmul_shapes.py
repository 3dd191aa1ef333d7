"""How fast the CPU runs the matmuls a LoRA step really does, against the 4096² peak that MFU is quoted against.

Issue 13 asks for >= 50% of the bf16 matmul peak. That peak is `torch.mm` on 4096 x 4096 matrices; a LoRA step at
SmolLM2-135M's width multiplies a 512-token micro-batch by 576-wide weights. This times, per dtype, every frozen
linear layer's forward (x @ W^T) and input-gradient (g @ W) product of one decoder layer at the loop's
micro-batch size, then the FLOP-weighted rate over the layer: the MFU a step would reach if everything but these
matmuls were free. Nothing downloads: the shapes are the published configs' (the same as benchmarks/attention.py
and varlen.py's random-init shapes).

    python benchmarks/matmul_shapes.py --threads 2                       # SmolLM2-135M and Qwen2.5-0.5B, fp32 + bf16
    python benchmarks/matmul_shapes.py --model qwen2.5-0.5b --tokens 1024
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import matmul_peak  # noqa: E402

# hidden, intermediate, query heads, key-value heads, head dim (config.json of each model)
SHAPES = {
    "smollm2-135m": (576, 1536, 9, 3, 64),
    "qwen2.5-0.5b": (896, 4864, 14, 2, 64),
    "llama-3.2-1b": (2048, 8192, 32, 8, 64),
}
LAYERS = {"smollm2-135m": 30, "qwen2.5-0.5b": 24, "llama-3.2-1b": 16}


def layer_products(hidden: int, intermediate: int, heads: int, kv_heads: int, head_dim: int) -> list[tuple[str, int, int]]:
    """(name, in, out) of each frozen linear layer in one decoder layer (attention q/k/v/o, MLP gate/up/down)."""
    q, kv = heads * head_dim, kv_heads * head_dim
    return [("q", hidden, q), ("k", hidden, kv), ("v", hidden, kv), ("o", q, hidden),
            ("gate", hidden, intermediate), ("up", hidden, intermediate), ("down", intermediate, hidden)]


def seconds_per_mm(m: int, k: int, n: int, dtype: torch.dtype, budget_s: float, copies: int = 1) -> float:
    """Sustained seconds of one (m x k) @ (k x n): as many repetitions as fill the budget, after a warm-up.

    With `copies` > 1 the weight cycles through that many distinct matrices, one per decoder layer, as a step
    does: the weights then come from memory, not from a cache that holds the one matrix repeated.
    """
    a = torch.randn(m, k).to(dtype)
    weights = [torch.randn(k, n).to(dtype) for _ in range(copies)]
    torch.mm(a, weights[0])
    start = time.perf_counter()
    torch.mm(a, weights[-1])
    once = max(time.perf_counter() - start, 1e-7)
    reps = max(3 * copies, min(2000, int(budget_s / once)))
    start = time.perf_counter()
    for i in range(reps):
        torch.mm(a, weights[i % copies])
    return (time.perf_counter() - start) / reps


def measure(model: str, tokens: int, dtype_name: str, budget_s: float, streamed: bool = True) -> dict:
    """Each product's GFLOP/s and the layer's FLOP-weighted rate (total FLOPs / total time); `streamed`: one weight per layer."""
    dtype = getattr(torch, dtype_name)
    rows, flops, seconds = [], 0.0, 0.0
    for name, fan_in, fan_out in layer_products(*SHAPES[model]):
        for direction, (k, n) in (("forward", (fan_in, fan_out)), ("input grad", (fan_out, fan_in))):
            s = seconds_per_mm(tokens, k, n, dtype, budget_s, LAYERS[model] if streamed else 1)
            f = 2.0 * tokens * k * n
            rows.append({"product": f"{name} {direction}", "m": tokens, "k": k, "n": n, "gflops": f / s / 1e9})
            flops, seconds = flops + f, seconds + s
    return {"model": model, "dtype": dtype_name, "tokens": tokens, "streamed": streamed, "products": rows,
            "layer_gflops": flops / seconds / 1e9}


def summary_line(r: dict) -> str:
    weights = f"one weight per layer ({LAYERS[r['model']]})" if r["streamed"] else "one weight, cache-warm"
    slowest = min(r["products"], key=lambda x: x["gflops"])["product"]
    return (f"{r['model']:14s} {r['dtype']:9s} {r['tokens']} tokens, {weights:28s}: {r['layer_gflops']:7.1f} GFLOP/s = "
            f"{r['share_of_peak']:.0%} of the 4096² peak ({r['peak_gflops']:.0f}); slowest product {slowest}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", choices=sorted(SHAPES), help="repeatable; default: 135M and 0.5B")
    p.add_argument("--tokens", type=int, default=512, help="rows of each product: the loop's CPU micro-batch is 512")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--budget", type=float, default=0.3, help="seconds per product")
    p.add_argument("--peak-budget", type=float, default=20.0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for dtype_name in args.dtypes.split(","):
        peak = matmul_peak(dtype_name, threads=args.threads, budget_s=args.peak_budget)["flops_per_s"] / 1e9
        for model in args.model or ["smollm2-135m", "qwen2.5-0.5b"]:
            for streamed in (False, True):
                r = measure(model, args.tokens, dtype_name, args.budget, streamed)
                r["peak_gflops"], r["share_of_peak"] = peak, r["layer_gflops"] / peak
                results.append(r)
                print(summary_line(r), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"threads": args.threads, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
