#!/usr/bin/env python3
"""Build a long-prompt, one-word classification task: which Python library a whole docstring comes from.

Issue 11's hidden task has prompts of 50-470 tokens and one-word answers from 8 classes; the
stdlib-modules task (build_stdlib_modules.py) has ~65-token prompts. Here each prompt is the prose of a
public function's, class's or method's docstring (every paragraph but doctests, in one line, cut at a
sentence end within MAX_CHARS) from one of eight installed libraries that overlap in subject (array
maths, data frames, models, tensors, databases, the model hub); the answer is the library's name. The
name and its usual import aliases (``np.``, ``pd.``...) are deleted from the prompt, and a text found in
two libraries is dropped. Splits are stratified by class and disjoint by text.

The committed files (examples/library-docstrings/) were built from the libraries installed by
``pip install -e .[bench]`` on 2026-12-03; other versions give other docstrings.

Usage::

    python examples/build_library_docstrings.py [--out DIR] [--n-test 300] [--n-validation 200]
"""
from __future__ import annotations

import argparse
import random
import re
import sys
import warnings
from pathlib import Path

from build_stdlib_modules import collect, strip_name, write_task
from build_stdlib_qa import _SENTENCE_END_RE, _paragraphs, clean_markup

LIBRARIES = {  # name -> import aliases deleted where they start a dotted name ("np.array")
    "huggingface_hub": ("hf_hub", "huggingface", "hf"),
    "numpy": ("np",),
    "pandas": ("pd",),
    "scipy": ("sp",),
    "sklearn": ("scikit", "skl"),
    "sqlalchemy": ("sa",),
    "torch": ("pytorch", "th"),
    "transformers": (),
}
QUESTION = "Which Python library is this docstring from? Answer with one word."
MAX_PER_CLASS = 200
MIN_CHARS = 200   # ~50 tokens and up
MAX_CHARS = 1500  # rendered rows (question and chat template included): median 229 tokens, p99 467, max 608


def prose(doc: str) -> str | None:
    """The docstring's paragraphs (doctests left out) in one line, cut at the last sentence end within MAX_CHARS."""
    text = " ".join(clean_markup(p) for p in _paragraphs(doc) if ">>>" not in p)
    if len(text) > MAX_CHARS:
        ends = [m.start() for m in _SENTENCE_END_RE.finditer(text) if m.start() <= MAX_CHARS]
        text = text[:ends[-1]] if ends else ""
    return text if len(text) >= MIN_CHARS else None


def strip_library(text: str, library: str) -> str:
    """Delete the library's name (any word containing it) and names under its aliases (`np.mean`, `hf.`)."""
    text = strip_name(text, library)
    for alias in LIBRARIES[library]:
        text = re.sub(rf"(?<![\w.]){re.escape(alias)}\.[\w.`]*", "", text, flags=re.IGNORECASE)
        text = re.sub(rf"\b{re.escape(alias)}\b", "", text) if len(alias) > 3 else text
    return re.sub(r"\s+([.,;:])", r"\1", re.sub(r"\s{2,}", " ", text)).strip()


def library_text(doc: str, library: str) -> str | None:
    """A docstring's prose with the library's names deleted, or None when it is too short."""
    text = prose(doc)
    text = strip_library(text, library) if text else None
    return text if text and len(text) >= MIN_CHARS else None


def example(text: str, library: str) -> dict:
    return {"messages": [{"role": "user", "content": f"{QUESTION}\n\n{text}"},
                         {"role": "assistant", "content": library}]}


def build(out: Path, n_test: int, n_val: int, seed: int) -> dict[str, int]:
    warnings.simplefilter("ignore")
    rng = random.Random(seed)
    texts = {name: collect(name, library_text) for name in sorted(LIBRARIES)}
    return write_task(out, texts, n_test, n_val, rng, MAX_PER_CLASS, example)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "library-docstrings")
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--n-validation", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build(args.out, args.n_test, args.n_validation, args.seed), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
