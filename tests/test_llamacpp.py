"""GGUF exports proven in real llama.cpp (llama-cpp-python in `.venv-llama`, made by `make llama`).

For each model family (tests/families.py): llama.cpp loads the f16 export, tokenizes test texts exactly as
the Hugging Face tokenizer does, continues prompts with the same greedy tokens as the Hugging Face model
(run in float32 with its weights rounded to f16, as the file stores them), renders the chat prompt as our
template does and stops at the family's end-of-turn token. And the real SmolLM2 check: a short LoRA run
on the embedded model, exported to GGUF f16 and q8_0, answers in llama.cpp word for word as
`tunewright chat` does. Without `.venv-llama` every test here is skipped with the reason.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import EXAMPLES
from llamacpp import require_llama, run_llama

CLI = [sys.executable, "-m", "tunewright.cli"]
TEXTS = [
    "hello world  the quick brown fox jumps over 123 dogs!",
    "x = {'a': [1, 2]}\n\tdone",
    "What does os.path.join do?  It joins 2 paths, e.g. 'a/b'.",
    " leading space, trailing newline\n",
]
GREEDY_PROMPTS = ["What does json.dumps do?", "hello world", "x = [1, 2, 3]\nprint(x)"]
GREEDY_TOKENS = 8
FORCED_ANSWER_TOKENS = 3


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """n argmax tokens after `ids` from the full forward pass each step (no cache, no sampler, no stop)."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids):]


def load_f16_rounded(folder: Path):
    """The Hugging Face model in float32 with every weight rounded to f16, as the f16 GGUF stores it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.half().float())
    return model


def llama_check(folder: Path, out_dir: Path, end_of_turn: str, quant: str = "f16") -> dict:
    """Export `folder` to GGUF and ask llama.cpp for tokens, greedy continuations and a chat answer."""
    from transformers import AutoTokenizer

    from tunewright.data.templates import render
    from tunewright.export import export

    gguf = export(str(folder), fmt="gguf", quant=quant, output=str(out_dir / f"model-{quant}.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": "What does os.path.join do?"}]
    texts = TEXTS + [render(tokenizer, messages + [{"role": "assistant", "content": "It joins paths."}])]
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    prompts = [tokenizer(p)["input_ids"] for p in GREEDY_PROMPTS]
    answer = run_llama({
        "gguf": str(gguf), "tokenize": texts, "check_eog": [end_id],
        "greedy": [{"ids": ids, "n": GREEDY_TOKENS} for ids in prompts],
        "chat": {"messages": messages, "max_tokens": 16, "force_end_after": FORCED_ANSWER_TOKENS, "end_id": end_id},
    })
    return {"answer": answer, "tokenizer": tokenizer, "texts": texts, "prompts": prompts, "messages": messages,
            "end_id": end_id}


def assert_llama_matches_hf(folder: Path, tmp_path: Path, end_of_turn: str) -> float:
    """Every llama.cpp check for one exported model folder; returns the greedy-token match rate."""
    from tunewright.data.templates import generation_prompt_ids

    require_llama()
    check = llama_check(folder, tmp_path, end_of_turn)
    answer, tokenizer = check["answer"], check["tokenizer"]
    assert answer["n_vocab"] == len(tokenizer)
    for text, got, got_plain in zip(check["texts"], answer["tokens"], answer["tokens_plain"]):
        assert got == tokenizer(text)["input_ids"], f"tokenization of {text!r}"
        assert got_plain == tokenizer(text, add_special_tokens=False)["input_ids"], f"tokenization of {text!r} (no BOS/EOS)"
    model = load_f16_rounded(folder)
    expected = [hf_greedy(model, ids, GREEDY_TOKENS) for ids in check["prompts"]]
    same = sum(a == b for got, want in zip(answer["greedy"], expected) for a, b in zip(got, want))
    rate = same / (GREEDY_TOKENS * len(expected))
    assert answer["greedy"] == expected, f"greedy tokens differ (match rate {rate:.0%}, llama.cpp top-1 margins {answer['margins']})"
    chat = answer["chat"]
    assert chat["prompt_ids"] == generation_prompt_ids(tokenizer, check["messages"]), "llama.cpp rendered the chat prompt differently"
    assert answer["eog"][str(check["end_id"])], f"llama.cpp does not end generation at {end_of_turn}"
    assert (chat["finish_reason"], chat["completion_tokens"]) == ("stop", FORCED_ANSWER_TOKENS), chat
    assert end_of_turn not in chat["text"]
    return rate


# --- the real SmolLM2: a short LoRA run, exported, answers in llama.cpp as `tunewright chat` does ---------


QUESTION = "What does `json.dumps` do?"
ANSWER_TOKENS = 48


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory) -> Path:
    """Two LoRA steps on the embedded SmolLM2 and the stdlib-qa examples (no evaluation: not needed here)."""
    require_llama()
    run = tmp_path_factory.mktemp("llama") / "run"
    cmd = CLI + ["train", "--model", "smollm2-135m-instruct", "--data", str(EXAMPLES / "train.jsonl"),
                 "--method", "lora", "--output", str(run), "--set", "train.max_steps=2", "--set", "train.batch_size=4",
                 "--set", "train.learning_rate=2e-3", "--set", "train.threads=1", "--set", "train.precision=fp32",
                 "--set", "data.max_seq_len=256", "--set", "eval.after_train=false"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def chat_answer(smollm2_run) -> str:
    out = subprocess.run(CLI + ["chat", str(smollm2_run), "--prompt", QUESTION, "--max-new-tokens", str(ANSWER_TOKENS)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_smollm2_run_answers_in_llama_cpp_as_tunewright_chat_does(quant, smollm2_run, chat_answer, tmp_path):
    out = subprocess.run(CLI + ["export", str(smollm2_run), "--format", "gguf", "--quant", quant,
                                "--output", str(tmp_path / f"run-{quant}.gguf")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    answer = run_llama({"gguf": str(tmp_path / f"run-{quant}.gguf"), "n_ctx": 512,
                        "chat": {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": ANSWER_TOKENS}})
    assert len(chat_answer.split()) >= 5, f"the tuned model should answer: {chat_answer!r}"
    assert answer["chat"]["text"].strip() == chat_answer, json.dumps(answer["chat"], indent=1)
