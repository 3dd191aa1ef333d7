"""Is the learning-rate range test's pick steady across thread counts and seeds? Run it at each, compare the rules.

For each --seeds x --threads pair this runs the real range test through `tunewright train` (one training
step, no validation, no evaluation: the range test is what costs), then reads the run's lr_range.json and
prints the picks of three rules on the same smoothed curve: a tenth of the rate at its single lowest point,
a tenth of the centre of its bottom, and the rule in use (`pick_learning_rate`: FALL_SHARE of the way
down its fall in log-loss, none when no fall shows above the steps' noise).
The seed sets the LoRA initialization and which batches the test's 30 steps see. A folder that already
holds lr_range.json is only re-read (delete it to measure again), so a saved curve is re-derived offline
(`--curves FILE...` re-derives the picks of saved lr_range.json files without running anything).
On a shared machine, `nice`.

  nice -n 19 python benchmarks/range_test_picks.py --config examples/stdlib-modules.yaml \\
      --seeds 42 7 1234 --threads 2 --output runs/range-picks
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

from tunewright.train.lr_range import crossing_rate, finite_steps, pick_learning_rate

BOTTOM_MARGIN = 0.03  # the bottom-centre rule's bottom: within this share of the loss's fall of its minimum ...
BOTTOM_FLOOR_SHARE = 0.01  # ... and at least this share of the minimum (a curve that hardly fell)


def run_range_test(config: str, seed: int, threads: int, folder: Path) -> None:
    cmd = [tunewright(), "train", config, "--output", str(folder), "--set", "train.lr_range_test=true",
           "--set", "train.max_steps=1", "--set", f"train.threads={threads}", "--set", f"train.seed={seed}",
           "--set", "data.validation=null", "--set", "eval.after_train=false"]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def lowest_point_rule(lrs: list[float], losses: list[float | None]) -> float:
    """The rule before issue 11's fix: a tenth of the rate at the lowest smoothed loss."""
    finite = [(x, lr) for lr, x in zip(lrs, losses) if x is not None and math.isfinite(x)]
    return float(f"{min(finite)[1] / 10:.1e}")


def bottom_of_curve(lrs: list[float], losses: list[float | None]) -> tuple[float, float]:
    """The rates at either end of the smoothed curve's bottom: where it comes within BOTTOM_MARGIN of its minimum."""
    finite = finite_steps(losses)
    lrs, losses = lrs[:finite], losses[:finite]
    best = min(range(len(losses)), key=losses.__getitem__)
    floor = losses[best]
    level = floor + max(BOTTOM_MARGIN * (max(losses[:best + 1]) - floor), BOTTOM_FLOOR_SHARE * floor)
    low = best
    while low > 0 and losses[low - 1] <= level:
        low -= 1
    high = best
    while high < len(losses) - 1 and losses[high + 1] <= level:
        high += 1
    return (crossing_rate(lrs, losses, low, low - 1, level) if low > 0 else lrs[low],
            crossing_rate(lrs, losses, high, high + 1, level) if high < len(losses) - 1 else lrs[high])


def bottom_centre_rule(lrs: list[float], losses: list[float | None]) -> float:
    """The rule from 2026-11-30 to 2026-12-02: a tenth of the centre (in log-rate) of the smoothed curve's bottom."""
    low, high = bottom_of_curve(lrs, losses)
    return float(f"{math.sqrt(low * high) / 10:.1e}")


def picks(record: dict) -> dict:
    lrs, losses = record["lrs"], record["smoothed_losses"]
    low, high = bottom_of_curve(lrs, losses)
    return {"steps": len(lrs), "lowest_point_rule": lowest_point_rule(lrs, losses),
            "bottom_centre_rule": bottom_centre_rule(lrs, losses), "bottom": [f"{low:.2e}", f"{high:.2e}"],
            "descent_midpoint_rule": pick_learning_rate(lrs, losses, record["raw_losses"])[0],
            "recorded_pick": record["chosen"], "seconds": record["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="examples/stdlib-modules.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--output", type=Path, default=Path("runs/range-picks"))
    parser.add_argument("--curves", type=Path, nargs="+", help="saved lr_range.json files: print their picks, run nothing")
    args = parser.parse_args()
    if args.curves:
        for path in args.curves:
            print(json.dumps({"curve": str(path), **picks(json.loads(path.read_text()))}), flush=True)
        return
    for seed in args.seeds:
        for threads in args.threads:
            folder = args.output / f"seed-{seed}-threads-{threads}"
            if not (folder / "lr_range.json").exists():
                run_range_test(args.config, seed, threads, folder)
            record = json.loads((folder / "lr_range.json").read_text())
            print(json.dumps({"seed": seed, "threads": threads, **picks(record)}), flush=True)


if __name__ == "__main__":
    main()
