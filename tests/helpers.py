"""What the tests share besides fixtures: tiny models and tokenizers, JSONL files, run checks.

(Fixtures live in conftest.py files; test modules import helpers from here, never from conftest.)
"""
from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


EXAMPLES = REPO / "examples" / "stdlib-qa"


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'system' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)


CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


FAMILIES = {
    # family: (special tokens, bos, eos, template, add_bos)
    "chatml": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_start|>", "<|im_end|>", CHATML_TEMPLATE, False),
    "llama3": (
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"],
        "<|begin_of_text|>", "<|eot_id|>", LLAMA3_TEMPLATE, True,
    ),
    "mistral": (["<unk>", "<s>", "</s>"], "<s>", "</s>", MISTRAL_TEMPLATE, True),
}


def _training_text() -> list[str]:
    lines = []
    for f in ("train.jsonl", "test.jsonl"):
        for line in (EXAMPLES / f).read_text().splitlines():
            for m in json.loads(line)["messages"]:
                lines.append(m["content"])
    return lines + ["hello world", "the quick brown fox jumps over the lazy dog"]


def build_tokenizer(family: str = "chatml", vocab_size: int = 700):
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    specials, bos, eos, template, add_bos = FAMILIES[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_training_text(), trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=specials[0] if family == "mistral" else None)
    fast.chat_template = template
    return fast


def build_tiny_model(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 64):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def save_tiny(tmp: Path, family: str = "chatml", seed: int = 0, layers: int = 2) -> Path:
    tokenizer = build_tokenizer(family)
    model = build_tiny_model(tokenizer, seed=seed, layers=layers)
    out = tmp / f"tiny-{family}"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


WORDS = ["apple", "river", "stone", "cloud", "green", "tiger", "paper", "light"]


def repeat_word_rows(n: int, offset: int = 0) -> list[dict]:
    """`n` chats asking to repeat a word three times, cycling over WORDS from `offset`: learnt in a few steps."""
    words = [WORDS[i % len(WORDS)] for i in range(offset, offset + n)]
    return [{"messages": [{"role": "user", "content": f"Repeat the word {w}."}, {"role": "assistant", "content": f"{w} {w} {w}"}]}
            for w in words]


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def assert_same_adapter(a_run: Path, b_run: Path) -> None:
    """Two runs' adapters hold the same tensors (fp32 runs: the same maths up to summation order)."""
    import torch
    from safetensors.torch import load_file

    a = load_file(str(a_run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(b_run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def kill_at_checkpoint_then_resume(cmd: list[str], run: Path, step: int = 4):
    """Start `cmd` (a train command writing `run`), SIGKILL it once checkpoints/step-N is complete, then `--resume`."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoints" / f"step-{step}" / "COMPLETE").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before the first checkpoint"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "adapter").exists(), "killed before the end"
    resumed = subprocess.run(cmd + ["--resume"], check=False, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    return resumed
