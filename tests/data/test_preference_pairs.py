"""Preference pairs (objective dpo / orpo): formats, bad rows, rendering with the chat template, truncation, data check."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import build_tokenizer, write_jsonl
from typer.testing import CliRunner

from tunewright.cli import app
from tunewright.config import RunConfig
from tunewright.data import prepare_data
from tunewright.data.pairs import tokenize_pairs
from tunewright.data.preference import PreferencePair, load_pairs
from tunewright.data.templates import end_of_turn_ids, generation_prompt_ids
from tunewright.errors import UserError

SYSTEM = {"role": "system", "content": "Answer briefly."}


def openai_row(i: int, chosen: str | None = None, rejected: str | None = None, prompt: list | None = None) -> dict:
    return {"input": {"messages": prompt or [SYSTEM, {"role": "user", "content": f"What is {i} plus {i}?"}]},
            "preferred_output": [{"role": "assistant", "content": chosen if chosen is not None else f"{2 * i}."}],
            "non_preferred_output": [{"role": "assistant", "content": rejected if rejected is not None else f"{2 * i + 1}, I think."}]}


def trl_rows(i: int) -> dict[str, dict]:
    """The same pair in each of TRL's forms."""
    user = {"role": "user", "content": f"What is {i} plus {i}?"}
    good, bad = {"role": "assistant", "content": f"{2 * i}."}, {"role": "assistant", "content": f"{2 * i + 1}, I think."}
    return {
        "string": {"prompt": user["content"], "chosen": good["content"], "rejected": bad["content"]},
        "conversational": {"prompt": [user], "chosen": [good], "rejected": [bad]},
        "implicit": {"chosen": [user, good], "rejected": [user, bad]},
    }


def decoded_answer(tokenizer, example) -> str:
    return tokenizer.decode([t for t in example.labels if t != -100])


@pytest.fixture(scope="module", params=["chatml", "llama3"])
def tok(request):
    return build_tokenizer(request.param)


def test_openai_dpo_rows_render_like_sft_with_a_shared_prompt(tmp_path, tok):
    path = write_jsonl(tmp_path / "pairs.jsonl", [openai_row(i) for i in range(3)])
    loaded = load_pairs(path)
    assert loaded.formats == {str(path): "dpo"} and loaded.bad_rows == []
    tokens = tokenize_pairs(loaded.pairs, tok, 128)
    eot = tok.convert_ids_to_tokens(sorted(end_of_turn_ids(tok) & {tok.eos_token_id}))[0]
    for i, (row, pair) in enumerate(zip(loaded.pairs, tokens.pairs)):
        assert isinstance(pair, PreferencePair) and pair.source == f"{path}:{i + 1}"
        # only the answer and its end-of-turn token are labelled, exactly as SFT masks an assistant turn
        assert decoded_answer(tok, pair.chosen) == f"{2 * i}.{eot}"
        assert decoded_answer(tok, pair.rejected) == f"{2 * i + 1}, I think.{eot}"
        # both sequences start with the identical prompt: the template's own generation prompt for these turns
        prompt = generation_prompt_ids(tok, [SYSTEM, {"role": "user", "content": f"What is {i} plus {i}?"}])
        n = tokens.prompt_lengths[i]
        assert n == len(prompt) and pair.chosen.input_ids[:n] == pair.rejected.input_ids[:n] == prompt
        assert all(x == -100 for x in pair.chosen.labels[:n] + pair.rejected.labels[:n])


def test_trl_forms_detected_and_equal(tmp_path):
    parsed = {}
    for form in ("string", "conversational", "implicit"):
        path = write_jsonl(tmp_path / f"{form}.jsonl", [trl_rows(i)[form] for i in range(2)])
        loaded = load_pairs(path)
        assert loaded.formats == {str(path): "preference"} and loaded.bad_rows == [], form
        parsed[form] = [(r.prompt, r.chosen, r.rejected) for r in loaded.pairs]
    assert parsed["string"] == parsed["conversational"] == parsed["implicit"]
    assert parsed["string"][1][1:] == ("2.", "3, I think.")


def test_multi_turn_prompt_trains_only_the_last_answer(tmp_path, tok):
    prompt = [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "the quick brown fox"},
              {"role": "user", "content": "What is 2 plus 2?"}]
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": prompt, "chosen": "4.", "rejected": "5."}])
    pair = tokenize_pairs(load_pairs(path).pairs, tok, 128).pairs[0]
    assert decoded_answer(tok, pair.chosen).startswith("4.") and "fox" not in decoded_answer(tok, pair.chosen)


BAD_ROWS = [
    (openai_row(1, chosen="Same.", rejected=" Same. "), "non_preferred_output[0].content", "identical"),
    (openai_row(2, chosen="  "), "preferred_output[0].content", "empty answer"),
    (openai_row(3, prompt=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]), "input.messages[1].role", "last turn is assistant, not user"),
    (openai_row(4, prompt=[{"role": "user", "content": "Hi"}, {"role": "user", "content": "Sum?"}]), "input.messages[1].role", "two user turns in a row"),
    ({"input": {"messages": [{"role": "user", "content": "fox " * 80}]}, **{k: v for k, v in openai_row(5).items() if k != "input"}},
     "input.messages", "the prompt alone is"),
    (openai_row(6, rejected=None) | {"non_preferred_output": [{"role": "user", "content": "x"}]}, "non_preferred_output[0].role", "not assistant"),
]


def test_each_bad_row_reported_with_file_line_in_order(tmp_path, tok):
    rows = [openai_row(0)] + [r for r, _, _ in BAD_ROWS]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    cfg = RunConfig(objective="dpo", data={"train": str(path), "max_seq_len": 64})
    with pytest.raises(UserError) as e:
        prepare_data(cfg, tok)
    lines = [ln.strip() for ln in e.value.message.splitlines()[1:]]
    assert e.value.message.startswith(f"{len(BAD_ROWS)} bad rows")
    for line, (n, (_, field, reason)) in zip(lines, enumerate(BAD_ROWS, start=2)):
        assert line.startswith(f"{path}:{n}: {field}: ") and reason in line, line
    skipped = prepare_data(cfg.model_copy(update={"data": cfg.data.model_copy(update={"on_bad_rows": "skip"})}), tok)
    assert len(skipped.train) == 1 and skipped.report["skipped_rows"] == len(BAD_ROWS)


def test_objective_and_data_kind_must_match(tmp_path, tok):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [openai_row(i) for i in range(3)])
    chats = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}])
    with pytest.raises(UserError) as e:
        prepare_data(RunConfig(data={"train": str(pairs)}), tok)
    assert str(pairs) in e.value.message and "objective sft" in e.value.message and "--set objective=dpo" in e.value.fix
    with pytest.raises(UserError) as e:
        prepare_data(RunConfig(objective="orpo", data={"train": str(chats)}), tok)
    assert str(chats) in e.value.message and "objective orpo" in e.value.message and "preferred_output" in e.value.fix
    with pytest.raises(UserError, match="mixes preference pairs"):
        prepare_data(RunConfig(objective="dpo", data={"train": [str(pairs), str(chats)]}), tok)


def test_prepare_data_splits_pairs_and_counts_truncation(tmp_path, tok):
    long_answers = openai_row(7, chosen="the quick brown fox " * 20, rejected="the lazy dog " * 20)
    cut_alike = openai_row(8, chosen="the quick brown fox " * 20 + "yes", rejected="the quick brown fox " * 20 + "no")
    path = write_jsonl(tmp_path / "pairs.jsonl", [openai_row(i) for i in range(10)] + [long_answers, cut_alike])
    cfg = RunConfig(objective="dpo", data={"train": str(path), "max_seq_len": 64, "validation_split": 0.25})
    data = prepare_data(cfg, tok)
    assert len(data.train) + len(data.validation) == 11 and len(data.validation) == 3
    assert all(isinstance(p, PreferencePair) for p in data.train + data.validation)
    report = data.report
    assert report["kind"] == "preference" and report["objective"] == "dpo" and report["files"][0]["format"] == "dpo"
    assert report["truncated"] == 1 and report["dropped"] == 1 and report["dropped_examples"] == [f"{path}:12"]
    long_pair = next(p for p in data.train + data.validation if p.source == f"{path}:11")
    assert len(long_pair.chosen.input_ids) == len(long_pair.rejected.input_ids) == 64 and long_pair.chosen.truncated
    assert decoded_answer(tok, long_pair.chosen).startswith("the quick brown fox the quick")
    assert report["prompt_lengths"]["max"] < 64 < report["chosen_lengths"]["max"] + report["prompt_lengths"]["max"]
    # generation metrics score the chosen answer of each held-out pair
    rows = [openai_row(i) for i in range(10)] + [long_answers]
    for pair, conv in zip(data.validation, data.validation_conversations):
        line = int(pair.source.rsplit(":", 1)[1])
        assert conv.source == pair.source and conv.reference() == rows[line - 1]["preferred_output"][0]["content"]
    json.dumps(report)


def test_validation_conversations_are_prompt_plus_chosen(tmp_path, tok):
    train = write_jsonl(tmp_path / "t.jsonl", [openai_row(i) for i in range(4)])
    val = write_jsonl(tmp_path / "v.jsonl", [trl_rows(9)["conversational"]])
    data = prepare_data(RunConfig(objective="dpo", data={"train": str(train), "validation": str(val)}), tok)
    assert len(data.validation) == 1 and data.report["validation_source"] == "file"
    conv = data.validation_conversations[0]
    assert [m.role for m in conv.messages] == ["user", "assistant"] and conv.reference() == "18."


def test_forced_format(tmp_path, tok):
    path = write_jsonl(tmp_path / "pairs.jsonl", [openai_row(1)])
    assert load_pairs(path, "dpo").pairs
    wrong = load_pairs(path, "preference")
    assert not wrong.pairs and wrong.bad_rows[0].field == "prompt"
    with pytest.raises(UserError, match="format 'dpoo' is not known"):
        load_pairs(path, "dpoo")


def test_data_check_cli_on_pairs(tmp_path, tiny_model_dir):
    rows = [openai_row(i) for i in range(5)] + [openai_row(0), openai_row(6, chosen="the quick brown fox " * 20)]
    good = write_jsonl(tmp_path / "pairs.jsonl", rows)
    result = CliRunner().invoke(app, ["data", "check", str(good), "--model", str(tiny_model_dir), "--max-seq-len", "64", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["kind"] == "preference" and report["pairs"] == 7 and report["bad_rows"] == []
    assert report["duplicates"]["exact"] == 1 and report["truncated"] == 1
    assert {"prompt_lengths", "chosen_lengths", "rejected_lengths", "token_lengths"} <= set(report)
    assert report["rejected_lengths"]["p50"] > report["chosen_lengths"]["p50"] > 0
    text = CliRunner().invoke(app, ["data", "check", str(good), "--model", str(tiny_model_dir), "--max-seq-len", "64"]).output
    assert "chosen" in text and "rejected" in text and "7 usable preference pairs" in text

    bad = write_jsonl(tmp_path / "bad.jsonl", [openai_row(1), openai_row(2, chosen="Same.", rejected="Same.")])
    result = CliRunner().invoke(app, ["data", "check", str(bad), "--model", str(tiny_model_dir), "--json"])
    assert result.exit_code == 2
    assert json.loads(result.output)["bad_rows"][0]["source"] == f"{bad}:2"


def test_train_cli_on_pairs_with_objective_sft_exits_2(tmp_path, tiny_model_dir):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [openai_row(i) for i in range(3)])
    proc = subprocess.run([sys.executable, "-m", "tunewright.cli", "train", "--model", str(tiny_model_dir), "--data", str(pairs),
                           "--output", str(tmp_path / "run")], check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "preference pairs" in proc.stderr and "objective=dpo" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_example_pairs_are_valid_and_rebuild_identically(tmp_path):
    # beside stdlib-qa/, not in it: a folder given as data holds one kind of data
    examples = __import__("helpers").EXAMPLES.parent / "stdlib-qa-pairs"
    builder = examples.parent / "build_preference_pairs.py"
    subprocess.run([sys.executable, str(builder), "--out", str(tmp_path)], check=True, capture_output=True, timeout=60)
    for split, n in (("train", 200), ("test", 50)):
        committed = examples / f"{split}.jsonl"
        assert (tmp_path / committed.name).read_bytes() == committed.read_bytes()
        loaded = load_pairs(committed)
        assert len(loaded.pairs) == n and loaded.bad_rows == [] and loaded.formats == {str(committed): "dpo"}
    train_prompts = {r.prompt for r in load_pairs(examples / "train.jsonl").pairs}
    assert not train_prompts & {r.prompt for r in load_pairs(examples / "test.jsonl").pairs}
