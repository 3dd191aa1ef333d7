"""DPO benchmark: tunewright `objective: dpo` (LoRA) vs TRL `DPOTrainer`, same pairs, model and hyperparameters.

Each tool trains in its own process on the same preference pairs (default
examples/stdlib-qa-pairs/train.jsonl), the same model (default: the embedded SmolLM2-135M-Instruct),
LoRA r16 / alpha 32 / dropout 0.05 on every linear layer, fp32, sigmoid DPO with beta 0.1, the same
learning rate, pairs per optimizer step and number of steps; both take the reference model as the
same model with its adapter disabled. Reported: real (non-pad) tokens per second of the chosen and
rejected sequences over steps 2..N (model load and step 1 excluded), pad share, peak memory (peak RSS
on CPU, max allocated on CUDA) and the ratios tunewright / TRL. TRL comes from `.venv-bench`
(`make bench`), or `--python`.

    .venv/bin/python benchmarks/dpo.py --steps 10 --threads 2 --out benchmarks/out/dpo
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from bench import (
    find_baseline_python,
    load_average,
    run_logged,
    tunewright_result,
)

from tunewright.train.metrics_log import metrics_path, read_metrics

HERE = Path(__file__).resolve().parent
TOOLS = ("tunewright", "trl")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default="examples/stdlib-qa-pairs/train.jsonl")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per tool")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", default=None, help="tunewright, trl or both (comma-separated)")
    p.add_argument("--python", default=None, help="interpreter with trl (default: this one if trl imports, else .venv-bench)")
    p.add_argument("--max-seconds", type=float, default=None, help="TRL stops after this many seconds of steps")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per tool")
    p.add_argument("--out", default="benchmarks/out/dpo")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="more tunewright config (e.g. train.fused_lora=true); TRL's run is unchanged")
    return p


def tunewright_command(args, run_dir: Path) -> list[str]:
    sets = ["objective=dpo", "preference.loss=sigmoid", f"preference.beta={args.beta}", f"train.max_steps={args.steps}",
            f"train.batch_size={args.batch_size}", f"data.max_seq_len={args.max_len}", f"train.learning_rate={args.lr}",
            "train.precision=fp32", f"train.eval_every={args.steps}", f"train.save_every={args.steps}",
            "eval.after_train=false", "train.log_every=1", "method=lora"]
    if args.threads:
        sets.append(f"train.threads={args.threads}")
    sets += args.set
    cmd = [sys.executable, "-m", "tunewright.cli", "train", "--model", args.model, "--data", args.data, "--output", str(run_dir)]
    return cmd + [a for s in sets for a in ("--set", s)]


def trl_command(python: str, args, out_json: Path) -> list[str]:
    cmd = [python, str(HERE / "trl_dpo.py"), "--model", args.model, "--data", args.data, "--steps", str(args.steps),
           "--micro-batch", str(args.batch_size), "--max-len", str(args.max_len), "--lr", str(args.lr),
           "--beta", str(args.beta), "--out", str(out_json)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.max_seconds:
        cmd += ["--max-seconds", str(args.max_seconds)]
    return cmd


def run_tool(name: str, args, out_dir: Path, trl_python: str | None) -> dict:
    log = out_dir / "logs" / f"{name}.log"
    if name == "tunewright":
        run_dir = out_dir / "tunewright_run"
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = tunewright_command(args, run_dir)
    else:
        if trl_python is None:
            return {"ok": False, "reason": "trl is not installed (make bench installs it into .venv-bench)"}
        out_json = out_dir / "trl.json"
        out_json.unlink(missing_ok=True)
        cmd = trl_command(trl_python, args, out_json)
    print(f"dpo bench: running {name} (log: {log})", file=sys.stderr)
    code, wall = run_logged(cmd, log, args.timeout)
    if code != 0:
        return {"ok": False, "reason": f"exit {code}, see {log}", "failed": True}
    result = tunewright_result(run_dir) if name == "tunewright" else json.loads(out_json.read_text())
    result.update(ok=True, wall_seconds=round(wall, 1), command=" ".join(cmd))
    return result


def ratios(results: dict) -> dict:
    a, b = results.get("tunewright", {}), results.get("trl", {})
    if not (a.get("ok") and b.get("ok")):
        return {}
    return {"tokens_per_s": round(a["tokens_per_s"] / b["tokens_per_s"], 3),
            "peak_memory": round(a["peak_memory_bytes"] / b["peak_memory_bytes"], 3)}


def markdown(report: dict) -> str:
    lines = ["| tool | steps | real tokens/s | pad share | peak memory | first-step loss | final loss |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in report["results"].items():
        if not r.get("ok"):
            lines.append(f"| {name} | skipped: {r['reason']} | | | | | |")
            continue
        lines.append(f"| {name} | {r['steps']} | {r['tokens_per_s']:.1f} | {r['pad_share']:.1%} | "
                     f"{r['peak_memory_bytes'] / 1e9:.2f} GB | {r.get('first_train_loss')} | {r.get('final_train_loss')} |")
    q = report["ratios"]
    if q:
        lines += ["", (f"tokens/s ratio tunewright / TRL: {q['tokens_per_s']:.2f}x (goal >= 2x); "
                       f"peak memory ratio: {q['peak_memory']:.2f}x (goal <= 0.5x)")]
    lines.append(f"\nload average before {report['load_before']}, after {report['load_after']}")
    return "\n".join(lines)


def first_loss(run_dir: Path) -> float | None:
    rows = read_metrics(metrics_path(run_dir))
    return rows[0].get("loss") if rows else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out_dir = Path(args.out)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    wanted = [t.strip() for t in args.only.split(",")] if args.only else list(TOOLS)
    trl_python = find_baseline_python(args.python) if "trl" in wanted else None
    report = {"command": "python benchmarks/dpo.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "load_before": load_average(), "results": {}, "settings": vars(args)}
    for name in wanted:
        result = run_tool(name, args, out_dir, trl_python)
        if name == "tunewright" and result.get("ok"):
            result["first_train_loss"] = first_loss(out_dir / "tunewright_run")
        report["results"][name] = result
    report["load_after"] = load_average()
    report["ratios"] = ratios(report["results"])
    (out_dir / "dpo.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 1 if any(r.get("failed") for r in report["results"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
