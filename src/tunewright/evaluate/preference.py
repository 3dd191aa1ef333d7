"""Evaluation on preference pairs: does the model prefer the chosen answer of held-out pairs?

A model's preference is read from its summed log-probability of each answer (the answer's tokens and its
end-of-turn token, exactly the tokens training scores), from one packed forward pass per micro-batch of
pairs, as preference training computes them:
- `preference_accuracy`: share of pairs where log p(chosen) > log p(rejected) (a tie counts as not preferred);
- `logp_margin`: mean of log p(chosen) - log p(rejected).
Summed, not per-token means: the sum is the log-probability of the whole answer (which answer the model
would rather generate), and it is what DPO's implicit reward is built from, so the two kinds of numbers agree.
It favours shorter answers when both are equally likely per token; the per-pair numbers are in results.json.

With a reference (tuned compared with its base), DPO's implicit reward margin is reported too:
`reward_margin` = beta * ((pi_c - ref_c) - (pi_r - ref_r)) with the run's beta, and `reward_accuracy` the
share of pairs where it is positive. The base is the reference, so its own rewards are 0 by definition.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.conversation import Conversation
from ..data.preference import PreferencePair, PreferenceRow
from ..errors import UserError
from .generate import model_device, progress_bar
from .loss import DEFAULT_TOKEN_BUDGET

PAIR_METRICS = ("preference_accuracy", "logp_margin")
REWARD_METRICS = ("reward_accuracy", "reward_margin")
AUTO_BETA = 0.1  # preference.beta: auto (train/preference_loss.AUTO_BETA)


@dataclass(frozen=True)
class HeldOutPairs:
    """Tokenized held-out pairs, their rejected answers' text, and the beta of DPO's implicit reward."""

    pairs: list[PreferencePair]
    rejected: list[str]
    beta: float = AUTO_BETA


def pair_logps(model, pairs: list[PreferencePair], pad_id: int, token_budget: int = DEFAULT_TOKEN_BUDGET,
               description: str = "pairs") -> np.ndarray:
    """`(n, 2)` summed log-probs of (chosen, rejected) per pair, both answers of a pair in one forward pass."""
    import torch

    from ..train.batching import pair_micro_batches
    from ..train.preference_loss import SequenceLogps, shared_prompt_obstacle

    out = np.zeros((len(pairs), 2), dtype=np.float64)
    if not pairs:
        return out
    longest = max(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs)
    row_len = max(token_budget, longest)
    module, device = SequenceLogps(model), model_device(model)
    share = shared_prompt_obstacle(model.config, row_len) is None  # each prompt once, where the attention allows
    batches = pair_micro_batches(pairs, list(range(len(pairs))), pad_id, token_budget, True, row_len, share)
    with progress_bar(description, len(pairs)) as advance, torch.inference_mode():
        for mb in batches:
            logps = module(*mb.model_args(device))
            out[mb.pair_ids] = logps.double().cpu().view(-1, 2).numpy()
            advance(len(mb.pair_ids))
    return out


def side_stats(logps: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pair statistics of one model alone: preferred (0/1) and the log-prob margin, each `(n, 1)`."""
    margin = logps[:, 0] - logps[:, 1]
    return {"preference_accuracy": (margin > 0).astype(np.float64).reshape(-1, 1), "logp_margin": margin.reshape(-1, 1)}


def reward_stats(base: np.ndarray, tuned: np.ndarray, beta: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """DPO implicit reward statistics of (base, tuned) with the base as reference: the base's are all 0."""
    margin = beta * ((tuned[:, 0] - base[:, 0]) - (tuned[:, 1] - base[:, 1]))
    tuned_stats = {"reward_accuracy": (margin > 0).astype(np.float64).reshape(-1, 1), "reward_margin": margin.reshape(-1, 1)}
    return {k: np.zeros_like(v) for k, v in tuned_stats.items()}, tuned_stats


# --- loading held-out pairs -----------------------------------------------------------------------


def load_test_pairs(files, where: str) -> list[PreferenceRow]:
    """Preference rows from already-read files; any bad row is one UserError naming it."""
    from ..data.preference import load_pairs

    loaded = load_pairs(None, files=files)
    if loaded.bad_rows:
        raise bad_rows_error(loaded.bad_rows, where)
    if not loaded.pairs:
        raise UserError(f"{where}: no preference pairs", "give rows with a prompt, a chosen and a rejected answer")
    return loaded.pairs


def bad_rows_error(bad: list, where: str) -> UserError:
    first = bad[0]
    return UserError(f"{len(bad)} bad row(s) in the test data, first: {first.source}: {first.field}: {first.reason}",
                     f"{first.fix} (`tunewright data check {where}` lists them all)")


def tokenize_test_pairs(rows: list[PreferenceRow], tokenizer, max_len: int, where: str) -> tuple[list[PreferenceRow], list[PreferencePair]]:
    """Rows rendered with the model's chat template; rows it cannot render are one UserError, identical ones dropped."""
    from ..data.pairs import tokenize_pairs

    tokenized = tokenize_pairs(rows, tokenizer, max_len)
    if tokenized.bad_rows:
        raise bad_rows_error(tokenized.bad_rows, where)
    if not tokenized.pairs:
        raise UserError(f"{where}: no pair has two different answers once rendered", "check the chosen and rejected answers")
    return tokenized.rows, tokenized.pairs


def held_out_from_rows(rows: list[PreferenceRow], pairs: list[PreferencePair], beta: float) -> tuple[list[Conversation], HeldOutPairs]:
    """The chosen conversations (generation metrics' references) and the pairs, in the same order."""
    return [r.chosen_conversation() for r in rows], HeldOutPairs(pairs, [r.rejected for r in rows], beta)


def run_beta(run_cfg: dict) -> float:
    """The beta a DPO run trained with (config.yaml `preference.beta`, `loss.run_config`); auto (and a plain model) is 0.1."""
    return beta_of(run_cfg.get("objective", "sft"), (run_cfg.get("preference") or {}).get("beta", "auto"))


def beta_of(objective: str, beta) -> float:
    """A DPO run's own beta; for ORPO (whose beta is its odds-ratio weight) and SFT runs, auto's 0.1."""
    return AUTO_BETA if objective != "dpo" or beta in (None, "auto") else float(beta)
