"""Write a model as one GGUF file for llama.cpp / Ollama, with the `gguf` package's writer.

Tensors go under llama.cpp's names (`blk.N.attn_q.weight`, ...), with q/k projections permuted
the way llama.cpp's converter does for its rotary layout (transformers' GGUF loader undoes exactly
that permutation, which is what our round-trip test checks). Norms stay f32; 2-D weights take the
requested type. Tied embeddings are written once: no `output.weight` means "tied" to readers.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .gguf_vocab import build_vocab, write_vocab

# Hugging Face model_type -> GGUF architecture; Mistral is the Llama graph in llama.cpp
SUPPORTED_ARCHITECTURES = {"llama": "llama", "mistral": "llama"}
QUANT_TYPES = ("f32", "f16", "q8_0")


@dataclass(frozen=True)
class ArchParams:
    """The shape facts a GGUF reader needs, read from a transformers config."""

    arch: str
    n_layers: int
    hidden: int
    ffn: int
    n_head: int
    n_head_kv: int
    head_dim: int
    context: int
    rope_theta: float
    rope_scaling: dict | None
    rms_eps: float
    vocab_size: int
    tied: bool


def check_architecture(config) -> str:
    """The GGUF architecture name for this config, or a UserError listing what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(sorted(SUPPORTED_ARCHITECTURES))
        raise UserError(
            f"GGUF export does not support the '{model_type}' architecture; supported: {supported}",
            "export --format hf and convert that folder with llama.cpp's convert_hf_to_gguf.py",
        )
    return SUPPORTED_ARCHITECTURES[model_type]


def _rope(config) -> tuple[float, dict | None]:
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = params.pop("rope_theta", None) or getattr(config, "rope_theta", None) or 10000.0
    kind = params.get("rope_type", params.get("type", "default"))
    return float(theta), (None if kind in (None, "default") else params | {"rope_type": kind})


def arch_params(model) -> ArchParams:
    """Read the architecture facts once, so the writers below never touch the config."""
    config = model.config
    arch = check_architecture(config)
    theta, scaling = _rope(config)
    if scaling and scaling["rope_type"] not in ("linear", "llama3"):
        raise UserError(f"GGUF export: rope scaling '{scaling['rope_type']}' is not supported (linear and llama3 are)",
                        "export --format hf and convert with llama.cpp's convert_hf_to_gguf.py")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    embed = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is None or out.weight.data_ptr() == embed.data_ptr() or bool(getattr(config, "tie_word_embeddings", False))
    return ArchParams(
        arch=arch, n_layers=config.num_hidden_layers, hidden=config.hidden_size, ffn=config.intermediate_size,
        n_head=config.num_attention_heads, n_head_kv=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_dim=head_dim, context=config.max_position_embeddings, rope_theta=theta, rope_scaling=scaling,
        rms_eps=config.rms_norm_eps, vocab_size=embed.shape[0], tied=tied,
    )


def permute_for_rotary(weight, n_head: int, n_head_kv: int | None = None):
    """llama.cpp's q/k layout: each head's rotary halves interleaved (convert_hf_to_gguf.py `permute`)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def llama3_rope_factors(p: ArchParams):
    """The per-frequency factors llama.cpp stores as `rope_freqs.weight` for Llama 3.1-style scaling."""
    import numpy as np

    s = p.rope_scaling
    factor, low, high = s.get("factor", 8.0), s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old_ctx = s.get("original_max_position_embeddings", 8192)
    factors = []
    for i in range(0, p.head_dim, 2):
        wavelen = 2 * math.pi * p.rope_theta ** (i / p.head_dim)
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def write_arch(writer, p: ArchParams, name: str, quant: str) -> None:
    """The `general.*` and `llama.*` keys transformers and llama.cpp read the model shape from."""
    import gguf

    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(p.context)
    writer.add_embedding_length(p.hidden)
    writer.add_block_count(p.n_layers)
    writer.add_feed_forward_length(p.ffn)
    writer.add_head_count(p.n_head)
    writer.add_head_count_kv(p.n_head_kv)
    writer.add_rope_dimension_count(p.head_dim)
    if p.head_dim != p.hidden // p.n_head:
        writer.add_key_length(p.head_dim)
        writer.add_value_length(p.head_dim)
    writer.add_rope_freq_base(p.rope_theta)
    if p.rope_scaling and p.rope_scaling["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(p.rope_scaling["factor"]))
    writer.add_layer_norm_rms_eps(p.rms_eps)
    writer.add_vocab_size(p.vocab_size)
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(file_types[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def gguf_tensors(model, p: ArchParams):
    """(GGUF name, float32 numpy array) for every weight, in llama.cpp's names and layout."""
    import gguf
    import torch

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, p.n_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and p.tied:
            continue
        stem, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise UserError(f"GGUF export: no GGUF name for the weight '{hf_name}'",
                            "export --format hf and convert with llama.cpp's convert_hf_to_gguf.py")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if gguf_name.endswith(".attn_q"):
            data = permute_for_rotary(data, p.n_head, p.n_head)
        elif gguf_name.endswith(".attn_k"):
            data = permute_for_rotary(data, p.n_head, p.n_head_kv)
        yield f"{gguf_name}.{suffix}", data
    if p.rope_scaling and p.rope_scaling["rope_type"] == "llama3":
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", llama3_rope_factors(p)


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
        write_arch(writer, p, name, quant)
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
