"""GGUF exports proven in real llama.cpp (llama-cpp-python in `.venv-llama`, made by `make llama`).

For each model family (tests/families.py): llama.cpp loads the f16 export, tokenizes test texts exactly as
the Hugging Face tokenizer does, continues prompts with the same greedy tokens as the Hugging Face model
(run in float32 with its weights rounded to f16, as the file stores them), renders the chat prompt as our
template does and stops at the family's end-of-turn token. And the real SmolLM2 check: a short LoRA run
on the embedded model, exported to GGUF f16, answers in llama.cpp word for word as `tunewright chat` does;
its q8_0 export stays within the q8_0 tolerance of it. Without `.venv-llama` every test here is skipped
with the reason (pytest -ra prints it).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import EXAMPLES
from llamacpp import require_llama, run_llama

CLI = [sys.executable, "-m", "tunewright.cli"]
TEXTS = [
    "hello world  the quick brown fox jumps over 123 dogs!",
    "x = {'a': [1, 2]}\n\tdone",
    "What does os.path.join do?  It joins 2 paths, e.g. 'a/b'.",
    "trailing newline, tab\tand  two spaces\n",
]  # leading spaces (sentencepiece's dummy prefix) are test_gguf_vocab's job, with the family's real normalizer
GREEDY_PROMPTS = ["What does json.dumps do?", "hello world", "x = [1, 2, 3]\nprint(x)"]
GREEDY_TOKENS = 8
FORCED_ANSWER_TOKENS = 3
# |llama.cpp - HF| on the logits of an f16 file; measured at most 6.3e-4 (gemma3), about 2e-4 elsewhere
LOGIT_TOLERANCE = 2e-3


def hf_greedy(model, ids: list[int], n: int) -> tuple[list[int], list[float], torch.Tensor]:
    """n argmax tokens after `ids` (full forward each step: no cache, no sampler, no stop), each step's
    top-1 minus top-2 gap, and the first step's logits."""
    seq, gaps, first = list(ids), [], None
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq])).logits[0, -1].double()
            first = logits if first is None else first
            top = torch.topk(logits, 2)
            gaps.append(float(top.values[0] - top.values[1]))
            seq.append(int(top.indices[0]))
    return seq[len(ids):], gaps, first


def load_f16_rounded(folder: Path):
    """The Hugging Face model in float32 with every weight rounded to f16, as the f16 GGUF stores it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.half().float())
    return model


def llama_cpp_tokenizer(tokenizer):
    """The tokenizer llama.cpp is documented to reproduce: HF's own, except for a Metaspace-"first" sentencepiece
    (Mistral v0.3), where llama.cpp prepends ▁ to every piece of text as sentencepiece does (test_gguf_vocab)."""
    from llamacpp import legacy_sentencepiece, prepends_first_only

    return legacy_sentencepiece(tokenizer) if prepends_first_only(tokenizer) else tokenizer


@pytest.fixture(scope="module")
def family_llama(family_dir, tmp_path_factory) -> dict:
    """One f16 export of the family's saved folder (the user's `tunewright export` path) and one llama.cpp run."""
    from families import FAMILY_SPECS
    from transformers import AutoTokenizer

    from tunewright.data.templates import render
    from tunewright.export import export

    require_llama()
    name = family_dir.name.removeprefix("tiny-")
    out = tmp_path_factory.mktemp(f"llama-{name}")
    gguf = export(str(family_dir), fmt="gguf", quant="f16", output=str(out / f"{name}-f16.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(family_dir)
    messages = [{"role": "user", "content": "What does os.path.join do?"}]
    texts = TEXTS + [render(tokenizer, messages + [{"role": "assistant", "content": "It joins paths."}])]
    end_of_turn = FAMILY_SPECS[name].end_of_turn
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    prompts = [tokenizer(p)["input_ids"] for p in GREEDY_PROMPTS]
    answer = run_llama({
        "gguf": str(gguf), "tokenize": texts, "check_eog": [end_id],
        "greedy": [{"ids": ids, "n": GREEDY_TOKENS} for ids in prompts],
        "chat": {"messages": messages, "max_tokens": 16, "force_end_after": FORCED_ANSWER_TOKENS, "end_id": end_id},
    })
    return {"name": name, "folder": family_dir, "answer": answer, "tokenizer": tokenizer, "texts": texts,
            "prompts": prompts, "messages": messages, "end_of_turn": end_of_turn, "end_id": end_id}


def test_llama_cpp_tokenizes_like_hf(family_llama):
    """Plain texts and a rendered chat, with BOS/EOS as each side adds them and without (Phi-3: the export's name
    says phi3, so llama.cpp strips the whitespace after its chat tokens as Phi-3's tokenizer does)."""
    answer, tokenizer = family_llama["answer"], llama_cpp_tokenizer(family_llama["tokenizer"])
    assert answer["n_vocab"] == len(tokenizer)
    for text, got, got_plain in zip(family_llama["texts"], answer["tokens"], answer["tokens_plain"]):
        assert got == tokenizer(text)["input_ids"], f"tokenization of {text!r}"
        assert got_plain == tokenizer(text, add_special_tokens=False)["input_ids"], f"tokenization of {text!r} (no BOS/EOS)"


def test_llama_cpp_greedy_tokens_equal_hf(family_llama):
    """f16 file in llama.cpp vs the HF model in float32 with f16-rounded weights: the same logits to within
    LOGIT_TOLERANCE and the same argmax tokens, up to a step the HF model itself calls a tie (top-2 gap
    under the tolerance), which either runtime may break its own way."""
    model = load_f16_rounded(family_llama["folder"])
    answer = family_llama["answer"]
    compared = same = 0
    for prompt, got, first in zip(family_llama["prompts"], answer["greedy"], answer["first_logits"]):
        want, gaps, hf_first = hf_greedy(model, prompt, GREEDY_TOKENS)
        drift = (torch.tensor(first, dtype=torch.float64) - hf_first).abs().max().item()
        assert drift <= LOGIT_TOLERANCE, f"first-step logits differ by {drift:.2e} after {prompt}"
        for step, (a, b, gap) in enumerate(zip(want, got, gaps)):
            if gap < LOGIT_TOLERANCE:
                break
            assert a == b, f"llama.cpp token {b} != HF {a} at step {step} (HF top-2 gap {gap:.3g}) after {prompt}"
            compared += 1
        same += sum(a == b for a, b in zip(want, got))
    total = GREEDY_TOKENS * len(family_llama["prompts"])
    print(f"{family_llama['name']}: {same}/{total} greedy tokens equal, {compared} compared clear of ties")
    assert compared >= total // 2, f"only {compared} of {total} greedy steps were clear of ties"  # measured: 16 to 24


def test_llama_cpp_chat_stops_at_the_end_of_turn_token(family_llama):
    """create_chat_completion ends the answer where the model says the family's end-of-turn token, and hides it."""
    answer, chat = family_llama["answer"], family_llama["answer"]["chat"]
    assert answer["eog"][str(family_llama["end_id"])], f"llama.cpp does not end generation at {family_llama['end_of_turn']}"
    assert (chat["finish_reason"], chat["completion_tokens"]) == ("stop", FORCED_ANSWER_TOKENS), chat
    assert chat["forced_steps"] == 1, "llama.cpp went on generating after the end-of-turn token"
    assert len(chat["generated_ids"]) == FORCED_ANSWER_TOKENS
    assert family_llama["end_of_turn"] not in chat["text"]


def test_llama_cpp_chat_prompt_equals_the_training_prompt(family_llama):
    """llama.cpp renders the GGUF's chat template to the very ids tunewright trains and chats with (Mistral v0.3:
    with sentencepiece's ▁ after [INST], see llama_cpp_tokenizer)."""
    from tunewright.data.templates import generation_prompt_ids

    expected = generation_prompt_ids(llama_cpp_tokenizer(family_llama["tokenizer"]), family_llama["messages"])
    assert family_llama["answer"]["chat"]["prompt_ids"] == expected


# --- the real SmolLM2: a short LoRA run, exported, answers in llama.cpp as `tunewright chat` does ---------


QUESTION = "What does `json.dumps` do?"
ANSWER_TOKENS = 48
Q8_0_TOLERANCE = 0.05  # ||Δlogits|| / ||logits||, as test_export and docs/deploy.md allow q8_0 against the original


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory) -> Path:
    """Two LoRA steps on the embedded SmolLM2 and the stdlib-qa examples (no evaluation: not needed here)."""
    require_llama()
    run = tmp_path_factory.mktemp("llama") / "run"
    cmd = CLI + ["train", "--model", "smollm2-135m-instruct", "--data", str(EXAMPLES / "train.jsonl"),
                 "--method", "lora", "--output", str(run), "--set", "train.max_steps=2", "--set", "train.batch_size=4",
                 "--set", "train.learning_rate=2e-3", "--set", "train.threads=1", "--set", "train.precision=fp32",
                 "--set", "data.max_seq_len=256", "--set", "eval.after_train=false"]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def chat_answer(smollm2_run) -> str:
    out = subprocess.run(CLI + ["chat", str(smollm2_run), "--prompt", QUESTION, "--max-new-tokens", str(ANSWER_TOKENS)], check=False,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


@pytest.fixture(scope="module")
def smollm2_llama(smollm2_run, tmp_path_factory) -> dict:
    """`tunewright export RUN --format gguf --quant f16|q8_0`, then llama.cpp's chat answer and first-step logits."""
    from transformers import AutoTokenizer

    from tunewright.data.templates import generation_prompt_ids

    out_dir = tmp_path_factory.mktemp("smollm2-gguf")
    messages = [{"role": "user", "content": QUESTION}]
    prompt_ids = generation_prompt_ids(AutoTokenizer.from_pretrained(smollm2_run / "adapter"), messages)
    answers = {"prompt_ids": prompt_ids}
    for quant in ("f16", "q8_0"):
        path = out_dir / quant / f"run-{quant}.gguf"
        out = subprocess.run(CLI + ["export", str(smollm2_run), "--format", "gguf", "--quant", quant, "--output", str(path)], check=False,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        answers[quant] = run_llama({"gguf": str(path), "n_ctx": 512, "greedy": [{"ids": prompt_ids, "n": 1}],
                                    "chat": {"messages": messages, "max_tokens": ANSWER_TOKENS}})
    return answers


@pytest.mark.slow
def test_smollm2_run_in_llama_cpp_answers_as_tunewright_chat_does(smollm2_llama, chat_answer):
    """f16: the greedy answer through the GGUF's own chat template equals `tunewright chat RUN` word for word."""
    chat = smollm2_llama["f16"]["chat"]
    assert chat["prompt_ids"] == smollm2_llama["prompt_ids"], "llama.cpp rendered the chat prompt differently"
    assert len(chat_answer.split()) >= 5, f"the tuned model should answer: {chat_answer!r}"
    assert chat["text"].strip() == chat_answer, json.dumps(chat, indent=1)


@pytest.mark.slow
def test_smollm2_run_q8_0_in_llama_cpp_stays_within_its_tolerance(smollm2_llama):
    """q8_0 rounds every weight, so its answer may part from f16's after a few tokens (measured: at the 5th); its
    logits stay within test_export's q8_0 tolerance of the f16 file's (measured 1.2%) and it starts the same."""
    f16, q8 = smollm2_llama["f16"], smollm2_llama["q8_0"]
    assert q8["chat"]["prompt_ids"] == smollm2_llama["prompt_ids"]
    reference, logits = torch.tensor(f16["first_logits"][0]), torch.tensor(q8["first_logits"][0])
    error = ((logits - reference).norm() / reference.norm()).item()
    assert error <= Q8_0_TOLERANCE, f"q8_0 logits differ from f16 by {error:.2%}"
    assert q8["greedy"][0] == f16["greedy"][0]
    assert len(q8["chat"]["text"].split()) >= 5 and q8["chat"]["finish_reason"] in ("stop", "length")
