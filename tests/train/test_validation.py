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
