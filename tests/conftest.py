"""Shared fixtures: tiny randomly initialised models and real (tiny) tokenizers built offline.

Each tokenizer is a byte-level BPE trained here on the example data, with the special tokens and
chat template of a real model family, so template rendering and masks are exercised for real.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import build_tokenizer, save_tiny


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with a ChatML BPE tokenizer, saved as a normal Hugging Face folder."""
    return save_tiny(tmp_path_factory.mktemp("models"), "chatml")


@pytest.fixture(scope="session")
def tiny_llama3_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("models"), "llama3")


@pytest.fixture(scope="session", params=["chatml", "llama3", "mistral"])
def tokenizer_family(request):
    return request.param, build_tokenizer(request.param)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own tunewright cache, except the dequantized real model (shared, slow to make)."""
    monkeypatch.setenv("TUNEWRIGHT_TOKENIZED_CACHE", str(tmp_path / "tokcache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def chat_rows() -> list[dict]:
    rows = []
    for i in range(40):
        rows.append({"messages": [
            {"role": "user", "content": f"What is {i} plus {i}?"},
            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
        ]})
    return rows


@pytest.fixture(scope="session", params=__import__("families").FAMILIES)
def family_dir(request, tmp_path_factory) -> Path:
    """A saved tiny model folder of each supported family (tests/families.py); the test id is the family name."""
    from families import save_family

    return save_family(tmp_path_factory.mktemp(f"family-{request.param}"), request.param)


@pytest.fixture(scope="session", params=__import__("families").FAMILIES)
def family_tokenizer(request):
    """(family name, a fresh tokenizer of that family) for every supported family."""
    from families import build_family_tokenizer

    return request.param, build_family_tokenizer(request.param)



