"""Lever micro-benchmarks: each speed/memory lever measured on its own, on SmolLM2-135M + LoRA r16 all-linear.

Every variant runs in its own process (so peak RSS belongs to it alone) and does what a training
step does: forward + backward of tunewright's `TokenLoss` over the micro-batches of one optimizer
step (8 examples of the example data), then an AdamW step. It reports real tokens/s over the steps
after the first, pad share, peak RSS and the losses (for parity). The `default` variant is the
training loop as it stands; every other variant changes one thing.

    python benchmarks/levers.py --out benchmarks/out/levers.json            # all levers
    python benchmarks/levers.py --only packing,dropout --steps 4
    python benchmarks/levers.py --only bf16_base --threads 1 --profile 25   # + torch.profiler's top ops per variant
    python benchmarks/levers.py --only interleaved_bf16 --threads 1 --steps 7  # bf16 vs bf16_base, step by step in one process
    python benchmarks/levers.py --only interleaved_lora,fused_lora --threads 1 --steps 6  # fused LoRA op vs PEFT, fp32 and bf16

Both prototypes that were measured here (balanced packing rows, `FastLoraDropout`) now live in
`tunewright.train`, and the levers measure that shipped code: `balanced` is the loop's own packing
(so it matches `default`), kept as a name so older result files still compare.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from tunewright.train.batching import micro_batches
from tunewright.train.dropout import (  # noqa: F401
    FastLoraDropout,
    dropout_keep_mask,
    use_fast_lora_dropout,
)
from tunewright.train.fused_lora import FusedLoraLinear, PeftLoraLinear

VARIANTS = {
    # name: what changes relative to "default" (the loop as it stands)
    "default": {},
    "padded": {"batching": "padded"},
    "balanced": {"batching": "balanced"},
    "full_logits": {"chunked": False},
    "fast_dropout": {"dropout": "fast"},
    "balanced_fast_dropout": {"batching": "balanced", "dropout": "fast"},
    "checkpointing": {"checkpointing": True},
    "best": {"batching": "balanced", "dropout": "fast"},
    "best_budget_512": {"batching": "balanced", "dropout": "fast", "budget": 512},
    "best_budget_256": {"batching": "balanced", "dropout": "fast", "budget": 256, "row_len": 256},
    "best_threads_1": {"batching": "balanced", "dropout": "fast", "threads": 1},
    "best_checkpointing": {"batching": "balanced", "dropout": "fast", "checkpointing": True},
    "threads_1": {"threads": 1},
    "compile": {"compile": True},
    "best_compile": {"batching": "balanced", "dropout": "fast", "compile": True},
    "adamw_fused": {"optimizer": "fused"},
    "adamw_foreach": {"optimizer": "foreach"},
    # bf16 autocast as the loop runs it on bf16 CPUs: the fp32 base cast in every forward, or stored in bf16 once
    "bf16": {"precision": "bf16"},
    "bf16_base": {"precision": "bf16", "bf16_base": True},
    # every frozen weight in bf16 (embeddings and norms too), so the residual stream itself is bf16 (torchtune's default)
    "bf16_residual": {"precision": "bf16", "bf16_base": "all", "lora": "fused"},
    # train.fused_lora: each LoRA layer's training forward as one op (train/fused_lora.py) instead of PEFT's
    "fused_lora": {"lora": "fused"},
    "bf16_fused_lora": {"precision": "bf16", "lora": "fused"},
    # the loop as it runs on a bf16 CPU (bf16, fused LoRA, 512-token micro-batches: one row each), and the same with
    # each decoder layer compiled (inductor) and every row padded to 512, so one compiled shape serves every step
    "loop_bf16": {"precision": "bf16", "lora": "fused", "budget": 512},
    "loop_bf16_layer_compile": {"precision": "bf16", "lora": "fused", "budget": 512, "layer_compile": True},
}
LEVERS = {
    "packing": ["default", "padded", "balanced"],
    "loss": ["default", "full_logits"],
    "dropout": ["default", "fast_dropout", "balanced_fast_dropout"],
    "checkpointing": ["default", "checkpointing"],
    "memory": ["best", "best_budget_512", "best_budget_256", "best_checkpointing"],
    "threads": ["default", "threads_1"],
    "optimizer": ["default", "adamw_fused", "adamw_foreach"],
    "compile": ["best", "best_compile"],
    "bf16_base": ["bf16", "bf16_base"],
    "bf16_residual": ["bf16_fused_lora", "bf16_residual"],
    "fused_lora": ["default", "fused_lora", "bf16", "bf16_fused_lora"],
    "layer_compile": ["loop_bf16", "loop_bf16_layer_compile"],
}


def _examples(model: str, data: str, max_len: int):
    from tunewright.config import load_config
    from tunewright.data import prepare_data
    from tunewright.models import load_tokenizer, local_model_dir

    model_dir = local_model_dir(model)
    tokenizer = load_tokenizer(model_dir)
    cfg = load_config(model=model, overrides=[f"data.train={data}", f"data.max_seq_len={max_len}"])
    return model_dir, tokenizer, cfg, prepare_data(cfg, tokenizer).train


def _step_batches(examples, batching: str, pad_id: int, budget: int, max_len: int):
    """One step's micro-batches from the loop's own `micro_batches`: packed (balanced rows) or one example per row."""
    return micro_batches(examples, pad_id, budget, batching != "padded", max_len)


def run_variant(name: str, args) -> dict:
    """Train `args.steps` optimizer steps with one variant; tokens/s over steps 2..N, peak RSS, losses."""
    v = {"batching": "balanced", "chunked": True, "dropout": "peft", "checkpointing": False, "threads": args.threads,
         "compile": False, "optimizer": "default", "budget": 4096, "precision": "fp32", "bf16_base": False, "lora": "peft",
         "layer_compile": False, **VARIANTS[name]}
    torch.set_num_threads(v["threads"])
    torch.manual_seed(0)
    from tunewright.models import load_model
    from tunewright.train.batching import step_example_ids
    from tunewright.train.loop import TokenLoss
    from tunewright.train.methods import apply_method

    model_dir, tokenizer, cfg, examples = _examples(args.model, args.data, args.max_len)
    model = apply_method(load_model(model_dir), cfg)
    if v["bf16_base"]:
        from tunewright.train.frozen_base import store_frozen_base_in_bf16

        store_frozen_base_in_bf16(model, everything=v["bf16_base"] == "all")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=v["precision"] == "bf16")
    if v["dropout"] == "fast":
        use_fast_lora_dropout(model)
    set_lora_forward(model, v["lora"])
    if v["checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if v["layer_compile"]:
        for layer in model.get_base_model().model.layers:
            layer.compile(dynamic=False)
    loss_module = TokenLoss(model, chunked=v["chunked"])
    loss_module.train()
    forward = torch.compile(loss_module, dynamic=True) if v["compile"] else loss_module
    setup_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # imports, data, model: before any step
    params = [p for p in model.parameters() if p.requires_grad]
    opt_kwargs = {"fused": {"fused": True}, "foreach": {"foreach": True}, "default": {}}[v["optimizer"]]
    optimizer = torch.optim.AdamW(params, lr=2e-4, **opt_kwargs)
    seconds, real, padded, losses = [], [], [], []
    profiler = _profiler(args.profile)
    for step in range(args.steps):
        if step == 1:
            profiler.start()  # the first step (allocations, one-off work) is not timed, nor profiled
        _, ids = step_example_ids(len(examples), args.micro_batch, 42, step)
        mbs = _step_batches([examples[i] for i in ids], v["batching"], tokenizer.pad_token_id, v["budget"],
                            v.get("row_len", args.max_len))
        if v["layer_compile"]:
            mbs = [padded_to(mb, args.max_len, tokenizer.pad_token_id) for mb in mbs]
        trained = sum(mb.trained_tokens for mb in mbs)
        start = time.perf_counter()
        total = 0.0
        for mb in mbs:
            with autocast:  # as accelerate wraps the loss module's forward; backward runs outside it
                loss = forward(mb.input_ids, mb.position_ids, mb.labels)
            (loss / trained).backward()
            total += loss.item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
        real.append(sum(mb.real_tokens for mb in mbs))
        padded.append(sum(mb.padded_tokens for mb in mbs))
        losses.append(total / trained)
    profiler.stop()
    timed = slice(1, None)
    return {
        "variant": name, **v, "steps": args.steps,
        "tokens_per_s": sum(real[timed]) / sum(seconds[timed]),
        "first_step_seconds": seconds[0],
        "step_seconds": seconds,
        "pad_share": 1 - sum(real) / sum(padded),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "setup_rss_bytes": setup_rss,
        "losses": losses,
        **({"profile": _top_ops(profiler, args.profile)} if args.profile else {}),
    }


def padded_to(mb, width: int, pad_id: int):
    """The micro-batch with its rows padded to `width` tokens (a pad block of its own, no labels): one shape to compile."""
    from dataclasses import replace

    extra = width - mb.input_ids.shape[1]
    if extra <= 0:
        return mb
    rows = mb.input_ids.shape[0]
    return replace(mb, input_ids=torch.cat([mb.input_ids, torch.full((rows, extra), pad_id)], 1),
                   labels=torch.cat([mb.labels, torch.full((rows, extra), -100)], 1),
                   position_ids=torch.cat([mb.position_ids, torch.arange(extra).expand(rows, extra)], 1))


class _NoProfiler:
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def _profiler(rows: int):
    """torch.profiler over the timed steps when asked (`--profile N`; it slows them), else a stand-in that does nothing."""
    return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if rows else _NoProfiler()


def _top_ops(profiler, rows: int) -> list[dict]:
    """The `rows` ops with the most self CPU time over the profiled steps, with their share of the total."""
    events = profiler.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return [{"op": e.key, "self_cpu_s": round(e.self_cpu_time_total / 1e6, 3), "share": round(e.self_cpu_time_total / total, 4),
             "calls": e.count} for e in top]


def set_lora_forward(model, kind: str) -> None:
    """"fused": the fused LoRA op (`train.fused_lora: true`); "peft": PEFT's own forward (the default)."""
    for m in model.modules():
        if isinstance(m, (FusedLoraLinear, PeftLoraLinear)) and not m.lora_variant:
            m.__class__ = FusedLoraLinear if kind == "fused" else PeftLoraLinear


def interleaved(args, names: list[str]) -> dict:
    """Timing only: variants that can be switched inside one process, alternated step by step on the same examples.

    On a shared machine the load drifts between processes; alternating A, B, C on each step's
    examples in one process compares them under the same load.
    """
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from tunewright.models import load_model
    from tunewright.train.batching import step_example_ids
    from tunewright.train.loop import TokenLoss
    from tunewright.train.methods import apply_method

    model_dir, tokenizer, cfg, examples = _examples(args.model, args.data, args.max_len)
    model = apply_method(load_model(model_dir), cfg)
    peft_drops = {id(m): dict(m.lora_dropout) for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)}
    fast_drops = {k: {n: FastLoraDropout(d.p) for n, d in v.items()} for k, v in peft_drops.items()}

    def set_dropout(kind: str) -> None:
        for m in model.modules():
            if id(m) in peft_drops:
                for n, d in (fast_drops if kind == "fast" else peft_drops)[id(m)].items():
                    m.lora_dropout[n] = d

    weights = {False: {n: p.data for n, p in model.named_parameters()}}  # per bf16_base value: the same values either way

    def set_base(bf16) -> None:
        for n, p in model.named_parameters():
            p.data = weights[bf16][n]

    for mode in {VARIANTS[n].get("bf16_base", False) for n in names} - {False}:
        from tunewright.train.frozen_base import store_frozen_base_in_bf16

        store_frozen_base_in_bf16(model, everything=mode == "all")
        weights[mode] = {n: p.data for n, p in model.named_parameters()}
        set_base(False)

    loss_module = TokenLoss(model)
    loss_module.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.0)  # lr 0: every variant sees the same weights
    stats = {n: {"seconds": 0.0, "cpu_seconds": 0.0, "real": 0, "padded": 0} for n in names}
    for step in range(args.steps):
        _, ids = step_example_ids(len(examples), args.micro_batch, 42, step)
        for name in names if step % 2 == 0 else reversed(names):
            v = {"batching": "balanced", "chunked": True, "dropout": "peft", **VARIANTS[name]}
            set_dropout(v["dropout"])
            set_lora_forward(model, v.get("lora", "peft"))
            set_base(v.get("bf16_base", False))
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=v.get("precision") == "bf16")
            torch.set_num_threads(v.get("threads", args.threads))
            loss_module.fast = v["chunked"] and loss_module._parts[0] is not None
            mbs = _step_batches([examples[i] for i in ids], v["batching"], tokenizer.pad_token_id, 4096, args.max_len)
            trained = sum(mb.trained_tokens for mb in mbs)
            start, cpu_start = time.perf_counter(), time.process_time()
            for mb in mbs:
                with autocast:
                    loss = loss_module(mb.input_ids, mb.position_ids, mb.labels)
                (loss / trained).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step > 0:
                stats[name]["seconds"] += time.perf_counter() - start
                stats[name]["cpu_seconds"] += time.process_time() - cpu_start  # what load on the machine does not inflate
                stats[name]["real"] += sum(mb.real_tokens for mb in mbs)
                stats[name]["padded"] += sum(mb.padded_tokens for mb in mbs)
    base = stats[names[0]]["real"] / stats[names[0]]["seconds"]
    cpu_base = stats[names[0]]["real"] / stats[names[0]]["cpu_seconds"]
    return {n: {"tokens_per_s": s["real"] / s["seconds"], "speedup_vs_" + names[0]: s["real"] / s["seconds"] / base,
                "tokens_per_cpu_s": s["real"] / s["cpu_seconds"], "cpu_speedup_vs_" + names[0]: s["real"] / s["cpu_seconds"] / cpu_base,
                "pad_share": 1 - s["real"] / s["padded"]} for n, s in stats.items()}


# --- levers that need no model ------------------------------------------------------------------


def loss_memory(n: int = 4096, hidden: int = 576, vocab: int = 49152, chunked: bool = True) -> dict:
    """LM head + cross-entropy alone, forward + backward, on n trained positions: time and peak RSS."""
    import torch.nn.functional as F

    from tunewright.train.loss import token_loss_sum

    torch.manual_seed(0)
    h = torch.randn(n, hidden, requires_grad=True)
    w = torch.randn(vocab, hidden) / hidden**0.5
    t = torch.randint(0, vocab, (n,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    loss = token_loss_sum(h, w, t) if chunked else F.cross_entropy(F.linear(h, w).float(), t, reduction="sum")
    loss.backward()
    return {"chunked": chunked, "n": n, "vocab": vocab, "seconds": time.perf_counter() - start,
            "peak_rss_growth_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before, "loss": loss.item()}


def bf16_parity(args) -> dict:
    """bf16 autocast vs fp32 on one short batch: loss difference and forward time (bf16 may be emulated)."""
    torch.set_num_threads(args.threads)
    from tunewright.models import load_model
    from tunewright.train.batching import micro_batches
    from tunewright.train.loop import TokenLoss
    from tunewright.train.methods import apply_method

    model_dir, tokenizer, cfg, examples = _examples(args.model, args.data, args.max_len)
    model = apply_method(load_model(model_dir), cfg)
    model.eval()  # no dropout: the two passes must see the same network
    lm = TokenLoss(model)
    mb = micro_batches(examples[:2], tokenizer.pad_token_id, 4096, True, args.max_len)[0]
    out = {}
    for name, ctx in (("fp32", torch.autocast("cpu", enabled=False)), ("bf16", torch.autocast("cpu", dtype=torch.bfloat16))):
        with torch.no_grad(), ctx:
            start = time.perf_counter()
            loss = lm(mb.input_ids, mb.position_ids, mb.labels).item() / mb.trained_tokens
            out[name] = {"loss": loss, "forward_seconds": time.perf_counter() - start, "tokens": mb.real_tokens}
    out["rel_diff"] = abs(out["bf16"]["loss"] - out["fp32"]["loss"]) / out["fp32"]["loss"]
    return out


def optimizer_step_time(n_params: int = 4_884_480, tensors: int = 420, reps: int = 5) -> dict:
    """AdamW step on LoRA-sized parameters: for-loop vs foreach vs fused (CPU has a fused kernel too)."""
    out = {}
    size = n_params // tensors
    for mode, kw in (("for_loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        params = [torch.nn.Parameter(torch.randn(size)) for _ in range(tensors)]
        for p in params:
            p.grad = torch.randn(size)
        opt = torch.optim.AdamW(params, lr=1e-4, **kw)
        opt.step()
        start = time.perf_counter()
        for _ in range(reps):
            opt.step()
        out[mode] = (time.perf_counter() - start) / reps
    return out


# --- driver -------------------------------------------------------------------------------------


def _child(kind: str, name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", f"{kind}:{name}", "--model", args.model, "--data", args.data,
           "--steps", str(args.steps), "--micro-batch", str(args.micro_batch), "--max-len", str(args.max_len),
           "--threads", str(args.threads), "--profile", str(args.profile)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=args.timeout)
    if proc.returncode != 0:
        return {"variant": name, "error": proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help=f"levers: {', '.join(list(LEVERS) + ['interleaved', 'interleaved_bf16', 'interleaved_lora', 'peak', 'loss_memory', 'bf16', 'adamw'])}")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default="examples/stdlib-qa/train.jsonl")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per variant (the first is not timed)")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--profile", type=int, default=0, help="torch.profiler over the timed steps: the N ops with most self CPU time")
    p.add_argument("--out", default="benchmarks/out/levers.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        kind, name = args.child.split(":", 1)
        if kind == "variant":
            result = run_variant(name, args)
        elif kind == "interleaved":
            result = interleaved(args, name.split("+"))
        elif kind == "loss_memory":
            result = loss_memory(chunked=name == "chunked")
        else:
            result = bf16_parity(args)
        print(json.dumps(result))
        return result

    wanted = args.only.split(",") if args.only else ["interleaved", "peak", "loss_memory", "bf16", "adamw"] + list(LEVERS)
    report: dict = {"load_before": os.getloadavg(), "settings": vars(args), "variants": {}, "levers": {}}
    if "interleaved" in wanted:
        names = ["default", "padded", "balanced", "best", "best_threads_1", "full_logits"]
        report["interleaved"] = _child("interleaved", "+".join(names), args)
        print("interleaved", json.dumps(report["interleaved"], indent=1), file=sys.stderr)
    if "interleaved_bf16" in wanted:
        report["interleaved_bf16"] = _child("interleaved", "bf16+bf16_base", args)
        print("interleaved_bf16", json.dumps(report["interleaved_bf16"], indent=1), file=sys.stderr)
    if "interleaved_residual" in wanted:  # bf16 residual stream (every frozen weight bf16) against autocast over fp32
        report["interleaved_residual"] = _child("interleaved", "bf16_fused_lora+bf16_residual", args)
        print("interleaved_residual", json.dumps(report["interleaved_residual"], indent=1), file=sys.stderr)
    if "interleaved_lora" in wanted:  # the fused LoRA op against PEFT's forward, fp32 and bf16, under the same load
        report["interleaved_lora"] = _child("interleaved", "default+fused_lora+bf16+bf16_fused_lora", args)
        print("interleaved_lora", json.dumps(report["interleaved_lora"], indent=1), file=sys.stderr)
    if "peak" in wanted:
        from bench import matmul_peak

        report["peaks"] = {d: matmul_peak(d, threads=args.threads) for d in ("float32", "bfloat16")}
        print("peak", {d: round(v["flops_per_s"] / 1e9, 1) for d, v in report["peaks"].items()}, file=sys.stderr)
    if "loss_memory" in wanted:
        report["loss_memory"] = {k: _child("loss_memory", k, args) for k in ("chunked", "full")}
        print("loss_memory", report["loss_memory"], file=sys.stderr)
    if "adamw" in wanted:
        report["adamw"] = optimizer_step_time()
        print("adamw", report["adamw"], file=sys.stderr)
    if "bf16" in wanted:
        report["bf16"] = _child("bf16", "parity", args)
        print("bf16", report["bf16"], file=sys.stderr)
    for lever in [w for w in wanted if w in LEVERS]:
        for name in LEVERS[lever]:
            if name not in report["variants"]:
                report["variants"][name] = _child("variant", name, args)
                r = report["variants"][name]
                print(f"{name}: {r.get('tokens_per_s', 0):.1f} tok/s, pad {r.get('pad_share', 0):.1%}, "
                      f"peak {r.get('peak_rss_bytes', 0) / 1e9:.2f} GB (before training {r.get('setup_rss_bytes', 0) / 1e9:.2f} GB)"
                      f" {r.get('error', '')}", file=sys.stderr)
                for op in r.get("profile", []):
                    print(f"    {op['share']:6.1%} {op['self_cpu_s']:8.2f} s {op['calls']:7d}x  {op['op']}", file=sys.stderr)
        base = report["variants"][LEVERS[lever][0]].get("tokens_per_s")
        report["levers"][lever] = {n: {"speedup": (report["variants"][n].get("tokens_per_s") or 0) / base if base else None,
                                       "peak_rss_gb": (report["variants"][n].get("peak_rss_bytes") or 0) / 1e9}
                                   for n in LEVERS[lever]}
    report["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report["levers"], indent=2))
    return report


if __name__ == "__main__":
    main()
