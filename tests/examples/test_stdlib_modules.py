"""The committed classification example (examples/stdlib-modules/): one-word answers, no give-aways, reproducible."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "stdlib-modules"
SPLITS = ("train", "validation", "test")
CLASSES = {"asyncio", "decimal", "email", "http", "importlib", "logging", "multiprocessing", "tkinter", "unittest", "xml"}


def rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def prompt_key(row: dict) -> str:
    return re.sub(r"\W+", " ", row["messages"][0]["content"].lower()).strip()


@pytest.mark.parametrize("split", SPLITS)
def test_answers_are_one_of_ten_words_and_prompts_do_not_name_their_class(split):
    data = rows(split)
    answers = [r["messages"][-1]["content"] for r in data]
    assert set(answers) == CLASSES
    for row, answer in zip(data, answers):
        assert answer.lower() not in row["messages"][0]["content"].lower(), row


def test_splits_are_disjoint_and_sized_as_documented():
    keys = {split: {prompt_key(r) for r in rows(split)} for split in SPLITS}
    assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"] and not keys["validation"] & keys["test"]
    assert (len(keys["train"]), len(keys["validation"]), len(keys["test"])) == (970, 199, 302)


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="committed data was built with Python 3.11")
def test_builder_reproduces_committed_files(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "examples" / "build_stdlib_modules.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=300)
    for split in SPLITS:
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (DATA / f"{split}.jsonl").read_bytes(), split
