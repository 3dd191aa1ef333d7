"""Issue 13's measurement in one command: tunewright vs Transformers Trainer + PEFT on variable-length chat data.

    python benchmarks/varlen.py                                   # 256 rows, 60-512 tokens, SmolLM2-135M, fp32 + bf16
    python benchmarks/varlen.py --rows 32 --small-rows 8          # a quick smoke version
    python benchmarks/varlen.py --random-init llama-3.2-1b --max-len 1024   # a real 1B shape, random weights

The data (varlen_data.py): `--rows` chats of `--min-len`..`--max-len` tokens built from the example data, LoRA r16
all-linear (tunewright's defaults, which the baseline copies), batch 8, one epoch, learning rate 2e-4.
- tunewright runs as a user runs it: the CLI in a subprocess, `threads: auto`, at fp32 and at bf16. Its speed is
  Δ real tokens / Δ wall time between a `--small-rows` run and a `--rows` run of the same data (the first rows
  of the second), so start-up (imports, model load, tokenization, the final validation pass) cancels out.
- Trainer + PEFT (trainer_peft.py) pads each batch to its longest, fp32 and bf16 autocast, torch's threads,
  timed on its training steps only (steps 2..N).
The table: real tokens/s, ratios to Trainer at equal precision and to Trainer fp32, peak memory, validation
loss and its difference to Trainer's, the thread count each run trained with, and MFU against the torch.mm
4096² peak measured at the end of the same invocation at that run's thread count. Writes varlen.md and
varlen.json into `--out`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (  # noqa: E402
    _cpu_name,
    bf16_support_explained,
    load_average,
    matmul_peak,
    run_logged,
)
from bench_report import add_mfu, model_dims  # noqa: E402
from bench_threads import fewer_threads_warnings, print_warnings, resolved_threads  # noqa: E402
from varlen_data import (  # noqa: E402
    REAL_CONFIGS,
    build_data_files,
    build_random_model,
    pad_share_in_order,
)

BENCH_DIR = Path(__file__).resolve().parent
PRECISIONS = ("fp32", "bf16")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="tunewright model spec (alias, HF folder)")
    p.add_argument("--random-init", choices=sorted(REAL_CONFIGS), default=None,
                   help="train a randomly initialised model of this real shape instead of --model (its tokenizer is --model's)")
    p.add_argument("--rows", type=int, default=256, help="rows of the long run (and of Trainer's run)")
    p.add_argument("--small-rows", type=int, default=None, help="rows of the short tunewright run (default: rows / 4)")
    p.add_argument("--validation-rows", type=int, default=32)
    p.add_argument("--min-len", type=int, default=60)
    p.add_argument("--max-len", type=int, default=512, help="longest row, and data.max_seq_len / Trainer's max length")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated: fp32, bf16")
    p.add_argument("--only", default="tunewright,trainer_peft", help="comma-separated: tunewright, trainer_peft")
    p.add_argument("--peak-budget", type=float, default=20.0, help="seconds for each matmul peak measurement")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul peaks (no MFU)")
    p.add_argument("--timeout", type=int, default=7200, help="seconds per run")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                   help="extra tunewright config (repeatable), e.g. --set train.attention=per_example")
    p.add_argument("--trainer-grad-accum", type=int, default=1,
                   help="Trainer's batch in this many accumulated passes (same examples per step; for shapes whose "
                        "batch does not fit in memory at once, e.g. a 151k vocabulary x 8 x 1024)")
    p.add_argument("--out", default="benchmarks/out/varlen")
    return p


def tunewright_command(model: str, data: Path, validation: Path, run_dir: Path, precision: str, args, extra=()) -> list[str]:
    """The CLI as a user runs it (threads: auto), pinned to the measurement's batch, length, epoch and learning rate.

    Validation runs once, at the end (eval_every above the run's steps), over every validation row, and no
    checkpoint is written: the same work in the short and the long run, so it cancels out of the difference.
    """
    sets = ["train.epochs=1", f"train.batch_size={args.batch}", f"data.max_seq_len={args.max_len}",
            f"train.learning_rate={args.lr}", f"train.precision={precision}", f"data.validation={validation}",
            "train.eval_every=1000000", "train.save_every=1000000", f"train.eval_examples={args.validation_rows}",
            "eval.after_train=false", *extra]
    cmd = [sys.executable, "-m", "tunewright.cli", "train", "--model", model, "--data", str(data), "--output", str(run_dir)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def trainer_command(model: str, data: Path, validation: Path, out_json: Path, precision: str, steps: int, args,
                    extra=()) -> list[str]:
    return [sys.executable, str(BENCH_DIR / "trainer_peft.py"), "--model", model, "--data", str(data),
            "--validation", str(validation), "--steps", str(steps), "--micro-batch", str(args.batch),
            "--max-len", str(args.max_len), "--lr", str(args.lr), "--precision", precision, "--out", str(out_json),
            "--grad-accum", str(args.trainer_grad_accum), *extra]


def _run(cmd: list[str], log: Path, timeout: int) -> tuple[float, str]:
    """Run one process; its wall seconds and the load average it started under. Raises on failure."""
    load = load_average()
    code, wall = run_logged(cmd, log, timeout)
    if code != 0:
        tail = " / ".join(line for line in log.read_text(errors="replace").splitlines()[-5:] if line.strip())
        raise RuntimeError(f"{cmd[2] if cmd[1] == '-m' else Path(cmd[1]).name} exited {code} (log {log}): {tail[-400:]}")
    return wall, load


def measure_tunewright(model: str, files: dict, precision: str, args, out: Path) -> dict:
    """Δ real tokens / Δ wall between the short and the long CLI run; memory, loss and threads of the long one."""
    runs = {}
    for size in ("small", "large"):
        run_dir = out / "runs" / f"tunewright_{precision}_{size}"
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = tunewright_command(model, files[size], files["validation"], run_dir, precision, args, args.sets)
        wall, load = _run(cmd, out / "logs" / f"tunewright_{precision}_{size}.log", args.timeout)
        summary = json.loads((run_dir / "summary.json").read_text())
        runs[size] = {"wall": wall, "load": load, "summary": summary, **resolved_threads(run_dir)}
    small, large = runs["small"], runs["large"]
    d_real = large["summary"]["real_tokens"] - small["summary"]["real_tokens"]
    d_trained = large["summary"]["trained_tokens"] - small["summary"]["trained_tokens"]
    d_wall = large["wall"] - small["wall"]
    result = {
        "tool": "tunewright", "precision": precision, "method": "delta", "ok": True,
        "tokens_per_s": d_real / d_wall if d_wall > 0 and d_real > 0 else None,
        "timed_seconds": d_wall if d_wall > 0 else None, "timed_real_tokens": d_real, "timed_trained_tokens": d_trained,
        "walls": [round(small["wall"], 2), round(large["wall"], 2)], "loads": [small["load"], large["load"]],
        "peak_memory_bytes": large["summary"]["peak_memory_bytes"], "final_eval_loss": large["summary"].get("final_eval_loss"),
        "pad_share": large["summary"].get("pad_share"), "steps": large["summary"]["steps"],
        "threads": large["threads"], "threads_auto": large["threads_auto"], "threads_reason": large["threads_reason"],
    }
    if small["threads"] != large["threads"]:
        result["threads_note"] = f"the short run trained on {small['threads']} threads, the long one on {large['threads']}"
    return result


def measure_trainer(model: str, files: dict, precision: str, args, out: Path, name: str | None = None, extra=()) -> dict:
    """Trainer + PEFT over one epoch of the long data; `extra` flags of trainer_peft.py make a variant (`name`)."""
    name = name or f"trainer_peft_{precision}"
    out_json = out / f"{name}.json"
    out_json.unlink(missing_ok=True)
    steps = math.ceil(args.rows / args.batch)  # one epoch
    wall, load = _run(trainer_command(model, files["large"], files["validation"], out_json, precision, steps, args, extra),
                      out / "logs" / f"{name}.log", args.timeout)
    return {**json.loads(out_json.read_text()), "ok": True, "precision": precision, "loads": [load], "wall": round(wall, 2)}


def prepared_lengths(model: str, data: Path, max_len: int, validation: Path | None = None) -> list[int]:
    """Token lengths of the rows as both tools train them (tunewright's data preparation).

    This also fills tunewright's tokenized cache for `data` (and `validation`), as the runs will read it.
    """
    from tunewright.config import load_config
    from tunewright.data import prepare_data
    from tunewright.models import load_tokenizer, local_model_dir

    split = [f"data.validation={validation}"] if validation else ["data.validation_split=0"]
    cfg = load_config(model=model, overrides=[f"data.train={data}", f"data.max_seq_len={max_len}", *split])
    return [len(e.input_ids) for e in prepare_data(cfg, load_tokenizer(local_model_dir(model))).train]


def prepare_model(args, out: Path) -> str:
    """--model itself, or a random-init folder of the --random-init shape with --model's tokenizer."""
    if not args.random_init:
        return args.model
    from tunewright.models import local_model_dir

    print(f"varlen: building a random-init {args.random_init} in {out / 'models'}", file=sys.stderr)
    return str(build_random_model(args.random_init, out / "models" / args.random_init, local_model_dir(args.model)))


def add_peaks_and_mfu(results: dict[str, dict], model: str, lengths: list[int], args) -> dict:
    """MFU of every run against the torch.mm peak at its own thread count and precision, measured now."""
    from tunewright.models import local_model_dir

    if args.no_peak:
        return {}
    dims = model_dims(json.loads((Path(local_model_dir(model)) / "config.json").read_text()))
    stats = {"sum_len": sum(lengths), "sum_len_sq": sum(n * n for n in lengths)}
    import torch

    peaks: dict[str, dict] = {}
    for r in results.values():
        if not r.get("ok"):
            continue
        key = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{r['threads']} threads"
        if key not in peaks:
            peaks[key] = {dtype: matmul_peak(dtype, threads=r["threads"], budget_s=args.peak_budget)
                          for dtype in ("float32", "bfloat16")}
        r["lengths"] = stats
        add_mfu(r, dims, peaks[key])
    return peaks


def _failure_reason(message: str) -> str:
    """One table cell: 'killed (out of memory?)' for SIGKILL, else the exit code."""
    first = message.split(" (log")[0]
    return f"{first}: killed, most likely out of memory" if " exited -9" in first else first


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.small_rows = args.small_rows or max(1, args.rows // 4)
    if args.small_rows >= args.rows:
        raise SystemExit("varlen: --small-rows must be below --rows (the speed is the difference between the two runs)")
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = prepare_model(args, out)
    from tunewright.models import load_tokenizer, local_model_dir

    files = build_data_files(load_tokenizer(local_model_dir(model)), out / "data", args.rows, args.small_rows,
                             args.validation_rows, args.min_len, args.max_len)
    # both tunewright runs then find their rows tokenized: tokenizing 4x the rows must not count as training time
    prepared_lengths(model, files["small"], args.max_len, files["validation"])
    lengths = prepared_lengths(model, files["large"], args.max_len, files["validation"])
    tools = [t.strip() for t in args.only.split(",")]
    results: dict[str, dict] = {}
    for precision in [p.strip() for p in args.precisions.split(",")]:
        for tool in tools:
            print(f"varlen: {tool} {precision} (load {load_average()})", file=sys.stderr)
            measure = measure_tunewright if tool == "tunewright" else measure_trainer
            try:
                results[f"{tool}_{precision}"] = measure(model, files, precision, args, out)
            except RuntimeError as failed:  # e.g. killed for memory: the table says so, the other runs still count
                print(f"varlen: {tool} {precision} failed: {failed}", file=sys.stderr)
                results[f"{tool}_{precision}"] = {"ok": False, "reason": _failure_reason(str(failed)), "precision": precision}
    peaks = add_peaks_and_mfu(results, model, lengths, args)
    from varlen_report import render, summarize

    report = summarize(results, peaks, lengths, args, model, {
        "cpu": _cpu_name(), "cores": os.cpu_count(), "bf16": bf16_support_explained()[1], "load_after": load_average()},
        pad_share_in_order(lengths, args.batch), fewer_threads_warnings(results))
    (out / "varlen.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "varlen.md").write_text(render(report))
    print(render(report))
    print(f"varlen: wrote {out / 'varlen.md'} and {out / 'varlen.json'}", file=sys.stderr)
    print_warnings(report["warnings"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
