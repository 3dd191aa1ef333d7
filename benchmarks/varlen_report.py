"""The write-up of benchmarks/varlen.py: ratios to Trainer + PEFT and the Markdown table, from the runs' results."""
from __future__ import annotations

import sys

from bench_threads import threads_cell

LABELS = {"tunewright_fp32": "tunewright fp32", "tunewright_bf16": "tunewright bf16",
          "trainer_peft_fp32": "Trainer + PEFT fp32", "trainer_peft_bf16": "Trainer + PEFT bf16",
          "trainer_peft_bf16_liger": "Trainer + PEFT bf16 + Liger kernels",
          "trainer_peft_bf16_flash": "Trainer + PEFT bf16 + flash-attention varlen (padding-free)",
          "trainer_peft_bf16_liger_flash": "Trainer + PEFT bf16 + Liger + flash-attention varlen"}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def add_ratios(results: dict[str, dict]) -> None:
    """Each tunewright run against Trainer at its own precision and against Trainer fp32 (the default users get)."""
    trainer_fp32 = results.get("trainer_peft_fp32", {})
    for name, r in results.items():
        if not name.startswith("tunewright_") or not r.get("ok"):
            continue
        same = results.get(f"trainer_peft_{r['precision']}", {})
        r["vs_trainer_same_precision"] = _ratio(r.get("tokens_per_s"), same.get("tokens_per_s"))
        r["vs_trainer_fp32"] = _ratio(r.get("tokens_per_s"), trainer_fp32.get("tokens_per_s"))
        r["memory_vs_trainer"] = _ratio(r.get("peak_memory_bytes"), same.get("peak_memory_bytes"))
        loss, base = r.get("final_eval_loss"), same.get("final_eval_loss")
        r["eval_loss_rel_diff"] = (loss - base) / base if loss is not None and base else None
        variants = {n: v["tokens_per_s"] for n, v in results.items() if n.startswith(f"trainer_peft_{r['precision']}")
                    and v.get("ok") and v.get("tokens_per_s")}
        if len(variants) > 1:  # GPU runs: against the fastest way of running Trainer too
            fastest = max(variants, key=variants.get)
            r["vs_fastest_trainer"] = {"variant": fastest, "ratio": _ratio(r.get("tokens_per_s"), variants[fastest])}


def summarize(results: dict[str, dict], peaks: dict, lengths: list[int], args, model: str, machine: dict,
              pad_share_in_order: float, warnings: list[str]) -> dict:
    add_ratios(results)
    return {
        "command": "python benchmarks/varlen.py " + " ".join(sys.argv[1:]),
        "model": model, "random_init": args.random_init, "rows": args.rows, "small_rows": args.small_rows,
        "batch": args.batch, "max_len": args.max_len, "lr": args.lr,
        "lengths": {"min": min(lengths), "mean": sum(lengths) / len(lengths), "max": max(lengths), "rows": len(lengths)},
        "pad_share_in_order": pad_share_in_order, "results": results, "peaks": peaks, "machine": machine,
        "warnings": warnings,
    }


def _fmt(value, kind: str = "") -> str:
    if value is None:
        return "-"
    return {"x": f"{value:.2f}x", "gb": f"{value / 1e9:.2f} GB", "pct": f"{value:.1%}",
            "signed": f"{value:+.1%}"}.get(kind, f"{value:.1f}" if isinstance(value, float) else str(value))


def render(report: dict) -> str:
    lines = [("| run | threads | real tokens/s | vs Trainer, same precision | vs Trainer fp32 | peak memory "
              "| memory vs Trainer | validation loss | vs Trainer's | MFU |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in report["results"].items():
        if not r.get("ok", True):
            lines.append(f"| {LABELS.get(name, name)} | not run: {r.get('reason', 'failed')} |" + " |" * 8)
            continue
        loss = r.get("final_eval_loss")
        lines.append(f"| {LABELS.get(name, name)} | {threads_cell(r)} | {_fmt(r.get('tokens_per_s'))} "
                     f"| {_fmt(r.get('vs_trainer_same_precision'), 'x')} | {_fmt(r.get('vs_trainer_fp32'), 'x')} "
                     f"| {_fmt(r.get('peak_memory_bytes'), 'gb')} | {_fmt(r.get('memory_vs_trainer'), 'x')} "
                     f"| {'-' if loss is None else f'{loss:.4f}'} | {_fmt(r.get('eval_loss_rel_diff'), 'signed')} "
                     f"| {_fmt(r.get('mfu'), 'pct')} |")
    n = report["lengths"]
    trainer_pad = [r["pad_share"] for k, r in report["results"].items() if k.startswith("trainer") and r.get("pad_share")]
    shape = f"random-init {report['random_init']} shape ({report['model']})" if report.get("random_init") else report["model"]
    lines += ["", (f"- data: {n['rows']} rows of {n['min']}..{n['max']} tokens (mean {n['mean']:.0f}), batch {report['batch']}, "
                   f"max length {report['max_len']}, one epoch; padding to the longest costs "
                   f"{report['pad_share_in_order']:.0%} of the tokens in file order"
                   + (f", {trainer_pad[0]:.0%} in Trainer's shuffled batches" if trainer_pad else "")),
              f"- model: {shape}, LoRA r16 alpha 32 all-linear, learning rate {report['lr']:g}",
              (f"- tunewright: the CLI with threads: auto; tokens/s = Δ real tokens / Δ wall between a {report['small_rows']}-row "
               f"and a {report['rows']}-row run (start-up cancels); Trainer + PEFT: its training steps 2..N only"),
              (f"- memory: {report['machine'].get('memory', 'peak RSS of each process (model load included)')}; "
               "validation loss: token-weighted over the same rows")]
    for name, r in report["results"].items():
        if r.get("vs_fastest_trainer"):
            fastest = r["vs_fastest_trainer"]
            lines.append(f"- {LABELS.get(name, name)} vs the fastest Trainer variant ({LABELS.get(fastest['variant'])}): "
                         f"{_fmt(fastest['ratio'], 'x')}")
        if r.get("threads_reason"):
            lines.append(f"- threads: {LABELS.get(name, name)} {threads_cell(r)}: {r['threads_reason']}")
        if r.get("threads_note"):
            lines.append(f"- note: {LABELS.get(name, name)}: {r['threads_note']}")
        if r.get("walls"):
            lines.append(f"- {LABELS.get(name, name)}: wall {r['walls'][0]} s / {r['walls'][1]} s, load average at start "
                         f"{r['loads'][0]} / {r['loads'][1]}")
        elif r.get("loads"):
            lines.append(f"- {LABELS.get(name, name)}: load average at start {r['loads'][0]}")
    for threads, by_dtype in report.get("peaks", {}).items():
        lines.append("- matmul peak at " + threads + ": " + ", ".join(
            f"{d} {p['flops_per_s'] / 1e9:.1f} GFLOP/s (torch.mm {p['size']}²)" for d, p in by_dtype.items()))
    m = report["machine"]
    lines.append(f"- machine: {m['cpu']}, {m['cores']} cores; bf16: {m['bf16']}; load average after: {m['load_after']}")
    lines += [f"- {w}" for w in report.get("warnings", [])]
    lines.append(f"- command: `{report['command']}`")
    return "\n".join(lines) + "\n"
