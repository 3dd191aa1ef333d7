"""Inputs of the issue-13 measurement, built the same way on every machine: variable-length chat data and
randomly initialised models of real shapes.

The data: instruction rows of 60..max tokens (seeded targets, skewed short), each a multi-turn chat
made by concatenating the question/answer turns of the example data that ships (examples/stdlib-qa and
examples/stdlib-modules) until the row reaches its target length under the model's chat template. Real text,
never random tokens; padding a batch of 8 to its longest costs about 40% of the tokens, as in the issue.
Long rows (max length 1024-2048) reuse turns cyclically: speed does not depend on which text repeats.

The models: Qwen2.5-0.5B and Llama-3.2-1B shapes from their published config.json, random weights (speed does
not depend on weight values, so nothing downloads), saved as a plain Hugging Face folder with a local tokenizer
(SmolLM2's: its ids all fall inside both vocabularies).
"""
from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_SOURCES = ("examples/stdlib-qa/train.jsonl", "examples/stdlib-modules/train.jsonl")
VALIDATION_SOURCES = ("examples/stdlib-qa/test.jsonl", "examples/stdlib-modules/test.jsonl")

# Published config.json values (Qwen/Qwen2.5-0.5B, meta-llama/Llama-3.2-1B); token ids come from the tokenizer used.
REAL_CONFIGS: dict[str, dict] = {
    "qwen2.5-0.5b": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "use_sliding_window": False, "sliding_window": 32768,
        "max_window_layers": 24, "attention_dropout": 0.0, "initializer_range": 0.02,
    },
    "llama-3.2-1b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "max_position_embeddings": 131072,
        "rope_theta": 500000.0, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                                 "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
        "attention_dropout": 0.0, "initializer_range": 0.02,
    },
}


# --- variable-length data ---------------------------------------------------------------------------------


def turn_pairs(sources: tuple[str, ...]) -> list[list[dict]]:
    """Every user/assistant pair of the source files, interleaved file by file (system prompts left out)."""
    per_file = []
    for source in sources:
        pairs = []
        for line in (REPO / source).read_text().splitlines():
            msgs = [m for m in json.loads(line)["messages"] if m["role"] != "system"]
            pairs += [msgs[i:i + 2] for i in range(0, len(msgs) - 1, 2)]
        per_file.append(pairs)
    mixed = itertools.chain.from_iterable(itertools.zip_longest(*per_file))
    return [p for p in mixed if p is not None]


def chat_length(tokenizer, messages: list[dict]) -> int:
    """Tokens of a chat as tunewright tokenizes it for training (its chat template rendering, before truncation)."""
    from tunewright.data.conversation import Conversation, Message
    from tunewright.data.templates import tokenize_conversation

    conv = Conversation(messages=tuple(Message(m["role"], m["content"]) for m in messages))
    return len(tokenize_conversation(tokenizer, conv, train_on="assistant").input_ids)


SKEW = 1.2  # targets low + (high - low) * u^SKEW: more short rows than long, as in instruction data


def target_lengths(rows: int, low: int, high: int, seed: int) -> list[int]:
    """Seeded targets in [low, high], skewed short: padding 8 rows to their longest then wastes ~40% of the tokens."""
    rng = random.Random(seed)
    return [low + round((high - low) * rng.random() ** SKEW) for _ in range(rows)]


def build_rows(tokenizer, rows: int, low: int, high: int, seed: int = 13,
               sources: tuple[str, ...] = TRAIN_SOURCES) -> list[dict]:
    """`rows` chats of `low`..`high` tokens, each ending at the turn that brings it nearest its target length.

    Turns are taken in order, cycling through the sources; a turn that would overshoot the target by more
    than stopping short would undershoot it (or pass `high`) starts the next row instead; a turn
    longer than `high` on its own is skipped.
    """
    pairs = turn_pairs(sources)
    at = skipped = 0
    out = []
    for target in target_lengths(rows, low, high, seed):
        messages: list[dict] = []
        length = 0
        while length < target:
            grown = messages + pairs[at % len(pairs)]
            grown_length = chat_length(tokenizer, grown)
            nearer_without = grown_length - target > target - length and length >= low
            if messages and (grown_length > high or nearer_without):
                break
            at += 1
            if grown_length > high:  # one turn longer than any row may be: never used
                skipped += 1
                if skipped > len(pairs):
                    raise ValueError(f"no turn of {sources} fits in {high} tokens")
                continue
            messages, length = grown, grown_length
        out.append({"messages": messages})
    return out


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def build_data_files(tokenizer, out_dir: Path, rows: int, small_rows: int, validation_rows: int, low: int,
                     high: int) -> dict[str, Path]:
    """train_<rows>.jsonl, its first `small_rows` rows as train_<small_rows>.jsonl, and validation.jsonl."""
    train = build_rows(tokenizer, rows, low, high)
    validation = build_rows(tokenizer, validation_rows, low, high, seed=31, sources=VALIDATION_SOURCES)
    return {
        "large": write_jsonl(train, out_dir / f"train_{rows}.jsonl"),
        "small": write_jsonl(train[:small_rows], out_dir / f"train_{small_rows}.jsonl"),
        "validation": write_jsonl(validation, out_dir / "validation.jsonl"),
    }


def pad_share_in_order(lengths: list[int], batch: int) -> float:
    """Share of a padded batch that is padding when batches of `batch` rows (in file order) pad to their longest."""
    padded = sum(max(lengths[i:i + batch]) * len(lengths[i:i + batch]) for i in range(0, len(lengths), batch))
    return 1 - sum(lengths) / padded if padded else 0.0


# --- random-init models of real shapes --------------------------------------------------------------------


def build_random_model(name: str, folder: Path, tokenizer_dir: str, seed: int = 0) -> Path:
    """A randomly initialised `name` (a REAL_CONFIGS key) saved with the tokenizer of `tokenizer_dir`; reused if present."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    spec = dict(REAL_CONFIGS[name])
    model_type = spec.pop("model_type")
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    config = AutoConfig.for_model(model_type, **spec, **{k: v for k, v in ids.items() if v is not None})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)  # bf16 on disk: half the bytes, loaders cast
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
