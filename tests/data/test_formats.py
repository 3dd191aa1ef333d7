"""Reading every file type and format into Conversations, and reporting every kind of bad row."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import write_jsonl

from tunewright.data import Message, load_conversations
from tunewright.errors import UserError

ALPACA = [
    {"instruction": "Add the numbers", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hi", "output": "hi", "system": "Be brief."},
]
MESSAGES = [{"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!", "weight": 0},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Goodbye!", "weight": 1},
]}]
SHAREGPT = [{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]
COMPLETION = [{"prompt": "2+2=", "completion": "4"}]
TEXT = [{"text": "Raw text to learn."}]


def test_alpaca(tmp_path):
    rows = load_conversations(write_jsonl(tmp_path / "a.jsonl", ALPACA))
    assert rows.formats == {str(tmp_path / "a.jsonl"): "alpaca"} and not rows.bad_rows
    first, second = rows.conversations
    assert first.messages == (Message("user", "Add the numbers\n\n2 and 3"), Message("assistant", "5"))
    assert second.messages[0] == Message("system", "Be brief.")
    assert first.source == f"{tmp_path / 'a.jsonl'}:1" and second.source.endswith(":2")


def test_messages_with_weights(tmp_path):
    rows = load_conversations(write_jsonl(tmp_path / "m.jsonl", MESSAGES))
    (conv,) = rows.conversations
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert conv.messages[2].train is False and conv.messages[4].train is True and conv.messages[1].train is None


def test_messages_text_parts_and_developer_role(tmp_path):
    row = {"messages": [{"role": "developer", "content": "Be brief."},
                        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                        {"role": "assistant", "content": "Hello"}]}
    (conv,) = load_conversations(write_jsonl(tmp_path / "m.jsonl", [row])).conversations
    assert conv.messages[0].role == "system" and conv.messages[1].content == "Hi there"


def test_sharegpt(tmp_path):
    (conv,) = load_conversations(write_jsonl(tmp_path / "s.jsonl", SHAREGPT)).conversations
    assert conv.messages == (Message("system", "S"), Message("user", "Q"), Message("assistant", "A"))


def test_completion_and_text(tmp_path):
    rows = load_conversations([write_jsonl(tmp_path / "c.jsonl", COMPLETION), write_jsonl(tmp_path / "t.jsonl", TEXT)])
    comp, text = rows.conversations
    assert comp.messages == (Message("user", "2+2="), Message("assistant", "4"))
    assert text.is_text and text.text == "Raw text to learn."
    assert set(rows.formats.values()) == {"completion", "text"}


def test_forced_format_reports_missing_fields(tmp_path):
    rows = load_conversations(write_jsonl(tmp_path / "c.jsonl", COMPLETION), fmt="alpaca")
    (bad,) = rows.bad_rows
    assert bad.field == "instruction" and "missing" in bad.reason and bad.source.endswith("c.jsonl:1")


def test_unknown_format_name_is_a_user_error():
    with pytest.raises(UserError, match="data format 'chatml'"):
        load_conversations("x.jsonl", fmt="chatml")


def test_json_array_sources_are_element_lines(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(ALPACA, indent=2))
    rows = load_conversations(path)
    assert len(rows.conversations) == 2 and rows.formats[str(path)] == "alpaca"
    lines = path.read_text().splitlines()
    for conv in rows.conversations:
        line = int(conv.source.rsplit(":", 1)[1])
        assert lines[line - 1].strip() == "{"


def test_json_wrapped_list_and_jsonl_named_json(tmp_path):
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"data": COMPLETION * 3}))
    assert len(load_conversations(wrapped).conversations) == 3
    lines = write_jsonl(tmp_path / "l.json", COMPLETION * 2)
    rows = load_conversations(lines)
    assert len(rows.conversations) == 2 and rows.conversations[1].source.endswith("l.json:2")


def test_csv_rows_count_the_header(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("instruction,input,output\nAdd,1 2,3\nSay hi,,hi\nCount,,42\n", encoding="utf-8")
    rows = load_conversations(path)
    assert [c.source for c in rows.conversations] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert rows.conversations[1].messages[0].content == "Say hi"
    assert rows.conversations[2].messages[1].content == "42"  # numbers stay text


def test_csv_messages_column_holds_json(tmp_path):
    path = tmp_path / "m.csv"
    cell = json.dumps(MESSAGES[0]["messages"]).replace('"', '""')
    path.write_text(f'messages\n"{cell}"\n', encoding="utf-8")
    (conv,) = load_conversations(path).conversations
    assert conv.messages[-1].content == "Goodbye!"


def test_parquet(tmp_path):
    import datasets

    path = tmp_path / "m.parquet"
    datasets.Dataset.from_list(MESSAGES * 2 + [{"messages": [{"role": "user", "content": "Q", "weight": None}]}]).to_parquet(str(path))
    rows = load_conversations(path)
    assert len(rows.conversations) == 2 and rows.formats[str(path)] == "messages"
    assert rows.conversations[0].messages[2].train is False
    (bad,) = rows.bad_rows
    assert bad.source == f"{path}:[2]" and bad.field == "messages[0].role"


def test_parquet_from_pandas_float_weights(tmp_path):
    import pandas as pd

    path = tmp_path / "w.parquet"
    msgs = [{"role": "user", "content": "Q", "weight": float("nan")}, {"role": "assistant", "content": "A", "weight": 0.0},
            {"role": "user", "content": "Q2", "weight": float("nan")}, {"role": "assistant", "content": "A2", "weight": 1.0}]
    pd.DataFrame({"messages": [msgs]}).to_parquet(path)
    (conv,) = load_conversations(path).conversations
    assert [m.train for m in conv.messages] == [None, False, None, True]


def test_folder_reads_every_data_file_sorted(tmp_path):
    write_jsonl(tmp_path / "d" / "b.jsonl", COMPLETION)
    write_jsonl(tmp_path / "d" / "sub" / "a.jsonl", TEXT)
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    rows = load_conversations(tmp_path / "d")
    assert list(rows.rows_per_file) == [str(tmp_path / "d" / "b.jsonl"), str(tmp_path / "d" / "sub" / "a.jsonl")]
    assert len(rows.conversations) == 2 and not rows.bad_rows


# --- bad rows: every kind names file:line and the field -----------------------------------------


def _bad(tmp_path: Path, lines: list[str], name: str = "bad.jsonl", fmt: str = "auto"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, load_conversations(path, fmt=fmt)


def _row(*turns) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


GOOD = _row(("user", "Q"), ("assistant", "A"))


@pytest.mark.parametrize("line, field, reason", [
    ('{"messages": [', "json", "invalid JSON"),
    ('{"messages": "hello"}', "messages", "expected a list"),
    ('{"messages": [{"role": "user"}, {"role": "assistant", "content": "A"}]}', "messages[0].content", "missing field"),
    ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "A"}]}', "messages[0].content", "expected a string"),
    (_row(("user", "Q"), ("bot", "A")), "messages[1].role", "unknown role 'bot'"),
    (_row(("user", "Q"), ("assistant", "  ")), "messages[1].content", "empty assistant reply"),
    (_row(("user", "Q"), ("assistant", "A"), ("user", "more?")), "messages[2].role", "ends with a user turn"),
    ('{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "weight": 2}]}', "messages[1].weight", "weight must be 0 or 1"),
    ('[1, 2]', "row", "expected a JSON object"),
])
def test_bad_row_kinds(tmp_path, line, field, reason):
    path, rows = _bad(tmp_path, [GOOD, line, GOOD])
    (bad,) = rows.bad_rows
    assert (bad.source, bad.field) == (f"{path}:2", field)
    assert reason in bad.reason and bad.fix
    assert len(rows.conversations) == 2 and rows.rows_per_file[str(path)] == 3


@pytest.mark.parametrize("row, field", [
    ({"instruction": "Say", "output": ""}, "output"),
    ({"instruction": "Say", "output": 5}, "output"),
    ({"prompt": "Q", "completion": ""}, "completion"),
    ({"conversations": [{"from": "human", "value": "Q"}, {"from": "robot", "value": "A"}]}, "conversations[1].from"),
    ({"conversations": [{"from": "human", "value": "Q"}]}, "conversations[0].from"),
    ({"text": ""}, "text"),
])
def test_bad_rows_in_other_formats(tmp_path, row, field):
    path = write_jsonl(tmp_path / "x.jsonl", [row])
    (bad,) = load_conversations(path).bad_rows
    assert bad.field == field and bad.source == f"{path}:1"


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + '{"text": "caf\xe9"}'.encode("latin-1") + b"\n" + GOOD.encode() + b"\n")
    rows = load_conversations(path)
    (bad,) = rows.bad_rows
    assert bad.source == f"{path}:2" and bad.field == "encoding" and "UTF-8" in bad.reason
    assert len(rows.conversations) == 2


def test_non_utf8_csv_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"prompt,completion\nQ,A\ncaf\xe9,ok\nQ2,A2\n")
    rows = load_conversations(path)
    (bad,) = rows.bad_rows
    assert bad.source == f"{path}:3" and bad.field == "encoding"
    assert [c.source for c in rows.conversations] == [f"{path}:2", f"{path}:4"]


def test_empty_file_missing_path_and_unknown_columns(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"question": "Q", "answer": "A"}])
    rows = load_conversations([empty, tmp_path / "missing.jsonl", odd])
    by_source = {b.source: b for b in rows.bad_rows}
    assert by_source[f"{empty}:0"].reason == "empty file"
    assert by_source[f"{tmp_path / 'missing.jsonl'}:0"].field == "path"
    assert by_source[f"{odd}:0"].field == "format" and "question" in by_source[f"{odd}:0"].reason
    assert not rows.conversations


def test_unreadable_file(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "locked.jsonl", COMPLETION)
    real = Path.read_bytes

    def deny(self):
        if self == path:
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", deny)  # chmod 0 does not stop root, who runs CI here
    (bad,) = load_conversations(path).bad_rows
    assert bad.source == f"{path}:0" and bad.field == "path" and "Permission denied" in bad.reason


def test_json_array_error_names_the_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n {"prompt": "Q", "completion": "A"},\n {"prompt": "Q2", "completion": }\n]\n')
    rows = load_conversations(path)
    assert len(rows.conversations) == 1
    (bad,) = rows.bad_rows
    assert bad.source == f"{path}:3" and bad.field == "json"


def test_bad_rows_are_listed_in_file_order(tmp_path):
    path, rows = _bad(tmp_path, [GOOD, _row(("user", "Q"), ("bot", "A")), "{oops", '{"instruction": "x"}'])
    assert [b.source for b in rows.bad_rows] == [f"{path}:2", f"{path}:3", f"{path}:4"]


# --- BOMs and CSV records that span lines -------------------------------------------------------


def test_jsonl_with_utf8_bom_reads_its_first_row(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (GOOD + "\n" + GOOD + "\n").encode())
    rows = load_conversations(path)
    assert not rows.bad_rows
    assert [c.source for c in rows.conversations] == [f"{path}:1", f"{path}:2"]


def test_csv_bad_row_after_multiline_quoted_field_names_its_physical_line(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text(
        "prompt,completion\n"                         # 1
        'Q1,"an answer\nthat spans\nthree lines"\n'   # 2-4
        "Q2,A2\n"                                     # 5
        '"a prompt\non two lines",A3\n'               # 6-7
        "Q4,\n"                                       # 8: empty completion
        "Q5,A5\n",                                    # 9
        encoding="utf-8",
    )
    rows = load_conversations(path)
    assert [c.source for c in rows.conversations] == [f"{path}:2", f"{path}:5", f"{path}:6", f"{path}:9"]
    assert rows.conversations[0].messages[1].content == "an answer\nthat spans\nthree lines"
    (bad,) = rows.bad_rows
    assert (bad.source, bad.field) == (f"{path}:8", "completion")


def test_csv_with_bom_and_leading_zeros(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfprompt,completion\nZip code?,007\n")
    (conv,) = load_conversations(path).conversations
    assert conv.messages[1].content == "007"  # cells are text: no number guessing


def test_csv_row_with_extra_fields_is_one_bad_row(tmp_path):
    path = tmp_path / "extra.csv"
    path.write_text("prompt,completion\nQ1,A1\nQ2,A, with an unquoted comma\nQ3,A3\n", encoding="utf-8")
    rows = load_conversations(path)
    assert [c.source for c in rows.conversations] == [f"{path}:2", f"{path}:4"]
    (bad,) = rows.bad_rows
    assert (bad.source, bad.field) == (f"{path}:3", "csv") and "3 fields" in bad.reason and "quote" in bad.fix


# --- role order: an optional system message first, then user/assistant alternating ---------------

ORDER_FIX = "allow_any_role_order"


@pytest.mark.parametrize("turns, field, reason", [
    ([("assistant", "Hi"), ("user", "Q"), ("assistant", "A")], "messages[0].role", "starts with an assistant turn"),
    ([("user", "Q"), ("system", "S"), ("assistant", "A")], "messages[1].role", "system message after the first turn"),
    ([("system", "S"), ("assistant", "Hi"), ("user", "Q"), ("assistant", "A")], "messages[1].role", "system message is followed by an assistant turn"),
    ([("user", "Q"), ("user", "Q2"), ("assistant", "A")], "messages[1].role", "two user turns in a row"),
    ([("user", "Q"), ("assistant", "A"), ("assistant", "A2")], "messages[2].role", "two assistant turns in a row"),
])
def test_roles_out_of_order_are_bad_rows(tmp_path, turns, field, reason):
    path, rows = _bad(tmp_path, [GOOD, _row(*turns), GOOD])
    (bad,) = rows.bad_rows
    assert (bad.source, bad.field) == (f"{path}:2", field)
    assert reason in bad.reason and ORDER_FIX in bad.fix
    assert len(rows.conversations) == 2 and rows.rows_per_file[str(path)] == 3


def test_role_order_in_sharegpt_names_its_own_fields(tmp_path):
    rows = [
        {"conversations": [{"from": "gpt", "value": "Hi"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
        {"system": "S", "conversations": [{"from": "system", "value": "S2"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
        SHAREGPT[0],
    ]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    loaded = load_conversations(path)
    assert [(b.source, b.field) for b in loaded.bad_rows] == [(f"{path}:1", "conversations[0].from"), (f"{path}:2", "conversations[0].from")]
    assert "starts with an assistant turn" in loaded.bad_rows[0].reason and "system message after the first turn" in loaded.bad_rows[1].reason
    assert len(loaded.conversations) == 1


def test_valid_multi_turn_orders_are_unaffected(tmp_path):
    rows = [MESSAGES[0],
            {"messages": [{"role": r, "content": c} for r, c in [("user", "Q"), ("assistant", "A"), ("user", "Q2"), ("assistant", "A2")]]},
            {"messages": [{"role": "developer", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}]
    loaded = load_conversations(write_jsonl(tmp_path / "m.jsonl", rows))
    assert not loaded.bad_rows and len(loaded.conversations) == 3


def test_role_order_bad_rows_mix_with_others_in_line_order(tmp_path):
    out_of_order = _row(("assistant", "Hi"), ("user", "Q"), ("assistant", "A"))
    path, rows = _bad(tmp_path, [out_of_order, "{oops", GOOD, out_of_order])
    assert [(b.source, b.field) for b in rows.bad_rows] == [
        (f"{path}:1", "messages[0].role"), (f"{path}:2", "json"), (f"{path}:4", "messages[0].role")]


def test_csv_broken_quote_and_bad_bytes_inside_a_multiline_record(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_bytes(
        b"prompt,completion\n"                  # 1
        b'Q1,"fine\nanswer"\n'                  # 2-3
        b'Q2,"caf\xe9\nlatte"\n'                # 4-5: latin-1 byte on line 4
        b'Q3,"quoted"then text\n'               # 6: text after a closing quote
        b"Q4,A4\n"                              # 7
    )
    rows = load_conversations(path)
    assert [c.source for c in rows.conversations] == [f"{path}:2", f"{path}:7"]
    assert [(b.source, b.field) for b in rows.bad_rows] == [(f"{path}:4", "encoding"), (f"{path}:6", "csv")]
    assert rows.rows_per_file[str(path)] == 4
