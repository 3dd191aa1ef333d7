"""Train, then compare with the base on held-out examples: the path `tunewright train` and quickstart take.

It lives above both `train` and `evaluate` so neither reaches into the other.
"""
from __future__ import annotations

from .config import RunConfig
from .data.formats import PREFERENCE_FORMATS
from .train import RunResult, train


def held_out_conversations(result: RunResult) -> list:
    """A held-out test set (`eval.data`) beats the validation split used for early stopping."""
    cfg = result.config
    if cfg.eval.data:
        from .data import load_conversations

        return load_conversations(cfg.eval.data, sft_format(cfg)).conversations
    return result.held_out


def sft_format(cfg: RunConfig) -> str:
    """The run's data format, unless it names pairs (a DPO run's config.yaml says `format: dpo`): then detect."""
    return "auto" if cfg.data.format in PREFERENCE_FORMATS else cfg.data.format


def held_out_pairs(result: RunResult):
    """(chosen conversations, HeldOutPairs) to evaluate as pairs, or None to evaluate as SFT.

    `eval.data` holding pairs is evaluated as pairs whatever the objective; otherwise a preference run's
    validation pairs: training hands back their prompt + chosen conversations, whose `file:line` sources
    find the rows again, rendered and truncated as training rendered them.
    """
    from .data import data_kind, load_pairs, read_detected
    from .data.pairs import tokenize_pairs
    from .evaluate.preference import (
        beta_of,
        held_out_from_rows,
        load_test_pairs,
        tokenize_test_pairs,
    )

    cfg = result.config
    beta = beta_of(cfg.objective, cfg.preference.beta)
    if cfg.eval.data:
        files = read_detected(cfg.eval.data)[0]
        if data_kind(files) != "preference":
            return None
        where = " ".join(map(str, cfg.eval.data)) if isinstance(cfg.eval.data, list) else str(cfg.eval.data)
        rows, pairs = tokenize_test_pairs(load_test_pairs(files, where), result.tokenizer, cfg.data.max_seq_len, where)
        return held_out_from_rows(rows, pairs, beta)
    if cfg.objective == "sft":
        return None
    wanted = [c.source for c in result.held_out]
    if not wanted:
        return [], None
    loaded = load_pairs(cfg.data.validation or cfg.data.train, cfg.data.format)
    by_source = {r.source: r for r in loaded.pairs}
    tokenized = tokenize_pairs([by_source[s] for s in wanted if s in by_source], result.tokenizer, cfg.data.max_seq_len)
    return held_out_from_rows(tokenized.rows, tokenized.pairs, beta)


def train_and_evaluate(cfg: RunConfig, resume: bool = False) -> RunResult:
    result = train(cfg, resume=resume)
    if result.is_main_process and cfg.eval.after_train and result.model is not None:  # None: finished before
        preference = held_out_pairs(result)
        conversations, pairs = preference if preference is not None else (held_out_conversations(result), None)
        if conversations:
            from .evaluate import evaluate_after_training
            from .train.validation import LossSettings

            result.eval_results = evaluate_after_training(result.run_dir, result.model, result.tokenizer, conversations,
                                                          result.config.eval, result.config.model, pairs=pairs,
                                                          loss=LossSettings.of(result.config))
    return result
