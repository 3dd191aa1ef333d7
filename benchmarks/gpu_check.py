"""A real QLoRA run on a CUDA GPU, offline: prints PASS or FAIL (exit 0 / 1), or SKIP (exit 77) without CUDA + bitsandbytes.

    python benchmarks/gpu_check.py                 # on a CUDA machine with `pip install 'tunewright[gpu]'`
    python benchmarks/gpu_check.py --method lora   # the same checks without 4 bits (runs on CPU: checks this script)
    python benchmarks/gpu_check.py --method zero   # full fine-tuning under DeepSpeed ZeRO-2 and ZeRO-3 (pip install deepspeed)

It builds a small random Llama and a BPE tokenizer the way tests/helpers.py does (no download),
trains a few steps with `tunewright.train` and checks: the base really is 4-bit (bitsandbytes
Linear4bit layers, NF4), the losses are finite, every step is logged, the LoRA B matrices moved from
zero, the adapter and a checkpoint were written, and `--resume` extending max_steps continues to the
new end.

`--method zero` runs `tunewright train` under `torchrun --standalone --nproc-per-node <GPUs>` with
train.distributed=deepspeed at deepspeed.stage 2 and 3 (method full, 4 steps): the losses are finite,
summary.json says DeepSpeed ran, and model/ loads in stock Transformers with every weight whole
(ZeRO-3 gathers its partitions) and moved from the base.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tests/helpers.py: the tiny tokenizer/model builders


def _cuda_ready() -> str | None:
    """Why QLoRA cannot run here, or None."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "bitsandbytes is not installed (pip install 'tunewright[gpu]')"
    return None


def build_model(folder: Path) -> Path:
    from helpers import build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer("chatml")
    model = build_tiny_model(tokenizer, seed=0, layers=4, hidden=256)  # 4-bit blocks need a few hundred columns
    out = folder / "tiny-llama"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _config(model_dir: Path, run: Path, method: str, steps: int):
    from tunewright.config import load_config

    return load_config(model=str(model_dir), method=method, data__train=str(REPO / "examples/stdlib-qa/train.jsonl"),
                       output_dir=str(run), overrides=[f"train.max_steps={steps}", "train.save_every=2", "train.learning_rate=1e-3",
                                                       "eval.after_train=false", "data.max_seq_len=256"])


def check(method: str, workdir: Path) -> list[str]:
    """The problems found (empty when everything holds)."""
    from safetensors.torch import load_file

    import tunewright
    from tunewright.train.metrics_log import metrics_path, read_metrics

    problems = []
    run, model_dir = workdir / "run", build_model(workdir)
    result = tunewright.train(_config(model_dir, run, method, steps=4))
    if method == "qlora":
        four_bit = [n for n, m in result.model.named_modules() if type(m).__name__ == "Linear4bit"]
        if not four_bit:
            problems.append("no bitsandbytes Linear4bit layer in the trained model: the base was not loaded in 4 bits")
        quant = getattr(result.model.config, "quantization_config", None)
        quant = quant.to_dict() if hasattr(quant, "to_dict") else (quant or {})
        if quant.get("bnb_4bit_quant_type") != "nf4" or not quant.get("bnb_4bit_use_double_quant"):
            problems.append(f"quantization config {quant}, expected nf4 with double quantisation")
    rows = read_metrics(metrics_path(run))
    if [r["step"] for r in rows] != [1, 2, 3, 4]:
        problems.append(f"logged steps {[r['step'] for r in rows]}, expected 1..4")
    if not all(math.isfinite(r["loss"]) for r in rows):
        problems.append(f"non-finite loss: {[r['loss'] for r in rows]}")
    adapter = run / "adapter" / "adapter_model.safetensors"
    if not adapter.is_file():
        problems.append("no adapter written")
    else:
        moved = [k for k, v in load_file(str(adapter)).items() if "lora_B" in k and v.abs().sum() > 0]
        if not moved:
            problems.append("every lora_B is still zero: the adapter did not train")
    if not (run / "checkpoints" / "step-2").is_dir():
        problems.append("no checkpoint at step 2")
    resumed = tunewright.train(_config(model_dir, run, method, steps=6), resume=True)
    steps = [r["step"] for r in read_metrics(metrics_path(run))]
    if steps[-1:] != [6] or resumed.summary.get("steps") != 6:
        problems.append(f"--resume with train.max_steps=6 ended at {steps[-1:]} (summary {resumed.summary.get('steps')})")
    print(f"{method}: losses {[round(r['loss'], 4) for r in rows]}, trainable {result.summary.get('trainable_params')}")
    return problems


def _zero_ready() -> str | None:
    """Why DeepSpeed cannot run here, or None."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed (pip install 'tunewright[deepspeed]')"
    return None


def check_zero(stage: int, workdir: Path, model_dir: Path) -> list[str]:
    """One real ZeRO-`stage` run of 4 full fine-tuning steps on every local GPU; the problems found."""
    import subprocess

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tunewright.train.metrics_log import metrics_path, read_metrics

    run = workdir / f"zero{stage}"
    cmd = [str(Path(sys.executable).with_name("torchrun")),
           "--standalone", "--nproc-per-node", str(torch.cuda.device_count()), "-m", "tunewright.cli", "train",
           "--model", str(model_dir), "--data", str(REPO / "examples/stdlib-qa/train.jsonl"), "--method", "full",
           "--output", str(run), "--set", "train.max_steps=4", "--set", "train.learning_rate=1e-4",
           "--set", "eval.after_train=false", "--set", "data.max_seq_len=256", "--set", "train.distributed=deepspeed",
           "--set", f"deepspeed.stage={stage}"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return [f"ZeRO-{stage} run exited {done.returncode}: {done.stderr[-2000:]}"]
    problems = []
    summary = json.loads((run / "summary.json").read_text())
    if summary.get("distributed", {}).get("strategy") != "deepspeed":
        problems.append(f"ZeRO-{stage}: summary.json says {summary.get('distributed')}, not deepspeed")
    losses = [r["loss"] for r in read_metrics(metrics_path(run))]
    if len(losses) != 4 or not all(math.isfinite(v) for v in losses):
        problems.append(f"ZeRO-{stage}: losses {losses}")
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    base = load_file(str(model_dir / "model.safetensors"))
    trained = model.state_dict()
    empty = [k for k in base if trained[k].shape != base[k].shape]
    if empty:
        problems.append(f"ZeRO-{stage}: saved weights with the wrong shape (partitions not gathered?): {empty[:3]}")
    elif max((trained[k] - base[k]).abs().max().item() for k in base) == 0:
        problems.append(f"ZeRO-{stage}: model/ equals the base: training did not move it")
    print(f"ZeRO-{stage}: losses {[round(v, 4) for v in losses]}")
    return problems


def main_zero() -> int:
    if why := _zero_ready():
        print(f"SKIP: {why}")
        return 77
    problems = []
    with tempfile.TemporaryDirectory(prefix="tunewright-zero-check-") as tmp:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ["TUNEWRIGHT_TOKENIZED_CACHE"] = str(Path(tmp) / "tokenized")
        model_dir = build_model(Path(tmp))
        for stage in (2, 3):
            problems += check_zero(stage, Path(tmp), model_dir)
    for p in problems:
        print(f"FAIL: {p}")
    if problems:
        return 1
    print("PASS: full fine-tuning under DeepSpeed ZeRO-2 and ZeRO-3 trained and saved a stock-loadable model/")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="qlora", choices=["qlora", "lora", "zero"])
    args = parser.parse_args()
    if args.method == "zero":
        return main_zero()
    if args.method == "qlora" and (why := _cuda_ready()):
        print(f"SKIP: {why}")
        return 77
    try:
        with tempfile.TemporaryDirectory(prefix="tunewright-gpu-check-") as tmp:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ["TUNEWRIGHT_TOKENIZED_CACHE"] = str(Path(tmp) / "tokenized")
            problems = check(args.method, Path(tmp))
    except Exception:
        traceback.print_exc()
        print(f"FAIL: {args.method} training raised (traceback above)")
        return 1
    for p in problems:
        print(f"FAIL: {p}")
    if problems:
        return 1
    print(f"PASS: {args.method} trained, saved, checkpointed and resumed" + (" on a 4-bit NF4 base" if args.method == "qlora" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
