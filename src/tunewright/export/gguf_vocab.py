"""The tokenizer half of a GGUF file: vocabulary, token types, merges, special ids, chat template.

llama.cpp (and transformers' own GGUF loader) rebuild the tokenizer from these keys alone, so they
must describe exactly the tokenizer the model was trained with. Only byte-level BPE vocabularies
(GPT-2 style: SmolLM, Llama 3, Qwen, ...) are written; sentencepiece vocabularies need scores and
byte tokens that a Hugging Face `tokenizer.json` does not carry, and get a clear error instead.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..data.templates import end_of_turn_ids
from ..errors import UserError

# gguf.TokenType values, spelled out so this module imports without the gguf package
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@dataclass
class GGUFVocab:
    """Everything the `tokenizer.*` keys of a GGUF file hold."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    eot_id: int | None
    add_bos: bool
    chat_template: str | None
    stop_tokens: list[str] = field(default_factory=list)  # end-of-turn token texts, for Ollama's `stop`


def _tokenizer_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError("GGUF export needs a fast (tokenizer.json) tokenizer; this model only has a slow one",
                        "export --format hf and convert with llama.cpp's convert_hf_to_gguf.py")
    return json.loads(backend.to_str())


def _is_byte_level(spec: dict) -> bool:
    """True when the tokenizer spells bytes GPT-2 style (Ġ for space), which the `gpt2` GGUF model expects."""
    text = json.dumps(spec.get("pre_tokenizer")) + json.dumps(spec.get("decoder"))
    return spec.get("model", {}).get("type") == "BPE" and '"ByteLevel"' in text


def _merge_strings(spec: dict) -> list[str]:
    merges = spec["model"].get("merges") or []
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _known_splits() -> dict[str, str]:
    """Regex -> llama.cpp pre-tokenizer name, from the table transformers' GGUF loader reads back."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:
        return {}
    names: dict[str, str] = {}
    for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        names.setdefault(regex, name)
    return names


def pre_tokenizer_name(spec: dict, source_pre: str | None = None) -> str:
    """The llama.cpp name of the pre-tokenizer (how text is split before BPE)."""
    if source_pre:
        return source_pre  # the model came from a GGUF file: keep what its author declared
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    types = [p.get("type") for p in parts]
    if types == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if types == ["Digits", "ByteLevel"]:
        return "smollm"
    for p in parts:
        if p.get("type") == "Split":
            name = _known_splits().get((p.get("pattern") or {}).get("Regex", ""))
            if name:
                return name
    return "default"


def source_gguf_pre(model_dir: str | None) -> str | None:
    """The pre-tokenizer name recorded in the GGUF file a model folder was dequantized from, if any."""
    if not model_dir:
        return None
    marker = Path(model_dir) / "tunewright_source.json"
    if not marker.is_file():
        return None
    path = json.loads(marker.read_text()).get("gguf")
    if not path or not Path(path).is_file():
        return None
    from gguf import GGUFReader

    field_ = GGUFReader(path).fields.get("tokenizer.ggml.pre")
    return field_.contents() if field_ is not None else None


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


def _end_of_turn_id(tokenizer) -> int | None:
    """The template's end-of-turn token when it differs from EOS (e.g. <|im_end|>, <|eot_id|>)."""
    others = sorted(end_of_turn_ids(tokenizer) - {tokenizer.eos_token_id})
    for text in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(text)
        if tid in others:
            return tid
    return None


def build_vocab(tokenizer, vocab_size: int, source_pre: str | None = None) -> GGUFVocab:
    """The GGUF tokenizer description of `tokenizer`, padded with unused tokens to the model's vocab size."""
    spec = _tokenizer_json(tokenizer)
    if not _is_byte_level(spec):
        kind = spec.get("model", {}).get("type", "unknown")
        raise UserError(
            f"GGUF export supports byte-level BPE tokenizers (SmolLM, Llama 3, Qwen, GPT-2 style); this one is {kind} without byte-level encoding",
            "export --format hf and convert that folder with llama.cpp's convert_hf_to_gguf.py",
        )
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if len(by_id) > vocab_size:
        raise UserError(f"the tokenizer has {len(by_id)} tokens but the model only {vocab_size} embeddings",
                        "resize the model's embeddings to the tokenizer (model.resize_token_embeddings) and re-export")
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(CONTROL if added[i].special else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    eot = _end_of_turn_id(tokenizer)
    stops = sorted({tokenizer.convert_ids_to_tokens(i) for i in end_of_turn_ids(tokenizer)})
    return GGUFVocab(
        tokens=tokens,
        token_types=types,
        merges=_merge_strings(spec),
        pre=pre_tokenizer_name(spec, source_pre),
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        unk_id=tokenizer.unk_token_id,
        pad_id=tokenizer.pad_token_id,
        eot_id=eot,
        add_bos=_adds_bos(tokenizer),
        chat_template=getattr(tokenizer, "chat_template", None),
        stop_tokens=stops,
    )


def write_vocab(writer, vocab: GGUFVocab) -> None:
    """Add the `tokenizer.ggml.*` and `tokenizer.chat_template` keys."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    for add, value in ((writer.add_bos_token_id, vocab.bos_id), (writer.add_eos_token_id, vocab.eos_id),
                       (writer.add_unk_token_id, vocab.unk_id), (writer.add_pad_token_id, vocab.pad_id),
                       (writer.add_eot_token_id, vocab.eot_id)):
        if value is not None:
            add(value)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
