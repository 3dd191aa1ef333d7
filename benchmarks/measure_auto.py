"""Train one task with `tunewright train` (or `tunewright sweep`), score it with `tunewright eval`, time both.

The numbers behind docs/auto.md: each call appends one JSON line to --results with the resolved
hyperparameters (the run's config.yaml), the training and evaluation wall times, and the held-out
metrics (accuracy for one-word answers, token F1 for generation). Everything runs as real CLI
subprocesses, so it measures exactly what a user gets; run it under `nice` on a shared machine.

  python benchmarks/measure_auto.py --label "old auto" --config examples/stdlib-modules.yaml \
      --test examples/stdlib-modules/test.jsonl --max-new-tokens 8 --output runs/measure/modules-old
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

HPARAMS = ("epochs", "max_steps", "learning_rate", "batch_size", "precision", "bf16_base", "threads")


def tunewright() -> str:
    """The console script next to this interpreter (PYTHONPATH decides which source it runs)."""
    return shutil.which("tunewright", path=str(Path(sys.executable).parent)) or "tunewright"


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return time.perf_counter() - start


def train_command(args: argparse.Namespace) -> list[str]:
    sets = [s for kv in args.set for s in ("--set", kv)]
    if args.sweep_budget:
        return [tunewright(), "sweep", args.config, "--budget", args.sweep_budget, "--output", args.output, *sets]
    return [tunewright(), "train", args.config, "--output", args.output, "--set", "eval.after_train=false", *sets]


def scored_run(args: argparse.Namespace) -> Path:
    """The run folder to evaluate: a sweep's best trial, or the run itself."""
    best = Path(args.output) / "best"
    return best.resolve() if args.sweep_budget and best.exists() else Path(args.output)


def held_out_metrics(run: Path, args: argparse.Namespace) -> tuple[dict, float]:
    cmd = [tunewright(), "eval", str(run), "--data", args.test, "--no-compare-base", "--json",
           "--max-new-tokens", str(args.max_new_tokens)]
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    results = json.loads(out[out.index("{"):])
    tuned = results["metrics"]["tuned"]  # results.json: metrics[side][metric], a corpus value
    return {k: round(tuned[k], 4) for k in ("accuracy", "token_f1", "exact_match") if k in tuned}, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--label", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--set", action="append", default=[], help="key=value passed on to train / sweep")
    p.add_argument("--sweep-budget", default=None, help="run `tunewright sweep --budget B` instead of train")
    p.add_argument("--results", default="benchmarks/auto-results.jsonl")
    args = p.parse_args()
    if Path(args.output).exists():
        shutil.rmtree(args.output)
    train_s = timed(train_command(args))
    run = scored_run(args)
    metrics, eval_s = held_out_metrics(run, args)
    resolved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    row = {"label": args.label, "config": args.config, "test": args.test, "train_s": round(train_s, 1),
           "eval_s": round(eval_s, 1), **metrics, "resolved": {k: resolved.get(k) for k in HPARAMS},
           "sets": args.set, "sweep_budget": args.sweep_budget, "run": str(run),
           "load_avg_1m": round(os.getloadavg()[0], 2), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(args.results, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
