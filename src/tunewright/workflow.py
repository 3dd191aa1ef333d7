"""Train, then compare with the base on held-out examples: the path `tunewright train` and quickstart take.

It lives above both `train` and `evaluate` so neither reaches into the other.
"""
from __future__ import annotations

from .config import RunConfig
from .train import RunResult, train


def held_out_conversations(result: RunResult) -> list:
    """A held-out test set (`eval.data`) beats the validation split used for early stopping."""
    cfg = result.config
    if cfg.eval.data:
        from .data import load_conversations

        return load_conversations(cfg.eval.data, cfg.data.format).conversations
    return result.held_out


def train_and_evaluate(cfg: RunConfig, resume: bool = False) -> RunResult:
    result = train(cfg, resume=resume)
    if result.is_main_process and cfg.eval.after_train and result.model is not None:  # None: finished before
        conversations = held_out_conversations(result)
        if conversations:
            from .evaluate import evaluate_after_training

            result.eval_results = evaluate_after_training(result.run_dir, result.model, result.tokenizer, conversations,
                                                          result.config.eval, result.config.model)
    return result
