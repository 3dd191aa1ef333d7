"""The tokenizer half of a GGUF file: vocabulary, scores, token types, merges, special ids, chat template.

llama.cpp (and transformers' own GGUF loader) rebuild the tokenizer from these keys alone, so they
must describe exactly the tokenizer the model was trained with. Two kinds are written:

- byte-level BPE (`tokenizer.ggml.model = "gpt2"`: SmolLM, Llama 3, Qwen, GPT-2): tokens, merges and
  the pre-tokenizer name llama.cpp knows the family's split regex by;
- sentencepiece BPE with byte fallback (`"llama"`: Mistral, Phi-3, Gemma): tokens, scores, token
  types (<0xNN> pieces as BYTE) and whether a space is prefixed.

Sentencepiece scores come from the `tokenizer.json` merge ranks, not from `tokenizer.model`:
tunewright trains with the Hugging Face tokenizer, transformers no longer saves `tokenizer.model`
beside a fine-tuned model, and llama.cpp's sentencepiece tokenizer merges the adjacent pair whose
result has the highest score, so a score of minus the first merge rank that builds a piece makes
it merge in exactly the order the Hugging Face BPE does.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..data.templates import end_of_turn_ids
from ..errors import UserError

# gguf.TokenType values, spelled out so this module imports without the gguf package
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPIECE_SPACE = "\u2581"
BYTE_PIECE = re.compile(r"^<0x[0-9A-F]{2}>$")
UNUSED_SCORE = -10000.0  # what llama.cpp's converter gives padding slots
ADDED_SCORE = -1000.0  # and tokens added beyond the sentencepiece model

# The split regexes of the byte-level families, under the names llama.cpp's convert_hf_to_gguf.py writes
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
FAMILY_SPLITS = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}


@dataclass
class GGUFVocab:
    """Everything the `tokenizer.*` keys of a GGUF file hold."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (sentencepiece)
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
    add_eos: bool
    chat_template: str | None
    scores: list[float] | None = None
    add_space_prefix: bool | None = None
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


def _is_sentencepiece(spec: dict) -> bool:
    """True for a sentencepiece BPE converted to tokenizer.json: spaces become ▁, unknown bytes become <0xNN>."""
    model = spec.get("model", {})
    spaces = '"Metaspace"' in json.dumps(spec.get("pre_tokenizer")) or SPIECE_SPACE in json.dumps(
        spec.get("normalizer"), ensure_ascii=False)
    return model.get("type") == "BPE" and bool(model.get("byte_fallback")) and spaces


def _merge_pairs(spec: dict) -> list[tuple[str, str]]:
    merges = spec["model"].get("merges") or []
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]


def _known_splits() -> dict[str, str]:
    """Regex -> llama.cpp pre-tokenizer name: the families above first, then transformers' read-back table."""
    names = dict(FAMILY_SPLITS)
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_PRE_TOKENIZER_SPLITS,
        )
    except ImportError:
        return names
    for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        names.setdefault(regex, name)
    return names


def pre_tokenizer_name(spec: dict, source_pre: str | None = None) -> str:
    """The llama.cpp name of the pre-tokenizer (how text is split before BPE).

    Matched on the split regex itself rather than by llama.cpp's hash of a test string's tokens: that
    hash identifies one published vocabulary, so it never matches a retrained or extended one, while
    the regex is what the name stands for in llama.cpp and in transformers' GGUF loader.
    """
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


def _adds_eos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id


def _end_of_turn_id(tokenizer) -> int | None:
    """The template's end-of-turn token when it differs from EOS (e.g. <|im_end|>, <|eot_id|>, <end_of_turn>)."""
    others = sorted(end_of_turn_ids(tokenizer) - {tokenizer.eos_token_id})
    for text in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(text)
        if tid in others:
            return tid
    return None


def _tokens_by_id(tokenizer, vocab_size: int) -> dict[int, str]:
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if len(by_id) > vocab_size or (by_id and max(by_id) >= vocab_size):
        raise UserError(f"the tokenizer has {len(by_id)} tokens but the model only {vocab_size} embeddings",
                        "resize the model's embeddings to the tokenizer (model.resize_token_embeddings) and re-export")
    return by_id


def _byte_level_tokens(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    by_id = _tokens_by_id(tokenizer, vocab_size)
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
    return tokens, types


def merge_rank_scores(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Score of each piece a merge builds: minus the rank of the first merge that builds it.

    llama.cpp merges the adjacent pair whose result scores highest; with these scores that is the
    pair of lowest rank, which is the pair the Hugging Face BPE merges.
    """
    scores: dict[str, float] = {}
    for rank, (left, right) in enumerate(pairs):
        scores.setdefault(left + right, -float(rank))
    return scores


def _sentencepiece_entry(i: int, by_id: dict, added: dict, unk_id, merged: dict, last_rank: int) -> tuple[str, int, float]:
    """(token text, token type, score) for one id, typed the way llama.cpp's converter types sentencepiece pieces."""
    if i not in by_id:
        return f"[PAD{i}]", UNUSED, UNUSED_SCORE
    token = by_id[i]
    if i == unk_id:
        return token, UNKNOWN, 0.0
    if i in added and added[i].special:
        return token, CONTROL, 0.0
    if i in added:  # matched whole in the raw text by llama.cpp, so spelled with real spaces
        return token.replace(SPIECE_SPACE, " "), USER_DEFINED, ADDED_SCORE
    if BYTE_PIECE.match(token):
        return token, BYTE, 0.0
    if token in merged:
        return token, NORMAL, merged[token]
    return token, NORMAL, -float(last_rank + 1 + i)  # single characters: never a merge result, below every merge


def _sentencepiece_tokens(tokenizer, spec: dict, vocab_size: int) -> tuple[list[str], list[int], list[float]]:
    by_id = _tokens_by_id(tokenizer, vocab_size)
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    pairs = _merge_pairs(spec)
    merged = merge_rank_scores(pairs)
    entries = [_sentencepiece_entry(i, by_id, added, tokenizer.unk_token_id, merged, len(pairs)) for i in range(vocab_size)]
    return [e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries]


def adds_space_prefix(spec: dict) -> bool:
    """Whether text gets a leading ▁ (sentencepiece's add_dummy_prefix): Llama/Mistral/Phi-3 yes, Gemma no."""
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for p in parts:
        if p.get("type") == "Metaspace":
            return p.get("prepend_scheme", "always" if p.get("add_prefix_space", True) else "never") != "never"
    norm = spec.get("normalizer") or {}
    steps = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    return any(s.get("type") == "Prepend" and s.get("prepend") == SPIECE_SPACE for s in steps)


def _vocab_kind(spec: dict) -> str:
    if _is_byte_level(spec):
        return "gpt2"
    if _is_sentencepiece(spec):
        return "llama"
    kind = spec.get("model", {}).get("type", "unknown")
    raise UserError(
        f"GGUF export supports byte-level BPE (SmolLM, Llama 3, Qwen, GPT-2) and sentencepiece BPE with byte "
        f"fallback (Mistral, Phi-3, Gemma) tokenizers; this one is {kind} and neither",
        "export --format hf and convert that folder with llama.cpp's convert_hf_to_gguf.py",
    )


def build_vocab(tokenizer, vocab_size: int, source_pre: str | None = None) -> GGUFVocab:
    """The GGUF tokenizer description of `tokenizer`, padded with unused tokens to the model's vocab size."""
    spec = _tokenizer_json(tokenizer)
    kind = _vocab_kind(spec)
    if kind == "gpt2":
        tokens, types = _byte_level_tokens(tokenizer, vocab_size)
        scores, merges, space_prefix = None, [" ".join(p) for p in _merge_pairs(spec)], None
        pre = pre_tokenizer_name(spec, source_pre)
    else:
        tokens, types, scores = _sentencepiece_tokens(tokenizer, spec, vocab_size)
        merges, space_prefix, pre = [], adds_space_prefix(spec), "default"
    return GGUFVocab(
        model=kind, tokens=tokens, token_types=types, merges=merges, pre=pre,
        bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, unk_id=tokenizer.unk_token_id,
        pad_id=tokenizer.pad_token_id, eot_id=_end_of_turn_id(tokenizer),
        add_bos=_adds_bos(tokenizer), add_eos=_adds_eos(tokenizer),
        chat_template=getattr(tokenizer, "chat_template", None), scores=scores, add_space_prefix=space_prefix,
        stop_tokens=sorted({tokenizer.convert_ids_to_tokens(i) for i in end_of_turn_ids(tokenizer)}),
    )


def write_vocab(writer, vocab: GGUFVocab) -> None:
    """Add the `tokenizer.ggml.*` and `tokenizer.chat_template` keys."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.token_types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for add, value in ((writer.add_bos_token_id, vocab.bos_id), (writer.add_eos_token_id, vocab.eos_id),
                       (writer.add_unk_token_id, vocab.unk_id), (writer.add_pad_token_id, vocab.pad_id),
                       (writer.add_eot_token_id, vocab.eot_id)):
        if value is not None:
            add(value)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
