"""Qwen3's `<think>` handling is the same at training and at inference.

Qwen3's chat template prompts with thinking on (`<|im_start|>assistant\\n`) unless `enable_thinking=False`, which adds
an empty `<think>\\n\\n</think>\\n\\n` block; training renders whole conversations, and a plain answer sits after
that empty block. A run therefore fixes the variable once (`data.chat_template_kwargs`; auto: thinking off unless
some answer has reasoning), records it in config.yaml, and writes it into the run's template as a default. These
tests train a real 2-step LoRA run on the tiny Qwen3 (tests/families.py) with plain answers and check that the
prompt ids `tunewright chat` (tuned and base sides), `tunewright eval` and the server generate from are exactly
the training tokens before the first trained position, and that the exported GGUF renders the same prompt in
llama.cpp and in the Ollama Modelfile; data with reasoning keeps thinking on and trains the think block.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from families import build_family_tokenizer, save_family
from go_template import render as render_go
from helpers import write_jsonl
from llamacpp import run_llama
from typer.testing import CliRunner

from tunewright.cli import app
from tunewright.config import load_config
from tunewright.data import prepare_data
from tunewright.data.templates import generation_prompt_ids
from tunewright.models import load_tokenizer

EMPTY_THINK = "<think>\n\n</think>\n\n"
QUESTIONS = ["Repeat the word apple.", "Repeat the word river.", "Repeat the word stone.", "Repeat the word cloud."]


def plain_rows() -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": q.split()[-1] * 2}]}
            for q in QUESTIONS]


def reasoning_rows() -> list[dict]:
    """The first answer reasons in a think block (what Qwen3's template splits off), the others do not."""
    rows = plain_rows()
    rows[0]["messages"][1]["content"] = "<think>\nThe word is apple.\n</think>\n\napple apple"
    return rows


def _cli(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"tunewright {' '.join(args)} exited {result.exit_code}:\n{result.output}"


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory) -> Path:
    return save_family(tmp_path_factory.mktemp("qwen3"), "qwen3")


@pytest.fixture(scope="module")
def plain_data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "plain.jsonl", plain_rows())


@pytest.fixture(scope="module")
def plain_run(qwen3_dir, plain_data, tmp_path_factory) -> Path:
    """`tunewright train`: 2 fp32 LoRA steps on plain answers (no reasoning), chat_template_kwargs left on auto."""
    run = tmp_path_factory.mktemp("runs") / "qwen3-plain"
    _cli("train", "--model", str(qwen3_dir), "--data", str(plain_data), "--method", "lora", "--output", str(run),
         "--set", "train.max_steps=2", "--set", "train.batch_size=4", "--set", "train.precision=fp32",
         "--set", "train.threads=1", "--set", "data.max_seq_len=128", "--set", "eval.after_train=false")
    return run


def training_example(cfg, base_dir: Path, index: int = 0):
    """Training's own tokens for one row: prepare_data on the base tokenizer, as `tunewright train` runs it."""
    tokenizer = load_tokenizer(str(base_dir))
    data = prepare_data(cfg, tokenizer)
    return data, tokenizer, data.train[index]


def first_trained(example) -> int:
    return next(i for i, label in enumerate(example.labels) if label != -100)


@pytest.fixture(scope="module")
def trained_prompt(plain_run, qwen3_dir) -> list[int]:
    """The training tokens of the first row up to its answer (the mask's first trained position)."""
    _, _, example = training_example(load_config(plain_run / "config.yaml"), qwen3_dir)
    return example.input_ids[:first_trained(example)]


def test_plain_answers_record_thinking_off_in_the_run(plain_run, trained_prompt):
    """config.yaml and data_report.json say enable_thinking: false; the adapter's tokenizer, loaded by stock
    transformers, prompts with the empty think block: the same ids training put before the answer."""
    from transformers import AutoTokenizer

    config = yaml.safe_load((plain_run / "config.yaml").read_text())
    assert config["data"]["chat_template_kwargs"] == {"enable_thinking": False}
    report = json.loads((plain_run / "data_report.json").read_text())
    assert report["chat_template_kwargs"] == {"enable_thinking": False}
    stock = AutoTokenizer.from_pretrained(plain_run / "adapter")
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    text = stock.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n" + EMPTY_THINK)
    assert stock(text, add_special_tokens=False)["input_ids"] == trained_prompt
    # a caller may still ask for thinking explicitly
    assert stock.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                     enable_thinking=True).endswith("<|im_start|>assistant\n")


def test_chat_eval_and_server_prompt_with_the_training_tokens(plain_run, trained_prompt, tmp_path, monkeypatch):
    """The ids handed to generation by `tunewright chat` (tuned and base), `tunewright eval` (tuned and base) and
    the server's chat endpoint equal the training tokens before the answer, empty think block included."""
    import tunewright.evaluate.chat as chat_module
    import tunewright.evaluate.generate as generate_module
    from tunewright.evaluate import evaluate
    from tunewright.evaluate.chat import chat
    from tunewright.serve.app import _chat_prompt_ids
    from tunewright.serve.registry import Registry
    from tunewright.serve.schemas import ChatCompletionRequest

    seen: list[list[int]] = []

    def spy(tokenizer, messages):
        ids = generation_prompt_ids(tokenizer, messages)
        seen.append(ids)
        return ids

    monkeypatch.setattr(chat_module, "generation_prompt_ids", spy)
    monkeypatch.setattr(generate_module, "generation_prompt_ids", spy)
    chat(str(plain_run), prompt=QUESTIONS[0], show_base=True, max_new_tokens=2)
    test_file = write_jsonl(tmp_path / "test.jsonl", plain_rows()[:1])
    evaluate(str(plain_run), test_file, compare_base=True, max_new_tokens=2, output_dir=tmp_path / "eval", resamples=10)
    assert len(seen) == 4, "chat and eval each prompt the tuned and the base side"
    assert all(ids == trained_prompt for ids in seen)

    served = Registry().add(str(plain_run))
    body = ChatCompletionRequest(model=served.id, messages=[{"role": "user", "content": QUESTIONS[0]}])
    assert _chat_prompt_ids(served, body) == trained_prompt


def test_gguf_export_prompts_as_training_in_llama_cpp_and_ollama(plain_run, trained_prompt, tmp_path):
    """The GGUF carries the run's template with thinking off: Ollama's Modelfile TEMPLATE renders the trained
    text, and llama.cpp (which renders the GGUF's template with no enable_thinking) tokenizes the trained ids."""
    from gguf import GGUFReader

    path = tmp_path / "gguf" / "qwen3.gguf"
    _cli("export", str(plain_run), "--format", "gguf", "--quant", "f16", "--output", str(path))
    field = GGUFReader(path).fields["tokenizer.chat_template"]
    gguf_template = bytes(field.parts[field.data[0]]).decode()
    tokenizer = load_tokenizer(str(plain_run / "adapter"))
    assert gguf_template == tokenizer.chat_template
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    expected_text = tokenizer.decode(trained_prompt)
    modelfile = (path.parent / "Modelfile").read_text()
    go_template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert render_go(go_template, messages) == expected_text
    answer = run_llama({"gguf": str(path), "n_ctx": 256, "chat": {"messages": messages, "max_tokens": 1}})
    assert answer["chat"]["prompt_ids"] == trained_prompt


def test_reasoning_in_the_data_keeps_thinking_on(qwen3_dir, tmp_path):
    """Data where an answer reasons: thinking stays on, the prompt ends at `<|im_start|>assistant\\n`, and the
    think block is trained (for the plain answers too: an empty one, which the model must write when thinking)."""
    data_file = write_jsonl(tmp_path / "reasoning.jsonl", reasoning_rows())
    cfg = load_config(model=str(qwen3_dir), data__train=str(data_file))
    data, tokenizer, _ = training_example(cfg, qwen3_dir)
    assert data.report["chat_template_kwargs"] == {"enable_thinking": True}
    for row, example in zip(reasoning_rows(), data.train):
        prompt = generation_prompt_ids(tokenizer, row["messages"][:1])
        assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
        start = first_trained(example)
        assert example.input_ids[:start] == prompt
        assert tokenizer.decode(example.input_ids[start:]).startswith("<think>\n")


def test_an_explicit_setting_wins_over_the_data(qwen3_dir, plain_data):
    """data.chat_template_kwargs={enable_thinking: true} on plain answers: thinking-on prompt, empty block trained."""
    cfg = load_config(model=str(qwen3_dir), data__train=str(plain_data),
                      overrides=["data.chat_template_kwargs={enable_thinking: true}"])
    data, tokenizer, example = training_example(cfg, qwen3_dir)
    assert data.report["chat_template_kwargs"] == {"enable_thinking": True}
    start = first_trained(example)
    assert example.input_ids[:start] == generation_prompt_ids(tokenizer, plain_rows()[0]["messages"][:1])
    assert tokenizer.decode(example.input_ids[start:]).startswith(EMPTY_THINK + "apple")


@pytest.mark.parametrize("kwargs", ["auto", "{enable_thinking: false}"])
def test_templates_without_the_variable_are_unchanged(tmp_path, plain_data, kwargs):
    """SmolLM2's ChatML template reads no enable_thinking: its template and prompts stay exactly as they were."""
    tokenizer = build_family_tokenizer("smollm2")
    original = tokenizer.chat_template
    cfg = load_config(data__train=str(plain_data), overrides=[f"data.chat_template_kwargs={kwargs}"])
    data = prepare_data(cfg, tokenizer)
    assert tokenizer.chat_template == original
    assert data.report["chat_template_kwargs"] == ({} if kwargs == "auto" else {"enable_thinking": False})


def test_a_value_jinja_cannot_hold_is_one_user_error(qwen3_dir, plain_data):
    """A nested value for a variable the template reads: one UserError naming the key and the fix."""
    from tunewright.errors import UserError

    cfg = load_config(model=str(qwen3_dir), data__train=str(plain_data),
                      overrides=["data.chat_template_kwargs={enable_thinking: [1]}"])
    with pytest.raises(UserError) as raised:
        prepare_data(cfg, load_tokenizer(str(qwen3_dir)))
    assert "data.chat_template_kwargs.enable_thinking" in raised.value.message
    assert "true/false" in raised.value.fix
