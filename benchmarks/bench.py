"""`tunewright bench`: tunewright and the tools users would otherwise run, side by side, in one run.

Each tool trains in its own process on the same examples (tunewright's data preparation: chat
template, completion-only masks, truncation), the same model, LoRA r16/alpha 32 on every linear
layer, the same learning rate, batch size and number of steps. Each reports real (non-pad) tokens
per second over its optimizer steps only (model load excluded, first step reported apart), pad
share, peak memory, and final train and validation loss. This module runs them, measures the
matmul peak, and writes the ratios, model FLOP utilisation, a Markdown table and a JSON file.

The baselines live beside this file (`trainer_peft.py`, `trl_sft.py`); TRL comes from the `bench`
extra (`make bench` installs it into `.venv-bench`). Benchmark code is not part of the installed
package: `tunewright bench` runs this file from a source checkout (`python benchmarks/bench.py` too).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench_report import (  # noqa: F401  (re-exported: the bench's public maths)
    FLOP_FORMULA,
    GOALS,
    LABELS,
    add_mfu,
    compute_ratios,
    model_dims,
    render_markdown,
    training_flops,
    write_report,
)
from bench_threads import fewer_threads_warnings, print_warnings, resolved_threads

from tunewright.train.hparams import BF16_CPU_FLAGS, cpu_flags, native_bf16
from tunewright.train.metrics_log import metrics_path, read_metrics

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_DATA = "examples/stdlib-qa/train.jsonl"
DEFAULT_VALIDATION = "examples/stdlib-qa/test.jsonl"
RUNNERS = ("tunewright", "tunewright_bf16", "trainer_peft", "trainer_peft_bf16", "trl_no_packing", "trl_packing")
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunewright bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--validation", default=None, help=f"validation file (default: {DEFAULT_VALIDATION} with the default data)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per tool")
    p.add_argument("--trl-packing-steps", type=int, default=None,
                   help="steps for TRL packing, whose step holds micro-batch rows of max-len tokens (default: as many tokens as the others, min 3)")
    p.add_argument("--micro-batch", type=int, default=8, help="examples per optimizer step (packed rows for TRL packing)")
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="tunewright's precision: auto runs fp32 and also bf16 where the hardware has native bf16")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every tool (default: torch's)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(RUNNERS)}")
    p.add_argument("--python", default=None, help="interpreter for the baselines (default: this one if trl imports, else .venv-bench)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra tunewright --set key=value")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per tool")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="baselines stop after this many seconds of training steps and report the steps they finished")
    p.add_argument("--out", default="benchmarks/out")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement (no MFU)")
    return p


# --- hardware ---------------------------------------------------------------------------------


def bf16_support_explained() -> tuple[bool, str]:
    """`hparams.native_bf16` on this machine's default device, with the reason for the bench report."""
    import torch

    if torch.cuda.is_available():
        ok = native_bf16(torch.device("cuda"))
        return ok, f"CUDA {torch.cuda.get_device_name()} {'supports' if ok else 'lacks'} bf16"
    found = sorted(cpu_flags() & BF16_CPU_FLAGS)
    capability = torch.backends.cpu.get_cpu_capability()
    if native_bf16(torch.device("cpu")):
        return True, f"CPU flags {', '.join(found)} (torch capability {capability})"
    return False, f"CPU has no avx512_bf16/amx_bf16 (torch capability {capability})"


def matmul_peak(dtype_name: str = "float32", size: int = 4096, threads: int | None = None, budget_s: float = 20.0) -> dict:
    """Sustained torch.mm FLOP/s for size x size matrices; a smaller size when the full one would take too long."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def once(n: int) -> float:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.mm(a, b)
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        return time.perf_counter() - start

    n = 512
    seconds = once(n)
    while n < size and seconds * ((2 * n) / n) ** 3 * 3 < budget_s:  # next size, three repetitions
        n *= 2
        seconds = once(n)
    reps = max(1, min(10, int(budget_s / 3 / max(seconds, 1e-9))))
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    _sync(device)
    per = (time.perf_counter() - start) / reps
    return {"dtype": dtype_name, "size": n, "reps": reps, "threads": torch.get_num_threads(), "device": device,
            "flops_per_s": 2 * n**3 / per}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


# --- FLOPs and ratios -------------------------------------------------------------------------


def tunewright_result(run_dir: Path) -> dict:
    """A tunewright run's numbers in the baselines' shape, from summary.json and metrics.jsonl."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_metrics(metrics_path(run_dir))
    tokens, seconds, previous = [], [], 0
    for row in rows:
        step_tokens = row["tokens"] - previous
        previous = row["tokens"]
        tokens.append(step_tokens)
        seconds.append(step_tokens / row["tokens_per_s"] if row.get("tokens_per_s") else 0.0)
    timed = slice(1, None) if len(rows) > 1 else slice(0, None)
    timed_real, timed_seconds = sum(tokens[timed]), sum(seconds[timed])
    share = timed_real / max(summary["real_tokens"], 1)
    eval_rows = [r for r in rows if "eval_loss" in r]
    return {
        "tool": "tunewright",
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        "timed_seconds": round(timed_seconds, 3),
        "first_step_seconds": round(seconds[0], 3) if seconds else None,
        "real_tokens": summary["real_tokens"],
        "padded_tokens": summary["padded_tokens"],
        "trained_tokens": summary["trained_tokens"],
        "timed_real_tokens": timed_real,
        "timed_trained_tokens": round(summary["trained_tokens"] * share),
        "tokens_per_s": round(timed_real / timed_seconds, 2) if timed_seconds else 0.0,
        "pad_share": summary["pad_share"],
        "peak_memory_bytes": summary["peak_memory_bytes"],
        "final_train_loss": summary["final_train_loss"],
        "final_eval_loss": eval_rows[-1]["eval_loss"] if eval_rows else summary.get("final_eval_loss"),
        **resolved_threads(run_dir),
    }


def tunewright_command(args, run_dir: Path, precision: str, validation: str | None) -> list[str]:
    sets = [f"train.max_steps={args.steps}", f"train.batch_size={args.micro_batch}", f"data.max_seq_len={args.max_len}",
            f"train.learning_rate={args.lr}", f"train.precision={precision}", f"train.eval_every={args.steps}",
            f"train.save_every={args.steps}", "eval.after_train=false", "train.log_every=1"]
    if validation:
        sets.append(f"data.validation={validation}")
    if args.threads:
        sets.append(f"train.threads={args.threads}")
    sets += args.overrides
    cmd = [sys.executable, "-m", "tunewright.cli", "train", "--model", args.model, "--data", args.data, "--output", str(run_dir)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def baseline_command(python: str, script: str, args, out_json: Path, validation: str | None, steps: int, extra: list[str]) -> list[str]:
    cmd = [python, str(BENCH_DIR / script), "--model", args.model, "--data", args.data, "--steps", str(steps),
           "--micro-batch", str(args.micro_batch), "--max-len", str(args.max_len), "--lr", str(args.lr), "--out", str(out_json)]
    if validation:
        cmd += ["--validation", validation]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.max_seconds:
        cmd += ["--max-seconds", str(args.max_seconds)]
    return cmd + extra


def find_baseline_python(explicit: str | None) -> str | None:
    """An interpreter that has trl: the one given, this one, or the bench venv that `make bench` builds."""
    candidates = [explicit] if explicit else [sys.executable, str(REPO / ".venv-bench" / "bin" / "python")]
    for py in candidates:
        if py and Path(py).exists():
            probe = subprocess.run([py, "-c", "import trl"], check=False, capture_output=True)
            if probe.returncode == 0:
                return py
    return None


def run_logged(cmd: list[str], log: Path, timeout: int) -> tuple[int, float]:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n\n")
        f.flush()
        try:
            code = subprocess.run(cmd, check=False, stdout=f, stderr=subprocess.STDOUT, cwd=os.getcwd(), env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.perf_counter() - started


def _tail(path: Path, n: int = 3) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return " / ".join(lines[-n:])[-300:]


def plan(args, bf16_ok: bool, trl_python: str | None) -> dict[str, str | None]:
    """Which tools run: name -> None to run, or the reason it is skipped."""
    wanted = [n.strip() for n in args.only.split(",")] if args.only else list(RUNNERS)
    unknown = [n for n in wanted if n not in RUNNERS]
    if unknown:
        raise SystemExit(f"tunewright bench: unknown --only name(s) {unknown}; choose from {', '.join(RUNNERS)}")
    out = {}
    for name in wanted:
        reason = None
        if name == "tunewright" and args.precision == "bf16":
            reason = "--precision bf16"
        if name.endswith("_bf16") and args.precision == "fp32":
            reason = "--precision fp32"
        if name.endswith("_bf16") and args.precision == "auto" and not bf16_ok:
            reason = "no native bf16 on this hardware (force with --precision bf16)"
        if name.startswith("trl") and trl_python is None:
            reason = "trl is not installed (make bench installs it into .venv-bench)"
        out[name] = reason
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.validation is None and args.data == DEFAULT_DATA:
        args.validation = DEFAULT_VALIDATION
    out_dir = Path(args.out)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    bf16_ok, bf16_why = bf16_support_explained()
    trl_python = find_baseline_python(args.python)
    base_python = trl_python or args.python or sys.executable
    todo = plan(args, bf16_ok, trl_python)
    command = "tunewright bench " + " ".join(argv if argv is not None else sys.argv[1:])
    load_before = load_average()
    lengths = example_lengths(args)
    print(f"bench: {', '.join(n for n, r in todo.items() if r is None)}; load average {load_before}", file=sys.stderr)

    peaks = {}
    if not args.no_peak:
        peaks["float32"] = matmul_peak("float32", threads=args.threads)
        peaks["bfloat16"] = matmul_peak("bfloat16", threads=args.threads)

    results: dict[str, dict] = {}
    for name, reason in todo.items():
        if reason:
            results[name] = {"ok": False, "reason": reason}
            continue
        log = out_dir / "logs" / f"{name}.log"
        print(f"bench: running {name} (log: {log})", file=sys.stderr)
        if name.startswith("tunewright"):
            run_dir = out_dir / f"{name}_run"
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            precision = "bf16" if name == "tunewright_bf16" else "fp32"
            code, wall = run_logged(tunewright_command(args, run_dir, precision, args.validation), log, args.timeout)
            if code == 0:
                result = tunewright_result(run_dir)
                result["precision"] = precision
        else:
            out_json = out_dir / f"{name}.json"
            out_json.unlink(missing_ok=True)
            script, extra, steps = {
                "trainer_peft": ("trainer_peft.py", [], args.steps),
                "trainer_peft_bf16": ("trainer_peft.py", ["--precision", "bf16"], args.steps),
                "trl_no_packing": ("trl_sft.py", ["--no-packing"], args.steps),
                "trl_packing": ("trl_sft.py", ["--packing"], args.trl_packing_steps or packing_steps(args, lengths)),
            }[name]
            code, wall = run_logged(baseline_command(base_python, script, args, out_json, args.validation, steps, extra), log, args.timeout)
            if code != 0 and out_json.is_file():  # training finished, the validation pass did not
                result = json.loads(out_json.read_text())
                result["note"] = "stopped during the validation pass: no validation loss"
                code = 0
            elif code == 0:
                result = json.loads(out_json.read_text())
        if code != 0:
            why = f"killed by signal {-code}" if code < 0 else ("timed out" if code == 124 else f"exit {code}")
            results[name] = {"ok": False, "reason": f"{why}: {_tail(log)}", "failed": True}
            print(f"bench: {name} failed (exit {code}); see {log}", file=sys.stderr)
            continue
        result["ok"] = True
        result["wall_seconds"] = round(wall, 1)
        results[name] = result
        print(f"bench: {name}: {result['tokens_per_s']:.1f} real tokens/s, peak {result['peak_memory_bytes'] / 1e9:.2f} GB", file=sys.stderr)

    dims = _dims(args.model)
    for r in results.values():
        if r.get("ok"):
            r["lengths"] = lengths or r.get("lengths")
            add_mfu(r, dims, peaks)
    import torch

    warnings = fewer_threads_warnings(results)
    report = {
        "command": command,
        "results": results,
        "ratios": compute_ratios(results),
        "goals": GOALS,
        "peaks": peaks,
        "model_dims": dims,
        "flop_formula": FLOP_FORMULA,
        "environment": {
            "cpu": _cpu_name(), "cores": os.cpu_count(), "bf16": bf16_why, "cuda": torch.cuda.is_available(),
            "python": platform.python_version(), "torch": torch.__version__, "baseline_python": base_python,
            "load_before": load_before, "load_after": load_average(),
        },
        "settings": {k: v for k, v in vars(args).items()},
        "warnings": warnings,
    }
    json_path, md_path = write_report(report, out_dir)
    print(render_markdown(report))
    print(f"bench: wrote {md_path} and {json_path}", file=sys.stderr)
    print_warnings(warnings)
    failed = [n for n, r in results.items() if r.get("failed")]
    if failed:
        raise SystemExit(1)
    return 0


def packing_steps(args, lengths: dict | None) -> int:
    """Steps for TRL packing that train about as many tokens as the others: its step holds micro-batch full rows."""
    if lengths and lengths.get("examples"):
        mean_len = lengths["sum_len"] / lengths["examples"]
        return max(3, math.ceil(args.steps * mean_len / args.max_len))
    return max(3, math.ceil(args.steps / 5))


def example_lengths(args) -> dict | None:
    """Sum of L and of L^2 over the training examples (the attention FLOP term), as every tool sees them."""
    try:
        from tunewright.config import load_config
        from tunewright.data import prepare_data
        from tunewright.models import load_tokenizer, local_model_dir

        cfg = load_config(model=args.model, overrides=[f"data.train={args.data}", f"data.max_seq_len={args.max_len}"])
        data = prepare_data(cfg, load_tokenizer(local_model_dir(args.model)))
        lengths = [len(e.input_ids) for e in data.train]
        return {"sum_len": sum(lengths), "sum_len_sq": sum(n * n for n in lengths), "examples": len(lengths)}
    except Exception as e:  # the FLOP term is a refinement; a failure here must not lose the measurement
        print(f"bench: example lengths unavailable ({type(e).__name__}: {e}); MFU leaves out attention", file=sys.stderr)
        return None


def _dims(model: str) -> dict | None:
    try:
        from tunewright.models import local_model_dir

        config = json.loads((Path(local_model_dir(model)) / "config.json").read_text())
        return model_dims(config)
    except Exception:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
