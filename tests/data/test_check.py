"""`tunewright data check` and check_data: the report, the guidance, and exit code 2 without writing anything."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import write_jsonl
from typer.testing import CliRunner

from tunewright.cli import app
from tunewright.data.check import check_data, print_check_report, size_guidance
from tunewright.models import load_tokenizer


def qa(i: int, answer: str | None = None) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                         {"role": "assistant", "content": answer or f"{i} plus {i} is {2 * i}."}]}


def snapshot(*dirs: Path) -> set:
    return {(str(p), p.stat().st_mtime_ns) for d in dirs if d.exists() for p in d.rglob("*")}


def test_check_report(tmp_path, tiny_model_dir, chat_rows):
    long_answer = qa(7, "seven " * 100)
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows + [chat_rows[0], long_answer])
    val = write_jsonl(tmp_path / "val.jsonl", [qa(3), qa(500)])
    report = check_data([str(train)], load_tokenizer(str(tiny_model_dir)), str(tiny_model_dir), max_seq_len=64, validation=str(val))
    assert report["files"][0] == {"path": str(train), "split": "train", "format": "messages", "rows": 42}
    assert report["rows"] == 42 and report["validation_rows"] == 2 and report["bad_rows"] == []
    lengths = report["token_lengths"]
    assert set(lengths) == {"p50", "p90", "p99", "max", "mean"} and lengths["p50"] <= lengths["p90"] <= lengths["max"]
    assert report["truncated"] == 1 and lengths["max"] > 64 > lengths["p90"]
    assert 0 < report["trained_token_share"] < 1
    assert report["duplicates"]["exact"] == 1 and report["train_validation_overlap"]["count"] == 1
    warnings = " ".join(report["guidance"]["warnings"])
    assert "few-shot" in warnings and "truncated" in warnings and "inflated" in warnings
    json.dumps(report)


def test_print_check_report(tmp_path, tiny_model_dir, chat_rows):
    from rich.console import Console

    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in chat_rows[:3]) + '\n{"messages": [{"role": "[bold]", "content": "Q"}]}\n')
    report = check_data(str(path), load_tokenizer(str(tiny_model_dir)), str(tiny_model_dir))
    console = Console(record=True, width=200)
    print_check_report(report, console=console)
    text = console.export_text()
    assert f"{path}:4: messages[0].role: unknown role '[bold]'" in text  # user text is not read as rich markup
    assert "prompting (few-shot) may be enough" in text and "p50" in text


@pytest.mark.parametrize("n, advice", [
    (40, "prompting (few-shot)"), (100, "style or tone"), (499, "style or tone"), (500, "task specialisation"),
    (5_000, "domain expertise"), (60_000, "domain expertise"), (100_000, "deep specialisation"),
])
def test_size_guidance(n, advice):
    assert advice in size_guidance(n)


def test_recency_warning(tmp_path, tiny_model_dir):
    rows = [qa(i, f"As of 2024 the latest value is {i}.") for i in range(30)] + [qa(i) for i in range(30, 130)]
    report = check_data(str(write_jsonl(tmp_path / "t.jsonl", rows)), load_tokenizer(str(tiny_model_dir)), str(tiny_model_dir))
    assert report["recency_rows"] == 30
    assert any("retrieval" in w for w in report["guidance"]["warnings"])
    assert "style or tone" in report["guidance"]["size"]


def test_cli_exits_2_on_bad_rows_and_writes_nothing(tmp_path, tiny_model_dir, monkeypatch):
    data = tmp_path / "data"
    path = data / "bad.jsonl"
    write_jsonl(path, [qa(1)])
    with path.open("a") as f:
        f.write('{"messages": [{"role": "bot", "content": "x"}]}\n')
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, ["data", "check", str(data), "--model", str(tiny_model_dir)])
    assert result.exit_code == 2, result.output
    assert f"{path}:2" in result.output and "messages[0].role" in result.output and "unknown role" in result.output
    assert snapshot(tmp_path) == before
    assert not Path(os.environ["TUNEWRIGHT_TOKENIZED_CACHE"]).exists()


def test_cli_json_and_clean_exit(tmp_path, tiny_model_dir, chat_rows):
    path = write_jsonl(tmp_path / "t.jsonl", chat_rows)
    result = CliRunner().invoke(app, ["data", "check", str(path), "--model", str(tiny_model_dir), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows"] == 40 and report["bad_row_count"] == 0


def test_cli_missing_path_exits_2(tmp_path, tiny_model_dir):
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "nope.jsonl"), "--model", str(tiny_model_dir)])
    assert result.exit_code == 2 and "no such file or folder" in result.output


def test_train_with_bad_rows_exits_2_before_writing(tmp_path, tiny_model_dir):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [qa(1)])
    with path.open("a") as f:  # a role that looks like rich markup must print as text, not crash the CLI
        f.write('{"messages": [{"role": "user", "content": "Q"}, {"role": "[/x]", "content": "A"}]}\n')
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(path), "--model", str(tiny_model_dir), "--output", str(run)])
    assert result.exit_code == 2, result.output
    assert f"{path}:2: messages[1].role: unknown role '[/x]'" in result.output and "on_bad_rows: skip" in result.output
    assert not run.exists()


def test_roles_out_of_order_and_the_opt_in(tmp_path, tiny_model_dir, chat_rows):
    path = write_jsonl(tmp_path / "t.jsonl", chat_rows[:2] + [
        {"messages": [{"role": "assistant", "content": "Ask me."}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}])
    args = ["data", "check", str(path), "--model", str(tiny_model_dir)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2, refused.output
    assert f"{path}:3: messages[0].role: conversation starts with an assistant turn" in refused.output
    assert "allow_any_role_order" in refused.output  # the fix names the opt-in
    allowed = CliRunner().invoke(app, args + ["--allow-any-role-order", "--json"])
    assert allowed.exit_code == 0, allowed.output  # the tiny model's ChatML template renders it
    report = json.loads(allowed.stdout)
    assert report["rows"] == 3 and report["bad_row_count"] == 0 and report["role_order_allowed"] == 1
    assert any("out of order" in w for w in report["guidance"]["warnings"])
