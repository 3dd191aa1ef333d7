"""Evaluation on preference pairs: preference accuracy and margins, base vs tuned, after a real DPO run and from the CLI.

One tiny DPO (LoRA) run is trained per module through `train_and_evaluate` (so eval.after_train evaluates its
validation pairs); the other tests evaluate that run again and check the numbers against two plain forward passes.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from helpers import write_jsonl
from run_folders import subprocess_env

from tunewright.config import load_config
from tunewright.errors import UserError
from tunewright.evaluate import evaluate

WORDS = ["green", "tiger", "paper", "quick", "fox"]  # each 3 tokens in the tiny tokenizer: equal-length answers
BETA = 0.25  # not auto's 0.1: the evaluation must use the run's own beta
MAX_NEW = 2
PREFERENCE_KEYS = ["preference_accuracy", "logp_margin", "reward_accuracy", "reward_margin"]


def pair_rows(n: int, offset: int = 0) -> list[dict]:
    """The word asked for, repeated, is preferred to another word repeated the same number of times."""
    rows = []
    for i in range(offset, offset + n):
        w, other = WORDS[i % 5], WORDS[(i + 2) % 5]
        rows.append({"prompt": [{"role": "user", "content": f"Repeat the word {w}."}],
                     "chosen": [{"role": "assistant", "content": f"{w} {w} {w}"}],
                     "rejected": [{"role": "assistant", "content": f"{other} {other} {other}"}]})
    return rows


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("eval-pairs")
    return {"train": write_jsonl(root / "train.jsonl", pair_rows(16)), "validation": write_jsonl(root / "val.jsonl", pair_rows(16, offset=3))}


@pytest.fixture(scope="module")
def dpo_run(tiny_model_dir, pair_files, tmp_path_factory):
    """A DPO LoRA run trained and evaluated the default way (eval.after_train), as `tunewright train` does."""
    from tunewright.workflow import train_and_evaluate

    out = tmp_path_factory.mktemp("dpo-run") / "run"
    sets = {"objective": "dpo", "preference.beta": BETA, "train.precision": "fp32", "train.threads": 1, "train.max_steps": 8,
            "train.batch_size": 16, "train.learning_rate": 3e-3, "lora.dropout": 0.0, "train.warmup_ratio": 0.0,
            "train.scheduler": "constant", "train.eval_every": 100, "data.validation": str(pair_files["validation"]),
            "eval.max_new_tokens": MAX_NEW}
    cfg = load_config(model=str(tiny_model_dir), data__train=str(pair_files["train"]), output_dir=str(out),
                      overrides=[f"{k}={v}" for k, v in sets.items()])
    return train_and_evaluate(cfg)


def test_after_dpo_training_the_validation_pairs_are_evaluated_as_pairs(dpo_run):
    run = dpo_run.run_dir
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["format"] == "preference"
    results = dpo_run.eval_results
    assert results, "eval.after_train evaluated nothing"
    assert json.loads((run / "eval" / "results.json").read_text()) == json.loads(json.dumps(results))
    assert results["preference"] == {"pairs": 16, "beta": BETA, "logps": "summed over the answer's trained tokens",
                                     "reference": str(dpo_run.config.model)}
    comparison = results["comparison"]
    assert list(comparison)[:4] == PREFERENCE_KEYS
    for key in ("loss", "token_f1", "chrf"):  # generation metrics on prompt + chosen stay available
        assert key in comparison
    acc = comparison["preference_accuracy"]
    assert acc["tuned"] > acc["base"] and acc["low"] > 0 and acc["verdict"] == "better", acc
    assert comparison["reward_margin"]["low"] > 0 and comparison["reward_margin"]["base"] == 0.0
    assert comparison["logp_margin"]["delta"] * BETA == pytest.approx(comparison["reward_margin"]["tuned"], rel=1e-9)
    example = results["examples"][0]
    assert example["reference"] == "quick quick quick" and example["rejected"] == "green green green"
    assert set(example["logps"]) == {"base", "tuned"} and set(example["scores"]["tuned"]) >= set(PREFERENCE_KEYS)
    html = (run / "eval" / "report.html").read_text()
    assert 'data-metric="preference_accuracy"' in html and "DPO reward margin" in html and "green green green" in html
    assert 'id="preference-note"' in html and f"β = {BETA}" in html and "<th>rejected</th>" in html


def _answer_logp(model, example) -> float:
    """log p(answer | prompt) from a plain forward pass of one sequence: the sum over its labelled tokens."""
    ids = torch.tensor([example.input_ids])
    labels = torch.tensor(example.labels[1:])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
    keep = labels != -100
    return float(logprobs[keep].gather(1, labels[keep].unsqueeze(1)).sum())


def test_accuracy_and_margins_equal_two_separate_forward_passes(dpo_run, pair_files, tmp_path):
    from tunewright.data import load_pairs
    from tunewright.data.pairs import tokenize_pairs
    from tunewright.models import load_for_inference

    results = evaluate(str(dpo_run.run_dir), data=[str(pair_files["train"])], max_new_tokens=MAX_NEW, output_dir=tmp_path)
    loaded = load_for_inference(str(dpo_run.run_dir))
    model = loaded.model.eval()
    pairs = tokenize_pairs(load_pairs(pair_files["train"]).pairs, loaded.tokenizer, 10_000).pairs
    tuned = np.array([[_answer_logp(model, p.chosen), _answer_logp(model, p.rejected)] for p in pairs])
    with model.disable_adapter():
        base = np.array([[_answer_logp(model, p.chosen), _answer_logp(model, p.rejected)] for p in pairs])
    got = {side: np.array([[e["logps"][side]["chosen"], e["logps"][side]["rejected"]] for e in results["examples"]]) for side in ("base", "tuned")}
    assert np.abs(got["tuned"] - tuned).max() < 1e-4 and np.abs(got["base"] - base).max() < 1e-4, (got, tuned, base)
    metrics = results["metrics"]
    assert metrics["tuned"]["preference_accuracy"] == np.mean(tuned[:, 0] > tuned[:, 1])
    assert metrics["base"]["preference_accuracy"] == np.mean(base[:, 0] > base[:, 1])
    assert metrics["tuned"]["logp_margin"] == pytest.approx(np.mean(tuned[:, 0] - tuned[:, 1]), abs=1e-4)
    reward = BETA * ((tuned[:, 0] - base[:, 0]) - (tuned[:, 1] - base[:, 1]))
    assert metrics["tuned"]["reward_margin"] == pytest.approx(reward.mean(), abs=1e-4)
    assert metrics["tuned"]["reward_accuracy"] == np.mean(reward > 0)


def test_cli_eval_json_on_pairs(dpo_run, pair_files, tmp_path):
    cmd = [sys.executable, "-m", "tunewright.cli", "eval", str(dpo_run.run_dir), "--data", str(pair_files["validation"]),
           "--compare-base", "--limit", "6", "--max-new-tokens", str(MAX_NEW), "--output", str(tmp_path), "--json"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=subprocess_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    assert results["n_examples"] == 6 and results["preference"]["pairs"] == 6 and results["preference"]["beta"] == BETA
    assert set(PREFERENCE_KEYS) <= set(results["comparison"]) and (tmp_path / "eval" / "report.html").is_file()


def test_a_bad_pair_is_one_user_error_before_any_model_loads(tmp_path):
    rows = pair_rows(2)
    rows[1]["rejected"] = rows[1]["chosen"]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(UserError) as err:
        evaluate(str(tmp_path / "no-such-model"), data=[str(path)])
    assert f"{path}:2" in err.value.message and "identical" in err.value.message


def test_a_dpo_runs_eval_data_is_read_as_the_kind_it_is(dpo_run, pair_files, tmp_path):
    """config.yaml says `format: preference` (the detected pair format): eval.data must not be forced into it."""
    from dataclasses import replace

    from tunewright import workflow

    def with_eval_data(path):
        cfg = dpo_run.config
        return replace(dpo_run, config=cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"data": str(path)})}))

    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": "Repeat the word fox."},
                                                                 {"role": "assistant", "content": "fox fox fox"}]}])
    assert [c.reference() for c in workflow.held_out_conversations(with_eval_data(chats))] == ["fox fox fox"]
    assert workflow.held_out_pairs(with_eval_data(chats)) is None  # instruction data: generation metrics only
    conversations, pairs = workflow.held_out_pairs(with_eval_data(pair_files["train"]))
    assert len(conversations) == len(pairs.pairs) == 16 and pairs.beta == BETA
    assert conversations[0].reference() == "green green green" and pairs.rejected[0] == "paper paper paper"


def test_a_validation_split_is_found_again_by_its_rows_file_and_line(dpo_run, pair_files):
    """Without data.validation the held-out pairs are rows of data.train: training hands back their sources."""
    from dataclasses import replace

    from tunewright import workflow
    from tunewright.data import load_pairs

    rows = load_pairs(pair_files["train"]).pairs
    cfg = dpo_run.config.model_copy(update={"data": dpo_run.config.data.model_copy(update={"validation": None})})
    held = [rows[5].chosen_conversation(), rows[2].chosen_conversation()]
    conversations, pairs = workflow.held_out_pairs(replace(dpo_run, config=cfg, held_out=held))
    assert [c.source for c in conversations] == [rows[5].source, rows[2].source]
    assert pairs.rejected == [rows[5].rejected, rows[2].rejected] and [p.source for p in pairs.pairs] == [rows[5].source, rows[2].source]
