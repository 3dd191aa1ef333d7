"""Turn one checkpoint of a LoRA run into a run folder with adapter/, so `tunewright eval` can score it.

For a learning curve of held-out accuracy while a long run is still training (docs/auto.md uses it for
runs that could not finish on a loaded machine). The run itself is only read.

  python benchmarks/checkpoint_adapter.py runs/x/checkpoints/step-146 --output runs/x-step-146
  tunewright eval runs/x-step-146 --data test.jsonl --no-compare-base
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from tunewright.config import load_config
from tunewright.models import load_model, load_tokenizer, local_model_dir
from tunewright.train.checkpoint import copy_weights, read_checkpoint
from tunewright.train.methods import apply_method
from tunewright.train.run import save_result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args()
    run = args.checkpoint.parent.parent
    cfg = load_config(run / "config.yaml")
    model_dir = local_model_dir(cfg.model)
    tokenizer = load_tokenizer(model_dir, cfg.chat_template, cfg.trust_remote_code)
    model = apply_method(load_model(model_dir, trust_remote_code=cfg.trust_remote_code), cfg)
    copy_weights(read_checkpoint(args.checkpoint).weights, model, args.checkpoint)
    args.output.mkdir(parents=True, exist_ok=False)
    shutil.copy(run / "config.yaml", args.output / "config.yaml")
    print(save_result(model, tokenizer, cfg, args.output, model_dir))


if __name__ == "__main__":
    main()
