"""prepare_data: bad-row policy, splits, truncation and drop counts, duplicates, overlap, and the tokenized cache."""
from __future__ import annotations

import json

import pytest
from helpers import build_tokenizer, write_jsonl

from tunewright.config import load_config
from tunewright.data import prepare_data, templates
from tunewright.errors import UserError


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("chatml")


def cfg(train, **data):
    overrides = [f"data.{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in data.items()]
    return load_config(overrides=overrides, data__train=[str(p) for p in train] if isinstance(train, list) else str(train))


def qa(i: int, answer_words: int = 3) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                         {"role": "assistant", "content": " ".join([f"{2 * i}"] * answer_words)}]}


def test_prepare_basic(tmp_path, tok, chat_rows):
    data = prepare_data(cfg(write_jsonl(tmp_path / "t.jsonl", chat_rows)), tok)
    assert len(data.train) == 40 and data.validation == [] and data.validation_conversations == []
    r = data.report
    assert r["train_examples"] == 40 and r["validation_source"] == "none"
    assert r["files"] == [{"path": str(tmp_path / "t.jsonl"), "split": "train", "format": "messages", "rows": 40}]
    assert 0 < r["trained_token_share"] < 1 and r["token_lengths"]["max"] >= r["token_lengths"]["p50"] > 0
    json.dumps(r)  # the report is written as data_report.json


def test_bad_rows_fail_lists_them(tmp_path, tok, chat_rows):
    path = tmp_path / "t.jsonl"
    lines = [json.dumps(r) for r in chat_rows[:3]] + ["not json"] * 25
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as e:
        prepare_data(cfg(path), tok)
    msg = e.value.message
    assert f"{path}:4: json: invalid JSON" in msg and f"{path}:23: json" in msg and f"{path}:24:" not in msg
    assert "and 5 more" in msg and "25 bad rows" in msg
    assert "on_bad_rows: skip" in e.value.fix


def test_bad_rows_skip_counts(tmp_path, tok, chat_rows):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join([json.dumps(r) for r in chat_rows[:5]] + ["{oops"]) + "\n")
    data = prepare_data(cfg(path, on_bad_rows="skip"), tok)
    assert len(data.train) == 5
    assert data.report["skipped_rows"] == 1 and data.report["bad_rows"][0]["source"] == f"{path}:6"


def test_no_training_rows_is_a_user_error(tmp_path, tok):
    path = tmp_path / "t.jsonl"
    path.write_text("{oops\n")
    with pytest.raises(UserError, match="no usable training rows"):
        prepare_data(cfg(path, on_bad_rows="skip"), tok)
    with pytest.raises(UserError, match="no training data"):
        prepare_data(load_config(), tok)


def test_truncation_and_drops_are_counted(tmp_path, tok):
    rows = [qa(i) for i in range(5)]
    rows.append({"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "answer"}]})
    rows.append({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "long " * 200}]})
    data = prepare_data(cfg(write_jsonl(tmp_path / "t.jsonl", rows), max_seq_len=64), tok)
    r = data.report
    assert r["truncated"] == 2 and r["dropped"] == 1  # the long prompt leaves nothing to train
    assert r["train"]["dropped_examples"] == [f"{tmp_path / 't.jsonl'}:6"]
    assert len(data.train) == 6 and all(len(e.input_ids) <= 64 for e in data.train)
    assert r["token_lengths"]["max"] > 64  # lengths are measured before truncation


def test_all_dropped_is_a_user_error(tmp_path, tok):
    rows = [{"messages": [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "answer"}]}]
    with pytest.raises(UserError, match="no training example has any trained tokens"):
        prepare_data(cfg(write_jsonl(tmp_path / "t.jsonl", rows), max_seq_len=16), tok)


def test_validation_split_is_seeded(tmp_path, tok, chat_rows):
    path = write_jsonl(tmp_path / "t.jsonl", chat_rows)
    a = prepare_data(cfg(path, validation_split=0.25, seed=1), tok)
    b = prepare_data(cfg(path, validation_split=0.25, seed=1), tok)
    c = prepare_data(cfg(path, validation_split=0.25, seed=2), tok)
    sources = [v.source for v in a.validation_conversations]
    assert len(sources) == 10 and len(a.train) == 30 and len(a.validation) == 10
    assert sources == [v.source for v in b.validation_conversations]
    assert sources != [v.source for v in c.validation_conversations]
    assert a.report["validation_source"] == "split" and a.report["train_validation_overlap"] == 0
    # the held-out examples are the tokenized versions of the held-out conversations
    assert [e.input_ids for e in a.validation] == [templates.tokenize_conversation(tok, v).input_ids for v in a.validation_conversations]


def test_validation_file_and_overlap(tmp_path, tok, chat_rows):
    train = write_jsonl(tmp_path / "t.jsonl", chat_rows)
    val = write_jsonl(tmp_path / "v.jsonl", [qa(1, 2), qa(99)])  # 1 asks a training question again
    data = prepare_data(cfg(train, validation=str(val)), tok)
    assert len(data.validation) == 2 and data.report["validation_source"] == "file"
    assert data.report["train_validation_overlap"] == 1
    assert [f["split"] for f in data.report["files"]] == ["train", "validation"]


def test_duplicates(tmp_path, tok):
    rows = [qa(1), qa(1), qa(2), qa(3)]
    near = json.loads(json.dumps(qa(2)))
    near["messages"][0]["content"] = "what IS 2 plus 2 ?!"
    conflicting = qa(3, answer_words=1)
    data = prepare_data(cfg(write_jsonl(tmp_path / "t.jsonl", rows + [near, conflicting])), tok)
    assert data.report["duplicates"]["exact"] == 1
    assert data.report["duplicates"]["near"] == 1
    assert data.report["duplicates"]["same_prompt_other_answer"] == 1


def test_second_run_hits_the_cache(tmp_path, tok, chat_rows, monkeypatch):
    path = write_jsonl(tmp_path / "t.jsonl", chat_rows)
    calls = []
    real = templates.tokenize_conversation
    monkeypatch.setattr(templates, "tokenize_conversation", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = prepare_data(cfg(path, validation_split=0.1), tok)
    assert len(calls) == 40 and first.report["cache_hit"] is False
    second = prepare_data(cfg(path, validation_split=0.1), tok)
    assert len(calls) == 40 and second.report["cache_hit"] is True
    assert [e.input_ids for e in second.train] == [e.input_ids for e in first.train]
    assert [e.labels for e in second.validation] == [e.labels for e in first.validation]
    # a different max_seq_len, template or file content is a different cache entry
    prepare_data(cfg(path, max_seq_len=32), tok)
    assert len(calls) == 80
    write_jsonl(path, chat_rows[:-1])
    prepare_data(cfg(path), tok)
    assert len(calls) == 119


def test_cache_key_depends_on_the_tokenizer(tmp_path, tok, chat_rows):
    from tunewright.data.dataset import tokenizer_fingerprint

    other = build_tokenizer("chatml")
    assert tokenizer_fingerprint(other) == tokenizer_fingerprint(tok)
    other.chat_template = other.chat_template + " "
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tok)
    assert tokenizer_fingerprint(build_tokenizer("llama3")) != tokenizer_fingerprint(tok)


def test_text_format_trains_every_token(tmp_path, tok):
    data = prepare_data(cfg(write_jsonl(tmp_path / "t.jsonl", [{"text": "hello world"}] * 2)), tok)
    assert data.report["trained_token_share"] == 1.0


# --- role order: the opt-in keeps only what the model's chat template renders -------------------

# a Mistral/Llama-2 style template: it refuses anything but user/assistant alternating, as many real ones do
STRICT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and loop.first %}{{ '<|im_start|>system\n' + message['content'] + '<|im_end|>\n' }}"
    "{% else %}{% if (message['role'] == 'user') != ((loop.index0 - (1 if messages[0]['role'] == 'system' else 0)) % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
OUT_OF_ORDER = [
    [("assistant", "Hello, ask me."), ("user", "What is 2 plus 2?"), ("assistant", "4")],
    [("user", "What is 2 plus 2?"), ("system", "Be brief."), ("assistant", "4")],
    [("system", "Be brief."), ("assistant", "Hello."), ("user", "What is 2 plus 2?"), ("assistant", "4")],
]


@pytest.fixture(scope="module")
def strict_tok():
    tok = build_tokenizer("chatml")
    tok.chat_template = STRICT_TEMPLATE
    return tok


def order_rows(chat_rows) -> list[dict]:
    odd = [{"messages": [{"role": r, "content": c} for r, c in turns]} for turns in OUT_OF_ORDER]
    return chat_rows[:2] + odd + chat_rows[2:4]  # the out-of-order rows are lines 3, 4 and 5


def test_roles_out_of_order_fail_by_default(tmp_path, tok, chat_rows):
    path = write_jsonl(tmp_path / "t.jsonl", order_rows(chat_rows))
    with pytest.raises(UserError) as e:
        prepare_data(cfg(path), tok)  # ChatML would render them: still refused without the opt-in
    msg = e.value.message
    assert "3 bad rows" in msg
    assert msg.index(f"{path}:3: messages[0].role: conversation starts with an assistant turn") < msg.index(f"{path}:4: messages[1].role: system message") \
        < msg.index(f"{path}:5: messages[1].role: the system message is followed by an assistant turn")


def test_opt_in_keeps_rows_the_template_renders(tmp_path, tok, chat_rows):
    path = write_jsonl(tmp_path / "t.jsonl", order_rows(chat_rows))
    data = prepare_data(cfg(path, allow_any_role_order=True), tok)
    assert len(data.train) == 7 and data.report["bad_row_count"] == 0 and data.report["role_order_allowed"] == 3
    first_odd = next(e for e in data.train if templates.render(tok, [{"role": "assistant", "content": "Hello, ask me."}]).strip() in tok.decode(e.input_ids))
    assert "4" in tok.decode([t for t in first_odd.labels if t != -100])  # its answers are trained as usual


def test_opt_in_still_refuses_rows_the_template_raises_on(tmp_path, strict_tok, chat_rows):
    path = write_jsonl(tmp_path / "t.jsonl", order_rows(chat_rows))
    with pytest.raises(UserError) as e:
        prepare_data(cfg(path, allow_any_role_order=True), strict_tok)
    msg = e.value.message
    assert "3 bad rows" in msg and msg.count("Conversation roles must alternate") == 3
    assert f"{path}:3: messages[0].role: conversation starts with an assistant turn, not a user turn; the model's chat template rejects it (TemplateError" in msg
    data = prepare_data(cfg(path, allow_any_role_order=True, on_bad_rows="skip"), strict_tok)
    assert len(data.train) == 4 and data.report["skipped_rows"] == 3 and data.report["role_order_allowed"] == 0
    assert [b["source"] for b in data.report["bad_rows"]] == [f"{path}:3", f"{path}:4", f"{path}:5"]
    assert "allow_any_role_order" not in data.report["bad_rows"][0]["fix"]  # the opt-in is on already


def test_valid_multi_turn_data_passes_the_strict_template(tmp_path, strict_tok):
    rows = [{"messages": [{"role": r, "content": c} for r, c in
                          [("system", "Be brief."), ("user", f"What is {i} plus {i}?"), ("assistant", f"{2 * i}"), ("user", "And twice that?"), ("assistant", f"{4 * i}")]]}
            for i in range(5)]
    data = prepare_data(cfg(write_jsonl(tmp_path / "t.jsonl", rows)), strict_tok)
    assert len(data.train) == 5 and data.report["bad_row_count"] == 0
