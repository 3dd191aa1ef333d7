"""Scores for one answer against its reference, and how each metric aggregates over a test set.

Every metric is kept as per-example sufficient statistics (an `(n, k)` array) plus a reducer that
turns column sums into the corpus value. The point estimate and every bootstrap resample use the
same reducer, so corpus BLEU, corpus chrF and token-weighted loss get honest intervals too.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import re
import string
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import UserError

Reducer = Callable[[np.ndarray, int], np.ndarray]  # (B, k) column sums, n examples -> (B,) values
UserScorer = Callable[[str, str, str], float]


@dataclass(frozen=True)
class MetricInfo:
    key: str
    label: str
    higher_is_better: bool | None  # None: a description (length), not a quality score
    digits: int  # decimals shown in tables


METRICS: dict[str, MetricInfo] = {m.key: m for m in (
    MetricInfo("loss", "loss", False, 4),
    MetricInfo("perplexity", "perplexity", False, 3),
    MetricInfo("exact_match", "exact match", True, 3),
    MetricInfo("accuracy", "accuracy (norm.)", True, 3),
    MetricInfo("token_f1", "token F1", True, 3),
    MetricInfo("rouge_l", "ROUGE-L", True, 3),
    MetricInfo("chrf", "chrF", True, 2),
    MetricInfo("bleu", "BLEU", True, 2),
    MetricInfo("length", "length (words)", None, 1),
    MetricInfo("user_score", "user scorer", True, 3),
)}
PREFERENCE_METRICS: dict[str, MetricInfo] = {m.key: m for m in (  # on preference pairs only: evaluate/preference.py
    MetricInfo("preference_accuracy", "preference accuracy", True, 3),
    MetricInfo("logp_margin", "log-prob margin (chosen − rejected)", True, 3),
    MetricInfo("reward_accuracy", "DPO reward accuracy (ref. = base)", True, 3),
    MetricInfo("reward_margin", "DPO reward margin (β, ref. = base)", True, 4),
)}
ALL_METRICS = {**PREFERENCE_METRICS, **METRICS}  # table order: a pair's preference first
GENERATION_METRICS = ("exact_match", "accuracy", "token_f1", "rouge_l", "chrf", "bleu", "length")


# --- text normalisation -------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _is_punctuation(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def normalize_text(text: str) -> str:
    """Lower-case, drop punctuation and collapse whitespace: "Yes." and " yes" become equal."""
    text = "".join(" " if _is_punctuation(ch) else ch for ch in text.lower())
    return " ".join(text.split())


def squad_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation (also drops a/an/the), split into tokens for token F1."""
    return _ARTICLES.sub(" ", normalize_text(text)).split()


# --- per-example scores -------------------------------------------------------------------------


def exact_match(reference: str, answer: str) -> float:
    """1.0 when the answer is the reference character for character (outer whitespace aside)."""
    return float(reference.strip() == answer.strip())


def normalized_accuracy(reference: str, answer: str) -> float:
    """1.0 when answer and reference agree after case, whitespace and punctuation are ignored."""
    return float(normalize_text(reference) == normalize_text(answer))


def token_f1(reference: str, answer: str) -> float:
    """SQuAD token F1: harmonic mean of token precision and recall, counting repeats."""
    ref, hyp = squad_tokens(reference), squad_tokens(answer)
    if not ref or not hyp:
        return float(ref == hyp)
    common = _multiset_overlap(ref, hyp)
    if common == 0:
        return 0.0
    precision, recall = common / len(hyp), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _multiset_overlap(a: list[str], b: list[str]) -> int:
    return sum((Counter(a) & Counter(b)).values())


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(reference: str, answer: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words), as `rouge-score` computes it."""
    return float(_rouge_scorer().score(reference, answer)["rougeL"].fmeasure)


@lru_cache(maxsize=1)
def _sacrebleu_metrics():
    from sacrebleu.metrics import BLEU, CHRF

    # sentence BLEU needs effective order (sacrebleu's own sentence_bleu default); corpus BLEU does not
    return BLEU(effective_order=True), BLEU(), CHRF()


def sentence_bleu(reference: str, answer: str) -> float:
    """sacrebleu sentence BLEU (0-100, exp smoothing, effective order)."""
    return float(_sacrebleu_metrics()[0].sentence_score(answer, [reference]).score)


def sentence_chrf(reference: str, answer: str) -> float:
    """sacrebleu sentence chrF (0-100)."""
    return float(_sacrebleu_metrics()[2].sentence_score(answer, [reference]).score)


def answer_length(answer: str) -> float:
    """Words in the answer: a tokenizer-independent length users can read."""
    return float(len(answer.split()))


def example_scores(reference: str, answer: str) -> dict[str, float]:
    """Every built-in generation score of one answer, for results.json and the report."""
    return {
        "exact_match": exact_match(reference, answer),
        "accuracy": normalized_accuracy(reference, answer),
        "token_f1": token_f1(reference, answer),
        "rouge_l": rouge_l(reference, answer),
        "chrf": sentence_chrf(reference, answer),
        "bleu": sentence_bleu(reference, answer),
        "length": answer_length(answer),
    }


# --- corpus statistics and reducers -------------------------------------------------------------


def mean_reducer(sums: np.ndarray, n: int) -> np.ndarray:
    return sums[:, 0] / n


def loss_reducer(sums: np.ndarray, n: int) -> np.ndarray:
    """Token-weighted mean NLL: total NLL over total reference tokens."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[:, 0] / sums[:, 1]


def perplexity_reducer(sums: np.ndarray, n: int) -> np.ndarray:
    return np.exp(loss_reducer(sums, n))


def bleu_reducer(sums: np.ndarray, n: int) -> np.ndarray:
    corpus_bleu = _sacrebleu_metrics()[1]
    return np.array([corpus_bleu._compute_score_from_stats(list(row)).score for row in sums])


def chrf_reducer(sums: np.ndarray, n: int) -> np.ndarray:
    chrf = _sacrebleu_metrics()[2]
    return np.array([chrf._compute_score_from_stats(list(row)).score for row in sums])


def bleu_stats(references: list[str], answers: list[str]) -> np.ndarray:
    """Per-example BLEU sufficient statistics (lengths, n-gram matches and totals)."""
    stats = _sacrebleu_metrics()[1]._extract_corpus_statistics(answers, [references])
    return np.asarray(stats, dtype=np.float64).reshape(len(answers), -1)


def chrf_stats(references: list[str], answers: list[str]) -> np.ndarray:
    """Per-example chrF sufficient statistics (character and word n-gram counts)."""
    stats = _sacrebleu_metrics()[2]._extract_corpus_statistics(answers, [references])
    return np.asarray(stats, dtype=np.float64).reshape(len(answers), -1)


def generation_stats(references: list[str], answers: list[str], per_example: list[dict[str, float]]) -> dict[str, np.ndarray]:
    """The `(n, k)` statistics of every generation metric for one model's answers."""
    stats = {key: np.array([[s[key]] for s in per_example], dtype=np.float64).reshape(-1, 1)
             for key in ("exact_match", "accuracy", "token_f1", "rouge_l", "length")}
    stats["bleu"] = bleu_stats(references, answers)
    stats["chrf"] = chrf_stats(references, answers)
    return stats


REDUCERS: dict[str, Reducer] = {
    "loss": loss_reducer,
    "perplexity": perplexity_reducer,
    "bleu": bleu_reducer,
    "chrf": chrf_reducer,
}


def reducer_for(key: str) -> Reducer:
    return REDUCERS.get(key, mean_reducer)


def corpus_value(key: str, stats: np.ndarray) -> float:
    """The metric over the whole test set, from its per-example statistics."""
    value = float(reducer_for(key)(stats.sum(axis=0, keepdims=True), len(stats))[0])
    return value if math.isfinite(value) else float("nan")


# --- user scorer --------------------------------------------------------------------------------


def load_scorer(spec: str) -> UserScorer:
    """Import `module:function` (or `path/to/file.py:function`) as a (prompt, reference, answer) -> float scorer."""
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise UserError(f"--scorer {spec!r}: expected module:function", "write it as --scorer my_scorers:score_answer")
    module = _import_scorer_module(spec, module_name)
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise UserError(f"--scorer {spec!r}: {module_name} has no function {func_name!r}", "check the function name")
    return fn


def _import_scorer_module(spec: str, module_name: str):
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise UserError(f"--scorer {spec!r}: file {path} not found", "check the path to the scorer file")
        loader_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
        return module
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # the console script does not put the working folder on the path
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"--scorer {spec!r}: cannot import {module_name} ({e})", "run from the folder that holds the module, or give a .py path") from None


def apply_scorer(scorer: UserScorer, spec: str, prompt: str, reference: str, answer: str, where: str) -> float:
    """Call the user's scorer and insist on a number, naming the example when it fails."""
    try:
        value = scorer(prompt, reference, answer)
    except Exception as e:  # the user's code: report it as their input, not our bug
        raise UserError(f"--scorer {spec}: raised {type(e).__name__}: {e} on {where}", "fix the scorer function") from None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"--scorer {spec}: returned {value!r} on {where}, not a number", "return a float") from None
