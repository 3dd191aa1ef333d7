"""Preference objectives (DPO, IPO, ORPO) as losses on per-sequence log-probabilities.

The training loop stays the SFT loop: a micro-batch of pairs goes through the model once (chosen and
rejected answers packed into rows with restarted positions), `SequenceLogps` sums the log-probability
of each sequence's trained tokens, and `pair_losses` turns those sums into one loss per pair. The loop
sums pair losses and divides by the number of pairs in the optimizer step, as it divides token losses
by the step's trained tokens for SFT.

Choices (each as TRL does, so its DPOTrainer / ORPOTrainer can be cross-checked):
- DPO (`loss: sigmoid`) uses summed log-probs: -log sigma(beta * ((pi_c - pi_r) - (ref_c - ref_r))).
- IPO (`loss: ipo`) uses log-probs averaged per answer token: its target 1/(2 beta) is a fixed number,
  and with sums the log-ratio difference grows with answer length, so the target would mean a weaker
  preference for long answers than for short ones (TRL averages for IPO for the same reason).
- ORPO: NLL of the chosen answer per token + beta * -log sigma(log odds_c - log odds_r), with
  odds = p / (1 - p) and p the per-token mean probability exp(mean log-prob), as in the ORPO paper
  (its lambda is our beta). No reference model.
- `sft_weight` > 0 adds sft_weight * (NLL of the chosen answer per chosen token) to DPO/IPO (RPO).
  Per pair, then averaged over pairs: accumulation stays exact (TRL averages over the batch's tokens).
- Implicit rewards (logged): beta * (policy - reference) of the log-probs the loss uses; ORPO's are
  beta * the mean log-prob (no reference), as TRL logs them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .loss import head_parts, token_losses
from .packed_attention import PER_EXAMPLE

AUTO_BETA = 0.1
STAT_NAMES = ("loss", "reward_margin", "preference_accuracy", "logps_chosen", "logps_rejected")


class SequenceLogps(torch.nn.Module):
    """A causal LM whose forward returns, per sequence, the summed log-probability of its trained tokens.

    Takes `PairMicroBatch.model_args()`: the hidden state at flat position `sources[i]` scores token
    `targets[i]` of sequence `target_seqs[i]`. Only those positions go through the LM head, a chunk of
    rows at a time when the head is frozen (loss.token_losses). A 4-D `attention_mask` (True = attend;
    rows whose pairs share their prompt) is handed to the model in the form its attention takes.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self._parts = head_parts(model)  # a plain tuple: the backbone is not registered twice

    def forward(self, input_ids, position_ids, attention_mask, sources, targets, target_seqs, n_seqs: int):
        inputs = {"input_ids": input_ids, "position_ids": position_ids, "use_cache": False}
        if attention_mask is not None:
            inputs["attention_mask"] = _mask_for(self.model.config, attention_mask)
        if self._parts is not None:
            backbone, head = self._parts
            hidden = backbone(**inputs).last_hidden_state
            token_logps = -token_losses(hidden.reshape(-1, hidden.shape[-1])[sources], head.weight, targets, head.bias)
        else:
            logits = self.model(**inputs).logits
            token_logps = -F.cross_entropy(logits.reshape(-1, logits.shape[-1])[sources].float(), targets, reduction="none")
        # out of place, so an empty micro-batch still returns a tensor connected to the graph
        return torch.zeros(n_seqs, dtype=torch.float32, device=token_logps.device).index_add(0, target_seqs, token_logps)


# attention implementations that take a dense 4-D mask: SDPA as a boolean, eager as an additive float; per-example
# attention (train/packed_attention.py) hands any mask to SDPA. Flash and flex attention take none.
MASKABLE_ATTENTION = ("sdpa", "eager", PER_EXAMPLE)


def _mask_for(config, mask: torch.Tensor) -> torch.Tensor:
    """A boolean (B, 1, T, T) mask as the model's attention takes it: eager adds it to its scores."""
    if config._attn_implementation != "eager":
        return mask
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(~mask, torch.finfo(torch.float32).min)


def shared_prompt_obstacle(config, longest_row: int) -> str | None:
    """Why this model cannot take rows whose pairs share their prompt (a 4-D mask), or None when it can."""
    impl = config._attn_implementation
    if impl not in MASKABLE_ATTENTION:
        return f"its {impl} attention takes no 4-D mask"
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and window < longest_row:
        return f"its sliding window ({window} tokens) is shorter than a row ({longest_row}), and a given mask replaces it"
    return None


@dataclass
class PairLogps:
    """Summed log-probs of the chosen and rejected answers of P pairs, and their trained-token counts."""

    chosen: torch.Tensor  # (P,)
    rejected: torch.Tensor  # (P,)
    chosen_tokens: torch.Tensor  # (P,) float
    rejected_tokens: torch.Tensor  # (P,) float

    @classmethod
    def from_interleaved(cls, logps: torch.Tensor, tokens: torch.Tensor) -> PairLogps:
        """From (2P,) values ordered chosen_0, rejected_0, chosen_1, ... (the packing order)."""
        tokens = tokens.to(logps.device, torch.float32)
        return cls(logps[0::2], logps[1::2], tokens[0::2], tokens[1::2])

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs per answer token (an answer with no trained token counts as one token)."""
        return self.chosen / self.chosen_tokens.clamp(min=1), self.rejected / self.rejected_tokens.clamp(min=1)


@dataclass
class PairTerms:
    losses: torch.Tensor  # (P,) one loss per pair; the step's loss is their mean over the step's pairs
    chosen_rewards: torch.Tensor  # (P,) detached
    rejected_rewards: torch.Tensor  # (P,) detached


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 (where log1p(-exp(x)) loses every digit)."""
    return torch.log(-torch.expm1(x.clamp(max=-1e-7)))


def pair_losses(objective: str, loss: str, beta: float, sft_weight: float, policy: PairLogps,
                reference: PairLogps | None) -> PairTerms:
    """The loss of each pair for `objective` dpo (loss sigmoid or ipo) or orpo."""
    if objective == "orpo":
        return _orpo(beta, policy)
    if reference is None:
        raise ValueError("dpo needs reference log-probs")
    if loss == "ipo":
        (pc, pr), (rc, rr) = policy.means(), reference.means()
        h = (pc - pr) - (rc - rr)
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss == "sigmoid":
        pc, pr, rc, rr = policy.chosen, policy.rejected, reference.chosen, reference.rejected
        losses = -F.logsigmoid(beta * ((pc - pr) - (rc - rr)))
    else:
        raise ValueError(f"unknown preference loss {loss!r}")
    if sft_weight:
        losses = losses + sft_weight * -policy.means()[0]
    return PairTerms(losses, (beta * (pc - rc)).detach(), (beta * (pr - rr)).detach())


def _orpo(beta: float, policy: PairLogps) -> PairTerms:
    mc, mr = policy.means()
    log_odds = (mc - mr) - (log1mexp(mc) - log1mexp(mr))
    losses = -mc + beta * -F.logsigmoid(log_odds)
    return PairTerms(losses, (beta * mc).detach(), (beta * mr).detach())


def pair_stats(terms: PairTerms, policy: PairLogps) -> torch.Tensor:
    """Sums over the pairs of STAT_NAMES (divided by the step's pair count when logged)."""
    margin = terms.chosen_rewards - terms.rejected_rewards
    return torch.stack([terms.losses.detach().sum(), margin.sum(), (margin > 0).float().sum(),
                        policy.chosen.detach().sum(), policy.rejected.detach().sum()]).float()
