"""Is the learning-rate range test's pick steady across thread counts? Run it at each count, compare the rules.

For each --threads value this runs the real range test through `tunewright train` (one training step, no
validation, no evaluation: the range test is what costs), then reads the run's lr_range.json and prints
the pick of the rule in use (a tenth of the centre of the smoothed curve's bottom) next to the old rule's
(a tenth of the rate at its single lowest point). A folder that already holds lr_range.json is only
re-read (delete it to measure again), so a saved curve is re-derived offline. On a shared machine, `nice`.

  nice -n 19 python benchmarks/range_test_picks.py --config examples/stdlib-modules.yaml \\
      --threads 1 2 --output runs/range-picks
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_auto import tunewright

from tunewright.train.lr_range import bottom_of_curve, pick_learning_rate


def run_range_test(config: str, threads: int, folder: Path) -> None:
    cmd = [tunewright(), "train", config, "--output", str(folder), "--set", "train.lr_range_test=true",
           "--set", "train.max_steps=1", "--set", f"train.threads={threads}", "--set", "data.validation=null",
           "--set", "eval.after_train=false"]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def lowest_point_rule(lrs: list[float], losses: list[float | None]) -> float:
    """The rule before issue 11's fix: a tenth of the rate at the lowest smoothed loss."""
    finite = [(x, lr) for lr, x in zip(lrs, losses) if x is not None and math.isfinite(x)]
    return float(f"{min(finite)[1] / 10:.1e}")


def picks(record: dict) -> dict:
    lrs, losses = record["lrs"], record["smoothed_losses"]
    low, high = bottom_of_curve(lrs, losses)
    return {"steps": len(lrs), "lowest_point_rule": lowest_point_rule(lrs, losses),
            "bottom_centre_rule": pick_learning_rate(lrs, losses)[0], "bottom": [f"{low:.2e}", f"{high:.2e}"],
            "recorded_pick": record["chosen"], "seconds": record["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="examples/stdlib-modules.yaml")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--output", type=Path, default=Path("runs/range-picks"))
    args = parser.parse_args()
    for threads in args.threads:
        folder = args.output / f"threads-{threads}"
        if not (folder / "lr_range.json").exists():
            run_range_test(args.config, threads, folder)
        print(json.dumps({"threads": threads, **picks(json.loads((folder / "lr_range.json").read_text()))}), flush=True)


if __name__ == "__main__":
    main()
