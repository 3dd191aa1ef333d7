"""Run folders as the trainer writes them (adapter or full model, config.yaml, metrics.jsonl), built directly."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml
from helpers import write_jsonl


def make_adapter_run(tmp: Path, base_dir: Path, name: str = "run", seed: int = 1, method: str = "lora") -> Path:
    """A run folder as the trainer writes it: a LoRA adapter (not a no-op) + tokenizer + config.yaml."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=method == "dora"))
    generator = torch.Generator().manual_seed(seed)
    for pname, param in peft_model.named_parameters():
        if "lora_B" in pname:
            param.data = torch.randn(param.shape, generator=generator) * 0.2
    run = tmp / name
    peft_model.save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(run / "adapter")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": str(base_dir), "method": method}))
    return run


def make_full_run(tmp: Path, base_dir: Path, name: str = "full-run") -> Path:
    """A full fine-tune run folder: RUN/model is a stock save_pretrained folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)  # differ from the base a little
    run = tmp / name
    model.save_pretrained(run / "model")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(run / "model")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": str(base_dir), "method": "full"}))
    return run


def fake_metrics(path: Path, steps: int = 30, eval_every: int = 10) -> None:
    """metrics.jsonl rows as the trainer logs them: a decaying loss, eval_loss every `eval_every` steps."""
    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, "epoch": step / steps, "loss": 3.0 * math.exp(-step / 12) + 0.5, "lr": 1e-4,
               "grad_norm": 1.0, "tokens": 512 * step, "tokens_per_s": 200.0}
        if step % eval_every == 0:
            row["eval_loss"] = row["loss"] + 0.1
        rows.append(row)
    write_jsonl(path, rows)


def build_adapter_run(root: Path, base_dir: Path, seed: int = 1) -> Path:
    """RUN/adapter (stock PEFT save + tokenizer), RUN/config.yaml, RUN/metrics.jsonl."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    run = root / "run-adapter"
    model.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "adapter")
    (run / "config.yaml").write_text(f"model: {base_dir}\nmethod: lora\n")
    fake_metrics(run / "metrics.jsonl")
    return run


def build_full_run(root: Path, base_dir: Path, seed: int = 2) -> Path:
    """RUN/model (a perturbed full copy of the base), RUN/config.yaml, RUN/metrics.jsonl."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    run = root / "run-full"
    model.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    (run / "config.yaml").write_text(f"model: {base_dir}\nmethod: full\n")
    fake_metrics(run / "metrics.jsonl")
    return run


def held_out_rows(n: int = 6) -> list[dict]:
    """Short held-out chats (with a system prompt) like the ones in conftest's chat_rows."""
    return [{"messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
    ]} for i in range(n)]


def subprocess_env(tmp_path: Path) -> dict:
    """Environment for CLI subprocesses: offline, one thread, a private tunewright cache."""
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TUNEWRIGHT_HOME": str(tmp_path / "home"),
            "COLUMNS": "120", "NO_COLOR": "1"}
