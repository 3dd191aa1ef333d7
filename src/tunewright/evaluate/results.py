"""Score each model on the test set and assemble results.json: metrics, intervals, verdicts, examples.

Schema (version 1), the contract the report, `--json` and other tools read:
  metrics[side][metric]      corpus value per side ("tuned" = the model evaluated, "base" = its base)
  comparison[metric]         base, tuned, delta (tuned - base), low/high (95% paired bootstrap), verdict
  examples[i]                prompt, messages, reference, base_answer, tuned_answer, scores[side][metric]
                             (+ rejected and logps[side] = {chosen, rejected} on preference pairs)
  preference                 on preference pairs only: pairs, beta, how log-probs are reduced, the reference
  changed_most               indices of the examples whose primary score rose / fell the most
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..data.conversation import Conversation
from ..train.validation import LossSettings
from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, paired_bootstrap
from .generate import Answer, SamplingSettings, generate_answers
from .loss import reference_loss_stats
from .metrics import (
    ALL_METRICS,
    UserScorer,
    apply_scorer,
    corpus_value,
    example_scores,
    generation_stats,
    reducer_for,
)
from .preference import HeldOutPairs, pair_logps, reward_stats, side_stats
from .sides import BASE, TUNED, Side

SCHEMA_VERSION = 1
CHANGED_MOST = 5  # examples shown per direction in the report


@dataclass(frozen=True)
class EvalSettings:
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    limit: int | None = None
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    confidence: float = 0.95
    scorer: str | None = None  # "module:function", recorded for the report
    loss: LossSettings = field(default_factory=LossSettings)  # the run's tokenization for the loss


@dataclass
class SideResult:
    """One model's answers on the test set and every statistic needed to score and compare it."""

    answers: list[Answer]
    per_example: list[dict[str, float]]
    stats: dict[str, np.ndarray]  # metric -> (n, k) per-example statistics
    seconds: float
    pair_logps: np.ndarray | None = None  # (n, 2) summed log-probs of (chosen, rejected), on preference pairs

    def metrics(self) -> dict[str, float]:
        """Corpus value of every metric, in the order of ALL_METRICS."""
        return {key: corpus_value(key, self.stats[key]) for key in ALL_METRICS if key in self.stats}


@dataclass(frozen=True)
class HeldOut:
    """The examples in the form scoring needs: prompts to answer and references to compare with."""

    conversations: list[Conversation]
    prompts: list[list[dict]]
    references: list[str]
    user_texts: list[str]  # the last user message: what the report and a user scorer call the prompt
    pairs: HeldOutPairs | None = None  # preference data: the conversations are prompt + chosen answer

    @classmethod
    def of(cls, conversations: list[Conversation], pairs: HeldOutPairs | None = None) -> HeldOut:
        return cls(conversations, [c.prompt_messages() for c in conversations], [c.reference() for c in conversations],
                   [last_user_text(c) for c in conversations], pairs)


def last_user_text(conv: Conversation) -> str:
    """The question as a person would quote it: the last user message before the answer."""
    users = [m["content"] for m in conv.prompt_messages() if m["role"] == "user"]
    return users[-1] if users else ""


def score_side(side: Side, test: HeldOut, settings: EvalSettings, scorer: UserScorer | None) -> SideResult:
    """Loss on the references, then generated answers and their scores, for one model."""
    start = time.perf_counter()
    logps = None
    with side.active() as model:
        if test.pairs is not None:
            logps = pair_logps(model, test.pairs.pairs, side.tokenizer.pad_token_id, description=f"{side.key}: pairs")
        loss = reference_loss_stats(model, side.tokenizer, test.conversations, settings.loss, description=f"{side.key}: loss")
        answers = generate_answers(model, side.tokenizer, test.prompts, settings.sampling, description=f"{side.key}: answers")
    texts = [a.text for a in answers]
    per_example = [example_scores(ref, text) for ref, text in zip(test.references, texts)]
    for row, (nll, tokens) in zip(per_example, loss):
        row["loss"] = nll / tokens if tokens else math.nan
    stats = {"loss": loss, "perplexity": loss, **generation_stats(test.references, texts, per_example)}
    if logps is not None:
        add_stats(per_example, stats, side_stats(logps))
    if scorer is not None:
        for i, row in enumerate(per_example):
            where = test.conversations[i].source or f"example {i}"
            row["user_score"] = apply_scorer(scorer, settings.scorer or "", test.user_texts[i], test.references[i], texts[i], where)
        stats["user_score"] = np.array([[row["user_score"]] for row in per_example], dtype=np.float64).reshape(-1, 1)
    return SideResult(answers, per_example, stats, time.perf_counter() - start, logps)


def add_stats(per_example: list[dict[str, float]], stats: dict[str, np.ndarray], extra: dict[str, np.ndarray]) -> None:
    """Add one-column per-example statistics to a side's stats and to each example's scores."""
    stats.update(extra)
    for key, column in extra.items():
        for row, value in zip(per_example, column[:, 0]):
            row[key] = float(value)


def add_rewards(results: dict[str, SideResult], beta: float) -> None:
    """DPO implicit reward statistics on both sides, the base being the tuned model's reference."""
    base, tuned = reward_stats(results[BASE].pair_logps, results[TUNED].pair_logps, beta)
    add_stats(results[BASE].per_example, results[BASE].stats, base)
    add_stats(results[TUNED].per_example, results[TUNED].stats, tuned)


def metric_keys(results: dict[str, SideResult]) -> list[str]:
    present = set(next(iter(results.values())).stats)
    return [key for key in ALL_METRICS if key in present]


def compare(base: SideResult, tuned: SideResult, keys: list[str], settings: EvalSettings) -> dict[str, dict]:
    """Per metric: both values, the delta and its paired bootstrap interval, and the verdict."""
    out = {}
    for key in keys:
        info = ALL_METRICS[key]
        interval = paired_bootstrap(base.stats[key], tuned.stats[key], reducer_for(key), info.higher_is_better,
                                    settings.resamples, settings.seed, settings.confidence)
        out[key] = {"base": corpus_value(key, base.stats[key]), "tuned": corpus_value(key, tuned.stats[key]), **interval.to_dict()}
    return out


def primary_metric(keys: list[str]) -> str:
    """The score that ranks examples by change: the user's scorer when given, else token F1."""
    return "user_score" if "user_score" in keys else "token_f1"


def preference_rows(test: HeldOut, results: dict[str, SideResult], i: int) -> dict:
    """An example's rejected answer and each side's summed log-probs of both answers."""
    if test.pairs is None:
        return {}
    logps = {side: {"chosen": float(r.pair_logps[i, 0]), "rejected": float(r.pair_logps[i, 1])} for side, r in results.items()}
    return {"rejected": test.pairs.rejected[i], "logps": logps}


def changed_most(base: SideResult, tuned: SideResult, key: str, k: int = CHANGED_MOST) -> dict[str, list[int]]:
    """Indices of the k examples whose score rose the most and the k whose score fell the most."""
    deltas = np.array([t[key] - b[key] for b, t in zip(base.per_example, tuned.per_example)])
    order = np.argsort(-deltas, kind="stable")
    improved = [int(i) for i in order if deltas[i] > 0][:k]
    regressed = [int(i) for i in order[::-1] if deltas[i] < 0][:k]
    return {"improved": improved, "regressed": regressed}


def example_rows(test: HeldOut, results: dict[str, SideResult]) -> list[dict]:
    rows = []
    for i, conv in enumerate(test.conversations):
        row = {
            "index": i, "source": conv.source, "prompt": test.user_texts[i], "messages": test.prompts[i],
            "reference": test.references[i],
            "base_answer": results[BASE].answers[i].text if BASE in results else None,
            "tuned_answer": results[TUNED].answers[i].text,
            "scores": {side: r.per_example[i] for side, r in results.items()},
            "answer_tokens": {side: r.answers[i].tokens for side, r in results.items()},
            "cut_off": {side: r.answers[i].hit_limit for side, r in results.items()},
            **preference_rows(test, results, i),
        }
        if BASE in results:
            base, tuned = results[BASE].per_example[i], results[TUNED].per_example[i]
            row["delta"] = {key: tuned[key] - base[key] for key in tuned}
        rows.append(row)
    return rows


def run_evaluation(sides: list[Side], conversations: list[Conversation], settings: EvalSettings,
                   scorer: UserScorer | None = None, pairs: HeldOutPairs | None = None) -> dict:
    """Score every side on the same examples and assemble the results.json dictionary.

    With `pairs` (preference data), `conversations` are each pair's prompt + chosen answer, in the same order.
    """
    if pairs is not None and len(pairs.pairs) != len(conversations):
        raise ValueError(f"{len(pairs.pairs)} pairs but {len(conversations)} chosen conversations")
    test = HeldOut.of(conversations, pairs)
    results = {side.key: score_side(side, test, settings, scorer) for side in sides}
    comparing = BASE in results
    if pairs is not None and comparing:
        add_rewards(results, pairs.beta)
    keys = metric_keys(results)
    primary = primary_metric(keys)
    extra = {"preference": preference_summary(pairs, comparing, sides)} if pairs is not None else {}
    return to_json_safe({
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sides": {side.key: side.label for side in sides},
        "n_examples": len(conversations),
        "settings": _settings_dict(settings),
        "metric_info": {key: asdict(ALL_METRICS[key]) for key in keys},
        "metrics": {side: r.metrics() for side, r in results.items()},
        "comparison": compare(results[BASE], results[TUNED], keys, settings) if comparing else {},
        "primary_metric": primary,
        "changed_most": changed_most(results[BASE], results[TUNED], primary) if comparing else {"improved": [], "regressed": []},
        "generation": {side: _generation_summary(r) for side, r in results.items()},
        "examples": example_rows(test, results),
        **extra,
    })


def preference_summary(pairs: HeldOutPairs, comparing: bool, sides: list[Side]) -> dict:
    """How the preference metrics were computed (see evaluate/preference.py)."""
    return {"pairs": len(pairs.pairs), "beta": pairs.beta, "logps": "summed over the answer's trained tokens",
            "reference": next(s.label for s in sides if s.key == BASE) if comparing else None}


def _generation_summary(result: SideResult) -> dict:
    tokens = [a.tokens for a in result.answers]
    return {
        "mean_answer_tokens": float(np.mean(tokens)) if tokens else math.nan,
        "cut_off_at_max_new_tokens": sum(a.hit_limit for a in result.answers),
        "seconds": round(result.seconds, 2),
    }


def _settings_dict(settings: EvalSettings) -> dict:
    s = settings.sampling
    return {
        "max_new_tokens": s.max_new_tokens, "temperature": s.temperature, "top_p": s.top_p,
        "decoding": "sampling" if s.temperature > 0 else "greedy", "batch_size": s.batch_size,
        "limit": settings.limit, "scorer": settings.scorer, "loss": asdict(settings.loss),
        "bootstrap": {"resamples": settings.resamples, "seed": settings.seed, "confidence": settings.confidence},
    }


def to_json_safe(value):
    """NaN and infinities become null (JSON has no NaN); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
