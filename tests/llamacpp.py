"""Drive real llama.cpp from the tests: `.venv-llama` (made by `make llama`) runs tests/llamacpp_runner.py.

The main environment never imports llama_cpp; where `.venv-llama` is missing or broken, the tests that
need it are skipped with the reason (pytest prints it with -ra), never silently passed.
"""
from __future__ import annotations

import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().with_name("llamacpp_runner.py")
BUILD_LOG = REPO / ".venv-llama" / "build.log"


def llama_python() -> Path:
    """The interpreter with llama-cpp-python: $TUNEWRIGHT_LLAMA_PYTHON or the repository's .venv-llama."""
    return Path(os.environ.get("TUNEWRIGHT_LLAMA_PYTHON", REPO / ".venv-llama" / "bin" / "python"))


def _build_log_tail() -> str:
    lines = BUILD_LOG.read_text(errors="replace").strip().splitlines() if BUILD_LOG.is_file() else []
    return f"; {BUILD_LOG} ends: {lines[-1][:300]}" if lines else ""


@lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """Why llama.cpp cannot run here, or None when it can."""
    python = llama_python()
    if not python.is_file():
        return f"llama.cpp environment not built ({python} missing): run `make llama`{_build_log_tail()}"
    probe = subprocess.run([str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"], check=False,
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"llama_cpp does not import in {python} ({last}): run `make llama`{_build_log_tail()}"
    return None


def require_llama() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)


def run_llama(request: dict, timeout: float = 300) -> dict:
    """Send one request to llamacpp_runner.py in .venv-llama and return its JSON answer (skip if unavailable)."""
    require_llama()
    out = subprocess.run([str(llama_python()), str(RUNNER)], check=False, input=json.dumps(request), capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, f"llama.cpp runner failed on {request.get('gguf')}:\n{out.stderr[-3000:]}"
    return json.loads(out.stdout)


def legacy_sentencepiece(tokenizer):
    """A copy that prepends ▁ to every piece of text, as sentencepiece itself and llama.cpp do."""
    import copy

    from tokenizers import normalizers

    legacy = copy.deepcopy(tokenizer)
    legacy.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    legacy.backend_tokenizer.pre_tokenizer = None
    return legacy


def prepends_first_only(tokenizer) -> bool:
    """HF's non-legacy Metaspace (Mistral v0.3): ▁ only before the very start of the text, and not when it
    already starts with a space. llama.cpp has no such mode: it adds ▁ to every piece of text (as sentencepiece
    does), and no GGUF key can say otherwise."""
    import json

    pre = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    return pre.get("type") == "Metaspace" and pre.get("prepend_scheme") == "first"
