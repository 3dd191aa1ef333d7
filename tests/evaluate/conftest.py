"""Fixtures of the evaluation and chat tests: run directories built the way the trainer writes them.

A tiny random Llama is the base; a LoRA adapter (all-linear, randomised lora_B so it really changes
the answers) or a perturbed full copy is the "tuned" result; config.yaml names the base and a fake but
well-formed metrics.jsonl gives the report a loss curve (builders: tests/run_folders.py).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import save_tiny, write_jsonl
from run_folders import build_adapter_run, build_full_run, held_out_rows

_BUILT: dict[str, Path] = {}  # one build per session, shared by every test in this folder


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


