"""The committed long-prompt classification example (examples/library-docstrings/): one-word answers, no give-aways."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "library-docstrings"
SPLITS = ("train", "validation", "test")
sys.path.insert(0, str(ROOT / "examples"))
from build_library_docstrings import (
    LIBRARIES,
    MAX_CHARS,
    MIN_CHARS,
    QUESTION,
    strip_library,
)


def rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def docstring(row: dict) -> str:
    return row["messages"][0]["content"].removeprefix(f"{QUESTION}\n\n")


@pytest.mark.parametrize("split", SPLITS)
def test_answers_are_the_eight_libraries_and_prompts_do_not_name_theirs(split):
    data = rows(split)
    assert {r["messages"][-1]["content"] for r in data} == set(LIBRARIES)
    for row in data:
        library, text = row["messages"][-1]["content"], docstring(row).lower()
        assert library not in text, row
        assert not any(re.search(rf"(?<![\w.]){alias}\.", text) for alias in LIBRARIES[library]), row


def test_prompts_are_long_like_the_hidden_task():
    lengths = [len(docstring(r)) for split in SPLITS for r in rows(split)]
    assert min(lengths) >= MIN_CHARS and max(lengths) <= MAX_CHARS
    assert sum(lengths) / len(lengths) > 500  # characters; stdlib-modules' prompts are at most 240


def test_splits_are_disjoint_stratified_and_sized_as_documented():
    keys = {split: {docstring(r) for r in rows(split)} for split in SPLITS}
    assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"] and not keys["validation"] & keys["test"]
    assert (len(rows("train")), len(rows("validation")), len(rows("test"))) == (1096, 200, 304)
    per_class = {name: sum(r["messages"][-1]["content"] == name for r in rows("test")) for name in LIBRARIES}
    assert set(per_class.values()) == {38}


def test_aliases_and_names_are_deleted_but_other_words_stay():
    text = "Use np.mean or numpy.sum on the input; NumPy arrays and pd.DataFrame stay."
    assert strip_library(text, "numpy") == "Use or on the input; arrays and pd.DataFrame stay."
    assert "input" in strip_library("the input of hf_hub_download and hf.upload", "huggingface_hub")
