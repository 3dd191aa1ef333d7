"""Attention inside packed rows: transformers' dense mask vs one causal SDPA call per example (`train.attention`).

A micro-benchmark, nothing downloads: a randomly initialised model of SmolLM2-135M's shape (30 layers,
hidden 576, 9 query / 3 key-value heads, vocabulary 49,152) with LoRA r16 on every linear layer, as the
loop trains it. Examples of 60..512 tokens (skewed short, like benchmarks/varlen_data.py) are packed into
rows of 512 with the loop's own `micro_batches` (budget 512: one row per micro-batch). Each timed step is
forward + backward of tunewright's `TokenLoss` over the same micro-batches, and the variants alternate
step by step in one process, so they share whatever load the machine has. Reported per variant: real
tokens/s on the wall clock and per CPU-second of this process (which other processes' load inflates far
less), and the 1-minute load average before and after.

    python benchmarks/attention.py --threads 2 --steps 8                 # model: mask vs per_example, fp32 and bf16
    python benchmarks/attention.py --part attention --threads 2 --steps 20   # one attention layer's fwd+bwd alone
    python benchmarks/attention.py --part attention --flex                # + flex_attention (torch.compile) and its compile time

`--part attention` times one layer's attention (q, k, v of a packed 512 row) under the three ways:
`mask` (transformers' SDPA attention with the mask `create_causal_mask` builds, mask building included),
`per_example` (train/packed_attention.py) and, with `--flex`, flex_attention with a block mask.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

from tunewright.data.templates import TokenizedExample
from tunewright.train.batching import micro_batches
from tunewright.train.packed_attention import per_example_attention

SMOLLM2_135M = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192,
                "rope_theta": 100000.0, "tie_word_embeddings": True, "rms_norm_eps": 1e-5}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("model", "attention"), default="model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant (after one warm-up step each)")
    p.add_argument("--examples", type=int, default=8, help="examples per step (one optimizer step's worth)")
    p.add_argument("--row-len", type=int, default=512)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--layers", type=int, default=None, help="fewer decoder layers (a quicker, smaller model)")
    p.add_argument("--flex", action="store_true", help="--part attention: add flex_attention (compiled) as a variant")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p


def example_lengths(n: int, seed: int, low: int = 60, high: int = 512) -> list[int]:
    """Lengths skewed short (a squared uniform), as in benchmarks/varlen_data.py."""
    rng = random.Random(seed)
    return [int(low + (high - low) * rng.random() ** 2) for _ in range(n)]


def step_batches(step: int, args, vocab: int):
    rng = random.Random(step)
    examples = []
    for n in example_lengths(args.examples, seed=step, high=args.row_len):
        ids = [rng.randrange(3, vocab) for _ in range(n)]
        examples.append(TokenizedExample(ids, [-100] * (n // 3) + ids[n // 3:]))
    return micro_batches(examples, 0, args.row_len, True, args.row_len)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def build_model(layers: int | None):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunewright.train.dropout import use_fast_lora_dropout

    torch.manual_seed(0)
    shape = dict(SMOLLM2_135M, num_hidden_layers=layers or SMOLLM2_135M["num_hidden_layers"])
    model = get_peft_model(LlamaForCausalLM(LlamaConfig(**shape)), LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"))
    use_fast_lora_dropout(model)
    return model.train()


def time_model(args) -> list[dict]:
    from tunewright.train.loop import TokenLoss

    model = build_model(args.layers)
    loss = TokenLoss(model)
    variants = [(p, a) for p in args.precisions.split(",") for a in ("mask", "per_example")]
    stats = {v: {"tokens": 0, "wall": 0.0, "cpu": 0.0, "losses": []} for v in variants}
    for step in range(args.steps + 1):
        batches = step_batches(step, args, SMOLLM2_135M["vocab_size"])
        for precision, attention in variants:
            start, cpu = time.perf_counter(), time.process_time()
            total = 0.0
            with per_example_attention(model, attention == "per_example"), \
                    torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                for mb in batches:
                    value = loss(mb.input_ids, mb.position_ids, mb.labels)
                    value.backward()
                    total += value.item()
            model.zero_grad(set_to_none=True)
            if step:  # the first step warms up
                s = stats[(precision, attention)]
                s["tokens"] += sum(mb.real_tokens for mb in batches)
                s["wall"] += time.perf_counter() - start
                s["cpu"] += time.process_time() - cpu
                s["losses"].append(round(total, 4))
        print(f"step {step} done (load {load_average()})", file=sys.stderr)
    return [{"precision": p, "attention": a, "tokens_per_s": s["tokens"] / s["wall"],
             "tokens_per_cpu_s": s["tokens"] / s["cpu"], "step_losses": s["losses"]} for (p, a), s in stats.items()]


def _qkv(lengths: list[int], row_len: int, dtype: torch.dtype):
    heads, kv_heads, dim = 9, 3, 64
    width = row_len
    positions = [i for n in lengths for i in range(n)]
    position_ids = torch.tensor([positions + list(range(width - len(positions)))])
    q = torch.randn(1, heads, width, dim, dtype=dtype, requires_grad=True)
    k = torch.randn(1, kv_heads, width, dim, dtype=dtype, requires_grad=True)
    v = torch.randn(1, kv_heads, width, dim, dtype=dtype, requires_grad=True)
    return q, k, v, position_ids


def attention_variants(flex: bool) -> dict:
    """name -> f(q, k, v, position_ids) -> output, each with what it needs built inside (masks included)."""
    from transformers import LlamaConfig
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import create_causal_mask

    from tunewright.train.packed_attention import per_example_attention_forward

    config = LlamaConfig(**SMOLLM2_135M)
    config._attn_implementation = "sdpa"
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 3, True

    def mask(q, k, v, pos):
        embeds = torch.empty(1, q.shape[2], 1, dtype=q.dtype)
        m = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=None, cache=None, position_ids=pos)
        return sdpa_attention_forward(module, q, k, v, m, scaling=q.shape[-1] ** -0.5)[0]

    def per_example(q, k, v, pos):
        return per_example_attention_forward(module, q, k, v, None, scaling=q.shape[-1] ** -0.5, position_ids=pos)[0]

    variants = {"mask": mask, "per_example": per_example}
    if flex:
        variants["flex"] = flex_variant()
    return variants


def flex_variant():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)

    def flex(q, k, v, pos):
        starts = torch.ones_like(pos, dtype=torch.bool)
        starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
        doc = starts.cumsum(-1)[0]

        def same_example_causal(b, h, qi, ki):
            return (doc[qi] == doc[ki]) & (qi >= ki)

        block = create_block_mask(same_example_causal, None, None, q.shape[2], k.shape[2], device="cpu")
        return compiled(q, k, v, block_mask=block, enable_gqa=True).transpose(1, 2)

    return flex


def time_attention(args) -> list[dict]:
    variants = attention_variants(args.flex)
    results = []
    for precision in args.precisions.split(","):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        stats = {name: {"wall": [], "cpu": []} for name in variants}
        first = {}
        for step in range(args.steps + 1):
            lengths = [n for n in example_lengths(16, seed=step, high=args.row_len)]
            row, used = [], 0
            for n in lengths:  # one packed row: examples while they fit
                if used + n <= args.row_len:
                    row.append(n)
                    used += n
            q, k, v, pos = _qkv(row, args.row_len, dtype)
            grad = torch.randn(1, args.row_len, 9, 64, dtype=dtype)
            for name, f in variants.items():
                for t in (q, k, v):
                    t.grad = None
                start, cpu = time.perf_counter(), time.process_time()
                f(q, k, v, pos).backward(grad)
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                if step == 0:
                    first[name] = wall  # includes flex's compile
                else:
                    stats[name]["wall"].append(wall)
                    stats[name]["cpu"].append(cpu)
            print(f"{precision} step {step} done (load {load_average()})", file=sys.stderr)
        for name, s in stats.items():
            results.append({"precision": precision, "attention": name, "median_ms": 1000 * sorted(s["wall"])[len(s["wall"]) // 2],
                            "median_cpu_ms": 1000 * sorted(s["cpu"])[len(s["cpu"]) // 2], "first_call_s": round(first[name], 2)})
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = load_average()
    results = time_model(args) if args.part == "model" else time_attention(args)
    report = {"part": args.part, "threads": args.threads, "steps": args.steps, "row_len": args.row_len,
              "load_before": load_before, "load_after": load_average(), "results": results}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
