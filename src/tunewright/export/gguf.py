"""Write a model as one GGUF file for llama.cpp / Ollama, with the `gguf` package's writer.

Tensors go under llama.cpp's names (`blk.N.attn_q.weight`, ...) in each family's layout (gguf_arch.py:
Llama's permuted q/k, Gemma's +1 norms, Phi-3's fused projections, ...); transformers' GGUF loader
undoes exactly those steps, which is what the round-trip tests check. Norms stay f32; 2-D weights take
the requested type. Tied embeddings are written once: no `output.weight` means "tied" to readers.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from ..gguf_config import PHI3_NAME
from .gguf_arch import (  # noqa: F401  (check_architecture, SUPPORTED_ARCHITECTURES: re-exported)
    SUPPORTED_ARCHITECTURES,
    ArchParams,
    arch_params,
    check_architecture,
    gguf_tensors,
    write_family_keys,
    write_rope_scaling,
)
from .gguf_vocab import build_vocab, write_vocab

QUANT_TYPES = ("f32", "f16", "q8_0")
# llama.cpp gives Phi-3's special tokens "strip the whitespace after me" when general.name contains
# phi3 / phi-3, and then looks these tokens up by text: a vocabulary without one aborts the load
PHI3_NAMED_TOKENS = ("</s>", "<unk>", "<s>", "<|endoftext|>")


def _strips_after_specials(tokenizer) -> bool:
    """True when the tokenizer drops whitespace after its end tokens, as Phi-3's own does (rstrip)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return any(tok.content in ("</s>", "<|end|>") and tok.rstrip for tok in added.values())


def general_name(name: str, arch: str, tokenizer, tokens: list[str]) -> str:
    """`general.name`, chosen so llama.cpp applies Phi-3's token rules exactly when the tokenizer has them."""
    has_tokens = set(PHI3_NAMED_TOKENS) <= set(tokens)
    if PHI3_NAME.search(name) and not has_tokens:
        return PHI3_NAME.sub(lambda m: m.group(0)[:-1] + "_3", name)  # phi_3: no longer llama.cpp's marker
    if arch == "phi3" and has_tokens and _strips_after_specials(tokenizer) and not PHI3_NAME.search(name):
        return f"{name} (phi3)"
    return name


def write_arch(writer, p: ArchParams, config, name: str, quant: str) -> None:
    """The `general.*` and `<arch>.*` keys transformers and llama.cpp read the model shape from."""
    import gguf

    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(p.context)
    writer.add_embedding_length(p.hidden)
    writer.add_block_count(p.n_layers)
    writer.add_feed_forward_length(p.ffn)
    writer.add_head_count(p.n_head)
    writer.add_head_count_kv(p.n_head_kv)
    writer.add_rope_dimension_count(p.rope_dim)
    writer.add_rope_freq_base(p.rope_theta)
    write_rope_scaling(writer, p, config)
    write_family_keys(writer, p)
    writer.add_layer_norm_rms_eps(p.rms_eps)
    writer.add_vocab_size(p.vocab_size)
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(file_types[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def encode_tensor(data, quant: str):
    """(array, raw GGML type or None) for one tensor: 1-D stays f32, rows not divisible by 32 fall back to f16."""
    import gguf
    import numpy as np

    if data.ndim < 2 or quant == "f32":
        return data.astype(np.float32), None
    if quant == "q8_0":
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
        if data.shape[-1] % block == 0:
            return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return data.astype(np.float16), None


def write_gguf(model, tokenizer, path: Path, quant: str, name: str, source_pre: str | None = None) -> dict:
    """Write `model` + `tokenizer` to `path` atomically; returns what a Modelfile needs to know."""
    import gguf

    if quant not in QUANT_TYPES:
        raise UserError(f"unknown --quant '{quant}'", f"use one of: {', '.join(QUANT_TYPES)}")
    p = arch_params(model)
    vocab = build_vocab(tokenizer, p.vocab_size, source_pre)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # not mkstemp: its 0600 mode would stick to the file
    try:
        writer = gguf.GGUFWriter(tmp, p.arch)
        write_arch(writer, p, model.config, general_name(name, p.arch, tokenizer, vocab.tokens), quant)
        write_vocab(writer, vocab)
        for tensor_name, data in gguf_tensors(model, p):
            array, raw_type = encode_tensor(data, quant)
            writer.add_tensor(tensor_name, array, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": path, "chat_template": vocab.chat_template, "stop_tokens": vocab.stop_tokens}
