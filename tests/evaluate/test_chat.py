"""`tunewright chat`: streamed answers, --prompt as a subprocess, --base beside the tuned answer, multi-turn."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from run_folders import subprocess_env

from tunewright.errors import UserError
from tunewright.evaluate import chat as chat_module
from tunewright.evaluate.chat import ChatSession, chat, stream_answer
from tunewright.evaluate.generate import SamplingSettings, generate_answers
from tunewright.evaluate.sides import load_sides

TUNEWRIGHT = str(Path(sys.executable).with_name("tunewright"))
QUESTION = "What is 2 plus 2?"
MAX_NEW = 12


def greedy_answer(spec: str, messages: list[dict]) -> str:
    """The batch-generation answer, the reference the streamed one must match."""
    side = load_sides(spec, compare_base=False)[0]
    with side.active() as model:
        return generate_answers(model, side.tokenizer, [messages], SamplingSettings(max_new_tokens=MAX_NEW))[0].text


def test_chat_prompt_subprocess_prints_the_answer(adapter_run, tmp_path):
    proc = subprocess.run([TUNEWRIGHT, "chat", str(adapter_run), "--prompt", QUESTION, "--max-new-tokens", str(MAX_NEW)],
                          capture_output=True, text=True, env=subprocess_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    expected = greedy_answer(str(adapter_run), [{"role": "user", "content": QUESTION}])
    assert expected and proc.stdout.strip() == expected


def test_stream_yields_pieces_that_join_to_the_answer(adapter_run):
    side = load_sides(str(adapter_run), compare_base=False)[0]
    messages = [{"role": "user", "content": QUESTION}]
    pieces = list(stream_answer(side, messages, SamplingSettings(max_new_tokens=MAX_NEW)))
    assert len([p for p in pieces if p]) > 1  # streamed, not one block at the end
    assert "".join(pieces).strip() == greedy_answer(str(adapter_run), messages)


def test_base_answer_shown_beside_the_tuned_one(adapter_run, eval_base_dir, capsys):
    answers = chat(str(adapter_run), prompt=QUESTION, show_base=True, max_new_tokens=MAX_NEW)
    assert set(answers) == {"tuned", "base"} and answers["tuned"] != answers["base"]
    assert answers["base"] == greedy_answer(str(eval_base_dir), [{"role": "user", "content": QUESTION}])
    out = capsys.readouterr().out
    assert out.index("tuned (run-adapter)") < out.index(f"base ({eval_base_dir})")


def test_multi_turn_keeps_a_history_per_side(adapter_run):
    sides = load_sides(str(adapter_run), compare_base=True)
    session = ChatSession(sides, SamplingSettings(max_new_tokens=4), system="Be brief.")
    first = session.send("hello")
    second = session.send("and then?")
    for key in ("tuned", "base"):
        assert session.histories[key] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"}, {"role": "assistant", "content": first[key]},
            {"role": "user", "content": "and then?"}, {"role": "assistant", "content": second[key]},
        ]
    session.reset()
    assert session.histories == {"base": [{"role": "system", "content": "Be brief."}], "tuned": [{"role": "system", "content": "Be brief."}]}


def test_interactive_loop_commands(adapter_run, monkeypatch, capsys):
    typed = iter(["hello", "", "/reset", "/nope", "again", "/exit", "never read"])
    monkeypatch.setattr(chat_module.console, "input", lambda prompt="": next(typed))
    assert chat(str(adapter_run), max_new_tokens=3) is None
    out = capsys.readouterr().out
    assert out.count("model>") == 2 and "conversation cleared" in out and "unknown command /nope" in out
    assert next(typed) == "never read"


def test_interactive_loop_ends_on_ctrl_d(adapter_run, monkeypatch):
    def eof(prompt=""):
        raise EOFError

    monkeypatch.setattr(chat_module.console, "input", eof)
    assert chat(str(adapter_run), max_new_tokens=3) is None


def test_base_needs_a_run(eval_base_dir):
    with pytest.raises(UserError, match="--base"):
        chat(str(eval_base_dir), prompt="hi", show_base=True)
