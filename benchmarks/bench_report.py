"""The arithmetic and the write-up of `tunewright bench`: FLOPs and MFU, ratios against the goals,
and the Markdown + JSON report. Kept apart from bench.py (beside it), which plans and runs the processes."""
from __future__ import annotations

import json
from pathlib import Path

from bench_threads import threads_cell

LABELS = {
    "tunewright": "tunewright, fp32",
    "tunewright_bf16": "tunewright, bf16 autocast",
    "trainer_peft": "transformers.Trainer + PEFT, pad to longest, fp32",
    "trainer_peft_bf16": "transformers.Trainer + PEFT, pad to longest, bf16 autocast",
    "trl_no_packing": "TRL SFTTrainer, completion-only, no packing, fp32",
    "trl_packing": "TRL SFTTrainer, completion-only, packing (padding-free), fp32",
}
GOALS = {"vs_trainer_same_precision": 2.0, "bf16_vs_trainer_bf16": 2.0, "vs_trl_best": 2.5, "bf16_vs_trainer_fp32": 5.0, "memory_vs_trainer": 0.5, "eval_loss_rel_diff": 0.02}
FLOP_FORMULA = (
    "FLOPs = real_tokens x (4 x frozen backbone matmul weights + 6 x LoRA weights) "
    "+ trained_tokens x 4 x LM-head weights + 6 x layers x attention width x sum over examples of L^2 "
    "(forward 2, backward 2 for frozen weights (input gradient only), 4 for trained ones; "
    "causal attention counted per example, not over packed rows or padding; the LM head counted only at "
    "positions whose next token is trained, the same for every tool)"
)


def model_dims(config: dict, lora_r: int = 16) -> dict:
    """Matmul weight counts of a Llama-style decoder from its config.json, and its LoRA (all-linear) size."""
    h = config["hidden_size"]
    inter = config["intermediate_size"]
    layers = config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    hd = config.get("head_dim") or h // heads
    shapes = [(h, heads * hd), (h, kv * hd), (h, kv * hd), (heads * hd, h), (h, inter), (h, inter), (inter, h)]  # (in, out)
    backbone = layers * sum(i * o for i, o in shapes)
    lora = layers * sum(lora_r * (i + o) for i, o in shapes)
    return {"layers": layers, "attn_width": heads * hd, "backbone_params": backbone, "lora_params": lora,
            "head_params": config["vocab_size"] * h}


def training_flops(dims: dict, real_tokens: int, trained_tokens: int, len_sq_per_token: float) -> float:
    """Useful FLOPs of LoRA training on these tokens (see FLOP_FORMULA)."""
    per_token = 4 * dims["backbone_params"] + 6 * dims["lora_params"]
    attention = 6 * dims["layers"] * dims["attn_width"] * len_sq_per_token * real_tokens
    return real_tokens * per_token + trained_tokens * 4 * dims["head_params"] + attention


def add_mfu(result: dict, dims: dict | None, peaks: dict) -> None:
    """Fill flops_per_s and mfu (against the peak of the run's precision) into one tool's result."""
    if not dims or not result.get("timed_seconds"):
        return
    lengths = result.get("lengths") or {}
    len_sq_per_token = lengths["sum_len_sq"] / lengths["sum_len"] if lengths.get("sum_len") else 0.0
    flops = training_flops(dims, result["timed_real_tokens"], result["timed_trained_tokens"], len_sq_per_token)
    result["flops_per_s"] = flops / result["timed_seconds"]
    peak = peaks.get("bfloat16" if result.get("precision") == "bf16" else "float32")
    if peak:
        result["mfu"] = result["flops_per_s"] / peak["flops_per_s"]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compute_ratios(results: dict[str, dict]) -> dict:
    """The issue's ratios from the tools' results; None where a tool is missing."""
    tps = {name: r.get("tokens_per_s") for name, r in results.items() if r.get("ok", True)}
    mem = {name: r.get("peak_memory_bytes") for name, r in results.items() if r.get("ok", True)}
    trl = [tps[n] for n in ("trl_no_packing", "trl_packing") if tps.get(n)]
    trl_best = max(trl) if trl else None
    tw, trainer = tps.get("tunewright"), tps.get("trainer_peft")
    ratios = {
        "vs_trainer_same_precision": _ratio(tw, trainer),
        "vs_trl_best": _ratio(tw, trl_best),
        "trl_best_mode": max(("trl_no_packing", "trl_packing"), key=lambda n: tps.get(n) or 0) if trl else None,
        "bf16_vs_trainer_fp32": _ratio(tps.get("tunewright_bf16"), trainer),
        "bf16_vs_trainer_bf16": _ratio(tps.get("tunewright_bf16"), tps.get("trainer_peft_bf16")),
        "memory_vs_trainer": _ratio(mem.get("tunewright"), mem.get("trainer_peft")),
        "eval_loss_rel_diff": None,
    }
    tw_loss = (results.get("tunewright") or {}).get("final_eval_loss")
    base_loss = (results.get("trainer_peft") or {}).get("final_eval_loss")
    if tw_loss is not None and base_loss:
        ratios["eval_loss_rel_diff"] = abs(tw_loss - base_loss) / base_loss
    ratios["goals_met"] = {
        key: (value <= GOALS[key] if key in ("memory_vs_trainer", "eval_loss_rel_diff") else value >= GOALS[key])
        for key, value in ratios.items() if key in GOALS and value is not None
    }
    return ratios


# --- report -----------------------------------------------------------------------------------


def _fmt(value, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "gb":
        return f"{value / 1e9:.2f} GB"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "x":
        return f"{value:.2f}x"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def render_markdown(report: dict) -> str:
    """The results table, the ratios against the goals, and how the numbers were made."""
    lines = ["| tool | threads | steps | real tokens/s | pad share | peak memory | final train loss | validation loss | MFU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in report["results"].items():
        label = LABELS.get(name, name)
        if not r.get("ok", True):
            lines.append(f"| {label} | not run: {r.get('reason', 'failed')} | | | | | | | |")
            continue
        lines.append(f"| {label} | {threads_cell(r)} | {r.get('steps')} | {_fmt(r.get('tokens_per_s'))} | {_fmt(r.get('pad_share'), 'pct')} "
                     f"| {_fmt(r.get('peak_memory_bytes'), 'gb')} | {_fmt(r.get('final_train_loss'))} "
                     f"| {_fmt(r.get('final_eval_loss'))} | {_fmt(r.get('mfu'), 'pct')} |")
    ratios = report["ratios"]
    met = ratios.get("goals_met", {})
    lines += ["", "| ratio | value | goal | met |", "| --- | --- | --- | --- |"]
    rows = [
        ("tunewright fp32 / Trainer+PEFT fp32 (tokens/s)", "vs_trainer_same_precision", "x", ">= 2x"),
        (f"tunewright fp32 / TRL best ({ratios.get('trl_best_mode') or '-'}) (tokens/s)", "vs_trl_best", "x", ">= 2.5x"),
        ("tunewright bf16 / Trainer+PEFT bf16 (tokens/s)", "bf16_vs_trainer_bf16", "x", ">= 2x"),
        ("tunewright bf16 / Trainer+PEFT fp32 (tokens/s)", "bf16_vs_trainer_fp32", "x", ">= 5x (issue 13)"),
        ("tunewright / Trainer+PEFT peak memory", "memory_vs_trainer", "x", "<= 0.5x"),
        ("validation loss, relative difference to Trainer+PEFT", "eval_loss_rel_diff", "pct", "<= 2%"),
    ]
    for label, key, kind, goal in rows:
        ok = met.get(key)
        lines.append(f"| {label} | {_fmt(ratios.get(key), kind)} | {goal} | {'-' if ok is None else ('yes' if ok else 'no')} |")
    peaks = report.get("peaks") or {}
    env = report.get("environment", {})
    lines += [""]
    for dtype, peak in peaks.items():
        lines.append(f"- matmul peak {dtype}: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s (torch.mm {peak['size']}^2, "
                     f"{peak['threads']} threads, {peak['device']})")
    if env:
        lines.append(f"- machine: {env.get('cpu')}, {env.get('cores')} cores; bf16: {env.get('bf16')}; "
                     f"load average before/after: {env.get('load_before')} / {env.get('load_after')}")
    lines.append(f"- tokens/s: real (non-pad) tokens over optimizer steps 2..N (step 1 warms up allocator and threads); "
                 f"memory: {'peak CUDA allocation' if env.get('cuda') else 'peak RSS of each process (model load included)'}")
    lines += _thread_notes(report)
    lines.append(f"- MFU: {FLOP_FORMULA}")
    lines.append(f"- command: `{report.get('command', '')}`")
    return "\n".join(lines) + "\n"


def _thread_notes(report: dict) -> list[str]:
    """Why each `auto` thread count is what it is, then the warnings (auto below the machine's cores)."""
    notes = [f"- threads: {name} {threads_cell(r)}: {r['threads_reason']}"
             for name, r in report["results"].items() if r.get("threads_reason")]
    return notes + [f"- {line}" for line in report.get("warnings", [])]


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    md_path.write_text(render_markdown(report))
    return json_path, md_path


# --- running the tools ------------------------------------------------------------------------


