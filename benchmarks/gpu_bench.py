"""`make gpu-bench`: tunewright vs Transformers Trainer + PEFT, bf16, on a CUDA GPU, in one call; writes its table.

    python benchmarks/gpu_bench.py                      # random-init Llama-3.2-1B shape, 256 rows of 60..2048 tokens
    python benchmarks/gpu_bench.py --rows 64 --small-rows 16 --max-len 1024   # a shorter version

The same measurement as benchmarks/varlen.py (read its docstring), on a GPU and at a realistic size: a randomly
initialised model of a real shape (speed does not depend on weight values; nothing downloads; the text comes
from the example data, tokenized with SmolLM2's tokenizer), LoRA r16 all-linear, batch 8, one epoch, bf16.
- tunewright: the CLI as a user runs it (train.precision=bf16), Δ tokens / Δ wall between a short and a long run;
- Trainer + PEFT: the base loaded in bf16 with bf16=True, as GPU users run it, padding to the longest (SDPA); then
  with Liger kernels (`use_liger_kernel`), with flash-attention varlen over flattened batches
  (`attn_implementation=flash_attention_2` + `DataCollatorWithFlattening`), and with both: each where its package
  is installed, otherwise listed with the reason it did not run.
Writes gpu_bench.md and gpu_bench.json into $OUT when set (the device machine's output folder), else
benchmarks/out/gpu_bench. Without a CUDA GPU it prints why and exits 77 (nothing to measure).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from bench import _cpu_name, load_average  # noqa: E402
from bench_threads import fewer_threads_warnings, print_warnings  # noqa: E402
from varlen_data import REAL_CONFIGS, build_data_files, pad_share_in_order  # noqa: E402

NO_GPU = 77  # the exit status gpu_check.py uses for "cannot run here"
BASE = ["--base-dtype", "bf16", "--attn", "sdpa"]
FLASH = ["--base-dtype", "bf16", "--attn", "flash_attention_2", "--padding-free"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(REAL_CONFIGS), default="llama-3.2-1b", help="the real config to initialise at random")
    p.add_argument("--tokenizer", default="smollm2-135m-instruct", help="tunewright model spec whose tokenizer renders the text")
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--small-rows", type=int, default=64)
    p.add_argument("--validation-rows", type=int, default=32)
    p.add_argument("--min-len", type=int, default=60)
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--peak-budget", type=float, default=10.0)
    p.add_argument("--no-peak", action="store_true")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                   help="extra tunewright config (repeatable), e.g. --set train.attention=per_example")
    p.add_argument("--out", default=None, help="default: $OUT, else benchmarks/out/gpu_bench")
    return p


def cuda_refusal() -> str | None:
    """Why this machine cannot run the GPU benchmark, or None."""
    import torch

    if not torch.cuda.is_available():
        return ("no CUDA GPU here (torch.cuda.is_available() is False): gpu_bench measures tunewright against "
                "Trainer + PEFT on a GPU; on a CPU run `python benchmarks/varlen.py` instead")
    if not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name()} has no bf16: gpu_bench compares bf16 training"
    return None


def trainer_variants() -> dict[str, tuple[list[str], str | None]]:
    """name -> (trainer_peft.py flags, None or the reason it cannot run here)."""
    liger = None if importlib.util.find_spec("liger_kernel") else "liger-kernel is not installed (pip install liger-kernel)"
    flash = None if importlib.util.find_spec("flash_attn") else "flash-attn is not installed (pip install flash-attn)"
    return {
        "trainer_peft_bf16": (BASE, None),
        "trainer_peft_bf16_liger": ([*BASE, "--liger"], liger),
        "trainer_peft_bf16_flash": (FLASH, flash),
        "trainer_peft_bf16_liger_flash": ([*FLASH, "--liger"], liger or flash),
    }


def output_dir(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get("OUT") or "benchmarks/out/gpu_bench")


def run_all(args, out: Path) -> dict[str, dict]:
    """Every run, in order; a run that fails is recorded with its reason and the others still run."""
    from varlen import (
        measure_trainer,
        measure_tunewright,
        prepare_model,
        prepared_lengths,
    )

    args.model, args.random_init = args.tokenizer, args.shape
    model = prepare_model(args, out)
    from tunewright.models import load_tokenizer

    files = build_data_files(load_tokenizer(model), out / "data", args.rows, args.small_rows, args.validation_rows,
                             args.min_len, args.max_len)
    prepared_lengths(model, files["small"], args.max_len, files["validation"])  # tokenized once, before any timing
    lengths = prepared_lengths(model, files["large"], args.max_len, files["validation"])
    results: dict[str, dict] = {}
    plan = {"tunewright_bf16": (None, None), **trainer_variants()}
    for name, (flags, skip) in plan.items():
        if skip:
            results[name] = {"ok": False, "reason": skip}
            continue
        print(f"gpu_bench: {name} (load {load_average()})", file=sys.stderr)
        try:
            results[name] = (measure_tunewright(model, files, "bf16", args, out) if flags is None
                             else measure_trainer(model, files, "bf16", args, out, name, flags))
        except RuntimeError as e:  # one broken variant (a kernel package that does not fit this GPU) must not lose the rest
            results[name] = {"ok": False, "reason": str(e), "failed": True}
    return {"model": model, "lengths": lengths, "results": results}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if why := cuda_refusal():
        print(f"gpu_bench: not run: {why}", file=sys.stderr)
        return NO_GPU
    out = output_dir(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from varlen import add_peaks_and_mfu
    from varlen_report import render, summarize

    done = run_all(args, out)
    results, model, lengths = done["results"], done["model"], done["lengths"]
    peaks = add_peaks_and_mfu({k: r for k, r in results.items() if r.get("ok")}, model, lengths, args)
    machine = {"cpu": f"{torch.cuda.get_device_name()} (host {_cpu_name()})", "cores": os.cpu_count(),
               "bf16": "CUDA bf16", "load_after": load_average(), "memory": "peak CUDA allocation of each process"}
    report = summarize(results, peaks, lengths, args, model, machine, pad_share_in_order(lengths, args.batch),
                       fewer_threads_warnings(results))
    report["command"] = "python benchmarks/gpu_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report["versions"] = _common._versions(("torch", "transformers", "peft", "accelerate", "liger-kernel", "flash-attn"))
    (out / "gpu_bench.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu_bench.md").write_text(render(report))
    print(render(report))
    print(f"gpu_bench: wrote {out / 'gpu_bench.md'} and {out / 'gpu_bench.json'}", file=sys.stderr)
    print_warnings(report["warnings"])
    return 1 if any(r.get("failed") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
