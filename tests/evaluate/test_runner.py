"""evaluate() and evaluate_after_training() end to end on tiny runs: schema, loading paths, loss, generation."""
from __future__ import annotations

import json
import math

import pytest

from tunewright.config import EvalConfig
from tunewright.data import load_conversations
from tunewright.errors import UserError
from tunewright.evaluate import evaluate, evaluate_after_training
from tunewright.evaluate.generate import (
    SamplingSettings,
    decode_answer,
    generate_answers,
    generation_config,
    left_pad,
)
from tunewright.evaluate.metrics import METRICS
from tunewright.evaluate.results import SideResult, changed_most, to_json_safe

MAX_NEW = 8
COMPARISON_KEYS = {"base", "tuned", "delta", "low", "high", "verdict"}
EXAMPLE_KEYS = {"index", "source", "prompt", "messages", "reference", "base_answer", "tuned_answer", "scores",
                "answer_tokens", "cut_off", "delta"}


@pytest.fixture(scope="module")
def adapter_results(adapter_run, test_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter-eval")
    return evaluate(str(adapter_run), data=[str(test_file)], max_new_tokens=MAX_NEW, output_dir=out), out


@pytest.fixture(scope="module")
def plain_base_results(eval_base_dir, test_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("base-eval")
    return evaluate(str(eval_base_dir), data=[str(test_file)], max_new_tokens=MAX_NEW, output_dir=out)


def test_results_schema(adapter_results):
    results, out = adapter_results
    builtin = [k for k in METRICS if k != "user_score"]
    assert results["schema_version"] == 1
    assert set(results["sides"]) == {"base", "tuned"}
    assert results["n_examples"] == 6
    assert list(results["metrics"]["base"]) == builtin and list(results["metrics"]["tuned"]) == builtin
    assert results["settings"]["bootstrap"] == {"resamples": 1000, "seed": 0, "confidence": 0.95}
    assert results["settings"]["decoding"] == "greedy" and results["settings"]["max_new_tokens"] == MAX_NEW
    for row in results["comparison"].values():
        assert set(row) == COMPARISON_KEYS
        assert row["delta"] == pytest.approx(row["tuned"] - row["base"])
        assert row["low"] - 1e-9 <= row["delta"] <= row["high"] + 1e-9
        assert row["verdict"] in {"better", "worse", "no clear difference", "higher", "lower"}
    assert results["comparison"]["perplexity"]["tuned"] == pytest.approx(math.exp(results["comparison"]["loss"]["tuned"]))
    for i, ex in enumerate(results["examples"]):
        assert set(ex) == EXAMPLE_KEYS and ex["index"] == i
        assert ex["source"].endswith(f"test.jsonl:{i + 1}")
        assert ex["prompt"] == f"What is {i} plus {i}?" and ex["reference"] == f"{i} plus {i} is {2 * i}."
        assert ex["messages"][0] == {"role": "system", "content": "Answer briefly."}
        assert isinstance(ex["base_answer"], str) and isinstance(ex["tuned_answer"], str)
        per_example = set(builtin) - {"perplexity"}  # a per-example perplexity is just exp(loss)
        assert set(ex["scores"]["base"]) == per_example and set(ex["scores"]["tuned"]) == per_example
        assert 0 <= ex["answer_tokens"]["tuned"] <= MAX_NEW
    assert results["model"]["base"] and results["data"]
    on_disk = json.loads((out / "eval" / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert (out / "eval" / "report.html").is_file()


def test_the_adapter_changes_the_model(adapter_results):
    results, _ = adapter_results
    assert results["comparison"]["loss"]["delta"] != 0.0
    assert [e["base_answer"] for e in results["examples"]] != [e["tuned_answer"] for e in results["examples"]]


def test_base_answers_come_from_the_adapter_switched_off(adapter_results, plain_base_results):
    results, _ = adapter_results
    assert list(plain_base_results["sides"]) == ["tuned"]  # a plain model: no comparison by default
    assert plain_base_results["comparison"] == {}
    assert [e["base_answer"] for e in results["examples"]] == [e["tuned_answer"] for e in plain_base_results["examples"]]
    assert results["metrics"]["base"]["loss"] == pytest.approx(plain_base_results["metrics"]["tuned"]["loss"], rel=1e-5)


def test_full_model_run_compares_with_a_separately_loaded_base(full_run, test_file, tmp_path, plain_base_results):
    results = evaluate(str(full_run), data=[str(test_file)], max_new_tokens=MAX_NEW, output_dir=tmp_path)
    assert set(results["sides"]) == {"base", "tuned"}
    assert [e["base_answer"] for e in results["examples"]] == [e["tuned_answer"] for e in plain_base_results["examples"]]
    assert results["comparison"]["loss"]["delta"] != 0.0


def test_default_output_is_the_run_directory(adapter_run, test_file, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(adapter_run, run)
    evaluate(str(run), data=str(test_file), max_new_tokens=2, limit=2)
    assert json.loads((run / "eval" / "results.json").read_text())["n_examples"] == 2
    assert "loss-curve" in (run / "eval" / "report.html").read_text()


def test_sampling_defaults_come_from_the_runs_eval_section(adapter_run, test_file, tmp_path):
    """A run trained with eval.max_new_tokens: 2 is scored with 2 new tokens unless the caller says otherwise."""
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(adapter_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "eval": {"max_new_tokens": 2}}))
    from_run = evaluate(str(run), data=str(test_file), limit=3, compare_base=False, output_dir=tmp_path / "a")
    assert from_run["settings"]["max_new_tokens"] == 2
    assert all(ex["answer_tokens"]["tuned"] <= 2 for ex in from_run["examples"])
    given = evaluate(str(run), data=str(test_file), limit=3, compare_base=False, max_new_tokens=5, output_dir=tmp_path / "b")
    assert given["settings"]["max_new_tokens"] == 5
    assert any(ex["answer_tokens"]["tuned"] > 2 for ex in given["examples"])


def test_reference_loss_matches_transformers_on_assistant_tokens(eval_base_dir, test_file, plain_base_results):
    import torch

    from tunewright.data.templates import tokenize_conversation
    from tunewright.models import load_for_inference

    loaded = load_for_inference(str(eval_base_dir))
    conv = load_conversations([str(test_file)]).conversations[2]
    ex = tokenize_conversation(loaded.tokenizer, conv)
    with torch.no_grad():
        hf_loss = loaded.model(input_ids=torch.tensor([ex.input_ids]), labels=torch.tensor([ex.labels])).loss.item()
    assert plain_base_results["examples"][2]["scores"]["tuned"]["loss"] == pytest.approx(hf_loss, rel=1e-5)


def test_batched_generation_matches_one_at_a_time(adapter_run):
    from tunewright.models import load_for_inference

    loaded = load_for_inference(str(adapter_run))  # the random base answers nothing; the adapter answers 10 tokens each
    prompts = [[{"role": "user", "content": "hello"}],
               [{"role": "system", "content": "Answer in one long careful sentence about the weather."}, {"role": "user", "content": "What is 7 plus 7?"}],
               [{"role": "user", "content": "the quick brown fox jumps over the lazy dog"}],
               [{"role": "user", "content": "What is 12 plus 12?"}]]
    loaded.tokenizer.padding_side = "right"  # left padding is ours, whatever the tokenizer says
    one = generate_answers(loaded.model, loaded.tokenizer, prompts, SamplingSettings(max_new_tokens=10, batch_size=1))
    batched = generate_answers(loaded.model, loaded.tokenizer, prompts, SamplingSettings(max_new_tokens=10, batch_size=4))
    assert [a.text for a in batched] == [a.text for a in one]
    assert all(a.text for a in one)  # real answers: right padding would change them
    assert loaded.tokenizer.padding_side == "right"  # the caller's tokenizer is left as it was


def test_left_pad_pads_on_the_left_and_masks_the_padding():
    input_ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_sampling_is_seeded(eval_base_dir):
    from tunewright.models import load_for_inference

    loaded = load_for_inference(str(eval_base_dir))
    prompts = [[{"role": "user", "content": "hello"}]] * 3
    settings = SamplingSettings(max_new_tokens=10, temperature=1.5, top_p=0.95, batch_size=3, seed=3)
    first = generate_answers(loaded.model, loaded.tokenizer, prompts, settings)
    assert [a.text for a in first] == [a.text for a in generate_answers(loaded.model, loaded.tokenizer, prompts, settings)]
    assert len({a.text for a in first}) > 1  # sampling, not greedy


def test_answers_stop_at_end_of_turn(eval_base_dir):
    from tunewright.data.templates import end_of_turn_ids
    from tunewright.models import load_tokenizer

    tok = load_tokenizer(str(eval_base_dir))
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    words = tok("hello world", add_special_tokens=False)["input_ids"]
    answer = decode_answer(tok, words + [eot, tok.pad_token_id, tok.pad_token_id], end_of_turn_ids(tok), max_new_tokens=8)
    assert (answer.text, answer.tokens, answer.hit_limit) == ("hello world", len(words), False)
    cut = decode_answer(tok, words * 4, end_of_turn_ids(tok), max_new_tokens=len(words) * 4)
    assert cut.hit_limit and cut.tokens == len(words) * 4
    config = generation_config(tok, SamplingSettings())
    assert eot in config.eos_token_id and config.do_sample is False


def test_evaluate_after_training_reuses_the_loaded_peft_model(adapter_run, eval_base_dir, test_file, adapter_results, tmp_path, monkeypatch):
    from peft import PeftModel

    from tunewright.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(adapter_run / "adapter"))
    model = PeftModel.from_pretrained(load_model(str(eval_base_dir)), str(adapter_run / "adapter"))
    model.train()

    def no_second_copy(*args, **kwargs):
        raise AssertionError("evaluate_after_training loaded another model")

    monkeypatch.setattr("tunewright.evaluate.sides.load_for_inference", no_second_copy)
    monkeypatch.setattr("tunewright.models.load_model", no_second_copy)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text((adapter_run / "metrics.jsonl").read_text())
    conversations = load_conversations([str(test_file)]).conversations
    results = evaluate_after_training(run_dir, model, tokenizer, conversations, EvalConfig(max_new_tokens=MAX_NEW), str(eval_base_dir))

    expected, _ = adapter_results
    assert [e["base_answer"] for e in results["examples"]] == [e["base_answer"] for e in expected["examples"]]
    assert [e["tuned_answer"] for e in results["examples"]] == [e["tuned_answer"] for e in expected["examples"]]
    assert results["metrics"]["tuned"]["loss"] == pytest.approx(expected["metrics"]["tuned"]["loss"], rel=1e-5)
    assert model.training  # handed back in the mode it came in
    assert (run_dir / "eval" / "results.json").is_file()
    assert "data:image/png;base64," in (run_dir / "eval" / "report.html").read_text()


def test_evaluate_after_training_respects_compare_base_and_limit(adapter_run, test_file, tmp_path):
    from tunewright.models import load_for_inference

    loaded = load_for_inference(str(adapter_run))
    conversations = load_conversations([str(test_file)]).conversations
    cfg = {"compare_base": False, "limit": 2, "max_new_tokens": 2}
    results = evaluate_after_training(tmp_path, loaded.model, loaded.tokenizer, conversations, cfg, loaded.base_spec)
    assert list(results["sides"]) == ["tuned"] and results["n_examples"] == 2
    assert evaluate_after_training(tmp_path, loaded.model, loaded.tokenizer, [], cfg, loaded.base_spec) == {}


def test_user_scorer_and_limit(adapter_run, test_file, tmp_path):
    scorer = tmp_path / "scorers.py"
    scorer.write_text("def has_digit(prompt, reference, answer):\n    assert prompt.startswith('What is')\n"
                      "    return float(any(c.isdigit() for c in answer))\n")
    results = evaluate(str(adapter_run), data=[str(test_file)], max_new_tokens=4, limit=3, scorer=f"{scorer}:has_digit",
                       output_dir=tmp_path)
    assert results["n_examples"] == 3 and len(results["examples"]) == 3
    assert "user_score" in results["metrics"]["tuned"] and "user_score" in results["comparison"]
    assert results["primary_metric"] == "user_score"
    assert results["settings"]["scorer"] == f"{scorer}:has_digit"


def test_bad_inputs_fail_before_any_model_is_loaded(adapter_run, test_file, tmp_path, monkeypatch):
    monkeypatch.setattr("tunewright.evaluate.runner.load_sides", lambda *a, **k: pytest.fail("loaded a model"))
    run = str(adapter_run)
    with pytest.raises(UserError, match="no such file"):
        evaluate(run, data=[str(tmp_path / "missing.jsonl")])
    with pytest.raises(UserError, match="--limit"):
        evaluate(run, data=[str(test_file)], limit=0)
    with pytest.raises(UserError, match="--top-p"):
        evaluate(run, data=[str(test_file)], top_p=0.0)
    with pytest.raises(UserError, match="--temperature"):
        evaluate(run, data=[str(test_file)], temperature=-1.0)
    with pytest.raises(UserError, match="cannot import"):
        evaluate(run, data=[str(test_file)], scorer="no_such_scorer_module:f")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\nnot json\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        evaluate(run, data=[str(bad)])
    text_only = tmp_path / "text.jsonl"
    text_only.write_text('{"text": "just some raw text"}\n')
    with pytest.raises(UserError, match="assistant answer"):
        evaluate(run, data=[str(text_only)])


def test_compare_base_needs_a_run(eval_base_dir, test_file):
    with pytest.raises(UserError, match="plain model"):
        evaluate(str(eval_base_dir), data=[str(test_file)], compare_base=True)


def test_changed_most_picks_both_directions():
    def side(values):
        return SideResult([], [{"token_f1": v} for v in values], {}, 0.0)

    base, tuned = side([0.5, 0.5, 0.5, 0.5, 0.5]), side([0.9, 0.1, 0.5, 0.6, 0.0])
    assert changed_most(base, tuned, "token_f1", k=2) == {"improved": [0, 3], "regressed": [4, 1]}


def test_json_has_no_nan():
    assert to_json_safe({"a": float("nan"), "b": [float("inf"), 1.5]}) == {"a": None, "b": [None, 1.5]}
