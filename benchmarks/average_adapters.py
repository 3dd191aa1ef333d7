"""Average the LoRA deltas of several runs (or checkpoints) into one adapter: a "model soup" of adapters.

Each LoRA adapter adds (alpha / r) * B @ A to a weight. The mean of N such deltas is itself a LoRA of rank
N * r: A stacks the N A's, B stacks the N B's divided by N, and alpha becomes N * alpha so alpha / rank stays
alpha / r. Averaging A's and B's separately would not give the mean delta (B1 A1 + B2 A2 != (B1 + B2)(A1 + A2)).
Used in docs/auto.md for the checkpoint average and the seed soup on stdlib-modules. The runs are only read.

  python benchmarks/average_adapters.py runs/a runs/b --output runs/ab-soup
  tunewright eval runs/ab-soup --data examples/stdlib-modules/test.jsonl --no-compare-base --max-new-tokens 8
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def read_adapter(run: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    adapter = run / "adapter"
    config = json.loads((adapter / CONFIG).read_text())
    if config.get("use_dora") or config.get("use_rslora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise SystemExit(f"{adapter}: only plain LoRA with one rank and alpha can be averaged this way")
    return config, load_file(str(adapter / WEIGHTS))


def average(tensors: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack A's along the rank (rows) and B's / N along the rank (columns); other tensors are averaged."""
    n, out = len(tensors), {}
    for key in tensors[0]:
        parts = [t[key].float() for t in tensors]
        if "lora_A" in key:
            out[key] = torch.cat(parts, dim=0)
        elif "lora_B" in key:
            out[key] = torch.cat(parts, dim=1) / n
        else:
            out[key] = torch.stack(parts).mean(0)
    return {k: v.contiguous() for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args()
    read = [read_adapter(run) for run in args.runs]
    config = read[0][0]
    if any((c["r"], c["lora_alpha"]) != (config["r"], config["lora_alpha"]) for c, _ in read):
        raise SystemExit("the adapters differ in r or lora_alpha")
    n = len(read)
    (args.output / "adapter").mkdir(parents=True, exist_ok=False)
    save_file(average([t for _, t in read]), str(args.output / "adapter" / WEIGHTS), metadata={"format": "pt"})
    (args.output / "adapter" / CONFIG).write_text(json.dumps({**config, "r": n * config["r"],
                                                              "lora_alpha": n * config["lora_alpha"]}, indent=2))
    for name in (args.runs[0] / "adapter").iterdir():  # tokenizer and chat template files, as the run saved them
        if name.name not in (WEIGHTS, CONFIG) and name.is_file():
            shutil.copy(name, args.output / "adapter" / name.name)
    run_config = yaml.safe_load((args.runs[0] / "config.yaml").read_text())
    run_config["lora"].update(r=n * config["r"], alpha=n * config["lora_alpha"])
    (args.output / "config.yaml").write_text(yaml.safe_dump(run_config, sort_keys=False))
    print(f"{args.output}: the mean of {n} adapters' deltas as one rank-{n * config['r']} LoRA")


if __name__ == "__main__":
    main()
