"""One validation loss: the loop's eval_loss and the evaluation's loss are the same function on the same tokens."""
from __future__ import annotations

import json

import pytest
from helpers import write_jsonl

from tunewright.config import load_config
from tunewright.evaluate import evaluate
from tunewright.workflow import train_and_evaluate

# settings where the old evaluation differed: every example cut to 16 tokens, and all tokens scored
SETS = ["train.precision=fp32", "train.threads=1", "train.max_steps=2", "train.eval_every=2", "train.batch_size=4",
        "train.learning_rate=5e-2", "data.max_seq_len=16", "data.train_on=all", "eval.compare_base=false",
        "eval.max_new_tokens=2"]


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("validation-loss")
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}, as anyone can count."}]} for i in range(16)]
    train = write_jsonl(root / "train.jsonl", rows[:12])
    validation = write_jsonl(root / "validation.jsonl", rows[12:])
    cfg = load_config(model=str(tiny_model_dir), data__train=str(train), output_dir=str(root / "run"),
                      overrides=[*SETS, f"data.validation={validation}"])
    result = train_and_evaluate(cfg)
    last = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    return result, last["eval_loss"], validation


def test_the_evaluation_after_training_repeats_the_last_eval_loss(run):
    result, eval_loss, _ = run
    assert result.eval_results["n_examples"] == 4
    assert result.eval_results["metrics"]["tuned"]["loss"] == pytest.approx(eval_loss, rel=1e-6)


def test_tunewright_eval_of_the_run_repeats_the_last_eval_loss(run, tmp_path):
    result, eval_loss, validation = run
    results = evaluate(str(result.run_dir), data=[str(validation)], compare_base=False, max_new_tokens=2, output_dir=tmp_path)
    assert results["settings"]["loss"] == {"max_seq_len": 16, "train_on": "all", "token_budget": 512, "packing": True}
    assert results["metrics"]["tuned"]["loss"] == pytest.approx(eval_loss, rel=1e-6)


@pytest.mark.parametrize("chunked", [True, False])
def test_validation_counts_the_answer_tokens_the_model_would_write_itself(chunked):
    """Greedy hits per example equal argmax checks on each example's own full logits, on both head paths."""
    import numpy as np
    import torch
    from helpers import build_tiny_model, build_tokenizer

    from tunewright.data.conversation import Conversation, Message
    from tunewright.data.templates import tokenize_conversation
    from tunewright.models import ensure_pad_token
    from tunewright.train.loop import TokenLoss
    from tunewright.train.validation import (
        LossSettings,
        exact_match,
        example_loss_sums,
        scored_batches,
        token_accuracy,
    )

    tok = build_tokenizer("chatml")
    ensure_pad_token(tok)
    model = build_tiny_model(tok, seed=2).eval()
    examples = [tokenize_conversation(tok, Conversation((Message("user", f"Say {i}"), Message("assistant", f"{i}"))))
                for i in range(10)]
    batches = scored_batches(examples, tok.pad_token_id, LossSettings(token_budget=128))
    sums = example_loss_sums(TokenLoss(model, chunked=chunked), batches, len(examples), "cpu")
    want = []
    with torch.no_grad():
        for ex in examples:
            logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
            trained = [j for j in range(1, len(ex.labels)) if ex.labels[j] != -100]
            want.append(sum(int(logits[j - 1].argmax()) == ex.input_ids[j] for j in trained))
    assert sums[:, 2].tolist() == want
    assert token_accuracy(sums) == pytest.approx(sum(want) / sums[:, 1].sum())
    planted = np.array([[1.0, 3, 3], [2.0, 3, 2], [0.5, 2, 2], [0.0, 0, 0]])  # the last scores nothing
    assert exact_match(planted) == pytest.approx(2 / 3) and token_accuracy(planted) == pytest.approx(7 / 8)


def test_the_loop_logs_validation_token_accuracy_and_exact_match(run):
    result, _, _ = run
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    assert evals and all(0.0 <= r["eval_token_accuracy"] <= 1.0 and 0.0 <= r["eval_exact_match"] <= 1.0 for r in evals)
