"""Preference accuracy of models on held-out pairs: the share of pairs whose chosen answer the model
gives a higher log-probability than the rejected one, and the mean margin (chosen - rejected, summed
log-probs of the answer tokens, as DPO scores them).

A stand-in for `tunewright eval RUN --data pairs.jsonl --compare-base` until that reports preference
metrics itself; it scores exactly the tokens training scores (the data layer's masks, one packed
forward pass per micro-batch of pairs).

    python examples/preference_accuracy.py smollm2-135m-instruct runs/pref-sft runs/pref-dpo \
        --data examples/stdlib-qa/pairs-test.jsonl
"""
from __future__ import annotations

import argparse
import json

import torch


def pair_logps(model, tokenizer, data: str, max_seq_len: int) -> torch.Tensor:
    """(n, 2) summed log-probs of (chosen, rejected) of every pair in `data` under `model`."""
    from tunewright.data.pairs import tokenize_pairs
    from tunewright.data.preference import load_pairs
    from tunewright.models import ensure_pad_token
    from tunewright.train.batching import pair_micro_batches
    from tunewright.train.preference_loss import SequenceLogps

    ensure_pad_token(tokenizer)
    pairs = tokenize_pairs(load_pairs(data).pairs, tokenizer, max_seq_len).pairs
    module = SequenceLogps(model).eval()
    out = torch.zeros(len(pairs), 2)
    with torch.no_grad():
        for mb in pair_micro_batches(pairs, list(range(len(pairs))), tokenizer.pad_token_id, 4096, True, max_seq_len):
            logps = module(mb.input_ids, mb.position_ids, mb.labels, mb.seq_ids, 2 * len(mb.pair_ids))
            out[mb.pair_ids] = logps.view(-1, 2)
    return out


def score(spec: str, data: str, max_seq_len: int) -> dict:
    from tunewright.models import load_for_inference

    loaded = load_for_inference(spec)
    logps = pair_logps(loaded.model, loaded.tokenizer, data, max_seq_len)
    margin = logps[:, 0] - logps[:, 1]
    return {"model": spec, "pairs": len(margin), "preference_accuracy": round(float((margin > 0).float().mean()), 4),
            "mean_margin": round(float(margin.mean()), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="model specs or run folders")
    p.add_argument("--data", default="examples/stdlib-qa/pairs-test.jsonl")
    p.add_argument("--max-seq-len", type=int, default=1024)
    args = p.parse_args()
    torch.manual_seed(0)
    for spec in args.models:
        print(json.dumps(score(spec, args.data, args.max_seq_len)), flush=True)


if __name__ == "__main__":
    main()
