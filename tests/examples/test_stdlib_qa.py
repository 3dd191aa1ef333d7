"""Checks for the committed example dataset in examples/stdlib-qa/.

The dataset is built by examples/build_stdlib_qa.py from Python standard
library docstrings.  Only the standard library and pytest are used here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "examples" / "build_stdlib_qa.py"
DATA_DIR = ROOT / "examples" / "stdlib-qa"
SPLITS = ("train", "test")
ROLES = {"system", "user", "assistant"}
# The committed files were generated with this Python version; docstrings (and
# therefore the output) legitimately differ on other versions.
BUILT_WITH = (3, 11)


def _load(split: str) -> list[dict]:
    path = DATA_DIR / f"{split}.jsonl"
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            assert line.strip(), f"{path}:{lineno}: blank line"
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:  # pragma: no cover - message only
                pytest.fail(f"{path}:{lineno}: invalid JSON: {exc}")
    return rows


@pytest.mark.parametrize("split", SPLITS)
def test_rows_follow_messages_schema(split):
    rows = _load(split)
    assert rows, f"{split}.jsonl is empty"
    for i, row in enumerate(rows):
        assert isinstance(row, dict) and set(row) == {"messages"}, (split, i)
        messages = row["messages"]
        assert isinstance(messages, list) and len(messages) >= 3, (split, i)
        for msg in messages:
            assert isinstance(msg, dict) and set(msg) == {"role", "content"}, (split, i)
            assert msg["role"] in ROLES, (split, i, msg["role"])
            assert isinstance(msg["content"], str) and msg["content"].strip(), (split, i)
        assert messages[0]["role"] == "system", (split, i)
        # After the system prompt, turns alternate user/assistant.
        for j, msg in enumerate(messages[1:]):
            expected = "user" if j % 2 == 0 else "assistant"
            assert msg["role"] == expected, (split, i, j)


@pytest.mark.parametrize("split", SPLITS)
def test_last_message_is_nonempty_assistant(split):
    for i, row in enumerate(_load(split)):
        last = row["messages"][-1]
        assert last["role"] == "assistant", (split, i)
        assert last["content"].strip(), (split, i)


@pytest.mark.parametrize("split", SPLITS)
def test_answers_have_no_leftover_rest_markup(split):
    for i, row in enumerate(_load(split)):
        for msg in row["messages"]:
            if msg["role"] == "assistant":
                assert not re.search(r":[a-z]+:`|``", msg["content"]), (split, i)


def _questions(rows: list[dict]) -> set[str]:
    # The first user turn is the question; follow-up turns ("And what module is
    # it in?") are shared templates by design.
    return {row["messages"][1]["content"] for row in rows}


def _names(rows: list[dict]) -> set[str]:
    names = set()
    for row in rows:
        m = re.match(r"`([\w.]+)", row["messages"][2]["content"])
        assert m, row["messages"][2]["content"]
        names.add(m.group(1))
    return names


def test_train_and_test_are_disjoint():
    train, test = _load("train"), _load("test")
    assert not _questions(train) & _questions(test)
    assert not _names(train) & _names(test)
    assert len(train) > len(test) > 0
    # Some examples are multi-turn so multi-turn masking is exercised.
    assert any(len(row["messages"]) > 3 for row in train)


def _run_builder(out_dir: Path, hash_seed: str) -> None:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    subprocess.run(
        [sys.executable, str(BUILDER), "--out", str(out_dir)],
        check=True,
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        timeout=300,
    )


def test_builder_is_deterministic(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    _run_builder(first, "1")
    _run_builder(second, "2")
    for split in SPLITS:
        a = (first / f"{split}.jsonl").read_bytes()
        b = (second / f"{split}.jsonl").read_bytes()
        assert a and a == b, split


@pytest.mark.skipif(
    sys.version_info[:2] != BUILT_WITH,
    reason="committed data was built with Python %d.%d" % BUILT_WITH,
)
def test_builder_reproduces_committed_files(tmp_path):
    _run_builder(tmp_path, "0")
    for split in SPLITS:
        rebuilt = (tmp_path / f"{split}.jsonl").read_bytes()
        committed = (DATA_DIR / f"{split}.jsonl").read_bytes()
        assert rebuilt == committed, (
            f"{split}.jsonl differs; rebuild with `python examples/build_stdlib_qa.py`"
        )
