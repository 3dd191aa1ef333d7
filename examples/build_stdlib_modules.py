#!/usr/bin/env python3
"""Build a one-word classification task: which standard-library package a docstring comes from.

Each example is the first one or two sentences of a public function's, class's or method's
docstring from one of ten standard-library packages (their submodules included); the answer is
the package name, one word.  The package's own name is deleted from the prompt (case-insensitive,
with the word it sits in: ``asyncio.Future`` or ``HTTPConnection`` would give the class away), and
a sentence found in two packages is dropped.  Splits are stratified by class and disjoint by
docstring.  Deterministic for a given Python version (the committed files: Python 3.11).

Usage::

    python examples/build_stdlib_modules.py [--out DIR] [--n-test 300] [--n-validation 200]

Only the Python standard library is needed (tkinter must be importable).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import random
import re
import sys
import warnings
from collections import Counter
from pathlib import Path

from build_stdlib_qa import clean_markup, first_sentence, is_usable_sentence

PACKAGES = sorted(["asyncio", "decimal", "email", "http", "importlib", "logging",
                   "multiprocessing", "tkinter", "unittest", "xml"])
QUESTION = "Which Python standard-library package is this docstring from? Answer with one word."
MAX_PER_CLASS = 200   # tkinter and asyncio have 600 / 220 usable docstrings; the rest 105-170
MAX_PROMPT_CHARS = 240  # keeps a rendered example near 60-80 tokens: every training run is minutes on CPU


def package_modules(name: str) -> list:
    """The package and every importable submodule (tests and __main__ excluded)."""
    package = importlib.import_module(name)
    modules = [package]
    for info in pkgutil.walk_packages(getattr(package, "__path__", []), name + "."):
        parts = info.name.split(".")
        if "__main__" in parts or any(p.startswith("test") for p in parts[1:]):
            continue
        try:
            modules.append(importlib.import_module(info.name))
        except Exception:  # noqa: S112, BLE001 - optional platform modules (e.g. asyncio.windows_events)
            continue
    return modules


def documented_objects(module) -> list:
    """Public functions and classes defined in `module`, and the methods of those classes."""
    out = []
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isroutine(obj):
            out.append(obj)
        elif inspect.isclass(obj):
            out.append(obj)
            out.extend(v for k, v in sorted(vars(obj).items()) if not k.startswith("_") and inspect.isroutine(v))
    return out


def opening_sentences(doc: str) -> str | None:
    """The docstring's first sentence, plus its second when both fit in MAX_PROMPT_CHARS."""
    first = first_sentence(doc)
    if not is_usable_sentence(first):
        return None
    paragraph = clean_markup(inspect.cleandoc(doc).split("\n\n")[0])
    rest = paragraph.split(first.rstrip("."), 1)[-1].lstrip(". ")
    second = first_sentence(rest) if rest else None
    if second and is_usable_sentence(second) and len(first) + len(second) + 1 <= MAX_PROMPT_CHARS:
        return f"{first} {second}"
    return first


def strip_name(text: str, package: str) -> str:
    """Delete every word containing the package's name, so no class is given away by it."""
    text = re.sub(rf"[\w.`]*{re.escape(package)}[\w.`]*", "", text, flags=re.IGNORECASE)
    return re.sub(r"\s+([.,;:])", r"\1", re.sub(r"\s{2,}", " ", text)).strip()


def normalized(text: str) -> str:
    """Case and punctuation folded: `a < b` and `a <= b` variants count as one docstring."""
    return re.sub(r"\W+", " ", text.lower()).strip()


def opening_text(doc: str, package: str) -> str | None:
    """The usable, name-stripped opening of a docstring of `package`, or None."""
    text = opening_sentences(doc)
    text = strip_name(text, package) if text else None
    return text if text and len(text.split()) >= 3 else None


def collect(package: str, text_of=opening_text) -> dict[str, str]:
    """`text_of(doc, package)` for every documented object of `package` (None: left out), keyed by normalized form."""
    texts = {}
    for module in package_modules(package):
        for obj in documented_objects(module):
            doc = getattr(obj, "__doc__", None)
            text = text_of(doc, package) if isinstance(doc, str) else None
            if text:
                texts.setdefault(normalized(text), text)
    return texts


def example(text: str, package: str) -> dict:
    return {"messages": [{"role": "user", "content": f"{QUESTION}\n\n{text}"},
                         {"role": "assistant", "content": package}]}


def split_rows(by_class: dict[str, list[str]], n_test: int, n_val: int, rng: random.Random,
               make=example) -> dict[str, list[dict]]:
    """Stratified split: each class gives test and validation rows in proportion to its size; `make(text, label)` a row."""
    total = sum(len(v) for v in by_class.values())
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for package, texts in sorted(by_class.items()):
        n_te = round(n_test * len(texts) / total)
        n_va = round(n_val * len(texts) / total)
        splits["test"] += [make(t, package) for t in texts[:n_te]]
        splits["validation"] += [make(t, package) for t in texts[n_te:n_te + n_va]]
        splits["train"] += [make(t, package) for t in texts[n_te + n_va:]]
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def write_task(out: Path, texts: dict[str, dict[str, str]], n_test: int, n_val: int, rng: random.Random,
               max_per_class: int, make=example) -> dict[str, int]:
    """Drop texts found in two classes, cap each class, split stratified and write the three JSONL files."""
    seen = Counter(key for ts in texts.values() for key in ts)
    by_class = {}
    for label, ts in texts.items():
        unique = sorted(t for key, t in ts.items() if seen[key] == 1)
        rng.shuffle(unique)
        by_class[label] = unique[:max_per_class]
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split, rows in split_rows(by_class, n_test, n_val, rng, make).items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        sizes[split] = len(rows)
    sizes.update({f"class:{label}": len(v) for label, v in by_class.items()})
    return sizes


def build(out: Path, n_test: int, n_val: int, seed: int) -> dict[str, int]:
    warnings.simplefilter("ignore")
    rng = random.Random(seed)
    return write_task(out, {p: collect(p) for p in PACKAGES}, n_test, n_val, rng, MAX_PER_CLASS)


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=here / "stdlib-modules")
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--n-validation", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = build(args.out, args.n_test, args.n_validation, args.seed)
    print(f"python {sys.version_info.major}.{sys.version_info.minor}: {sizes}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
