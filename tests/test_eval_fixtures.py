"""Run directories for the evaluation and chat tests, built the way the trainer writes them.

A tiny random Llama is the base; a LoRA adapter (all-linear, randomised lora_B so it really changes
the answers) or a perturbed full copy is the "tuned" result; config.yaml names the base and a fake but
well-formed metrics.jsonl gives the report a loss curve. Other test modules import the fixtures.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import save_tiny, write_jsonl

_BUILT: dict[str, Path] = {}  # one build per session, shared by every module that imports these fixtures


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


def _cached(key: str, factory, tmp_path_factory) -> Path:
    if key not in _BUILT or not _BUILT[key].exists():
        _BUILT[key] = factory(tmp_path_factory.mktemp(key))
    return _BUILT[key]


@pytest.fixture(scope="session")
def eval_base_dir(tmp_path_factory) -> Path:
    return _cached("base", lambda d: save_tiny(d, "chatml"), tmp_path_factory)


@pytest.fixture(scope="session")
def adapter_run(tmp_path_factory, eval_base_dir) -> Path:
    return _cached("adapter-run", lambda d: build_adapter_run(d, eval_base_dir), tmp_path_factory)


@pytest.fixture(scope="session")
def full_run(tmp_path_factory, eval_base_dir) -> Path:
    return _cached("full-run", lambda d: build_full_run(d, eval_base_dir), tmp_path_factory)


@pytest.fixture(scope="session")
def test_file(tmp_path_factory) -> Path:
    return _cached("test-data", lambda d: write_jsonl(d / "test.jsonl", held_out_rows()), tmp_path_factory)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models run fastest on one thread, and far faster when other test processes share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def subprocess_env(tmp_path: Path) -> dict:
    """Environment for CLI subprocesses: offline, one thread, a private tunewright cache."""
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TUNEWRIGHT_HOME": str(tmp_path / "home"),
            "COLUMNS": "120", "NO_COLOR": "1"}
