"""The model half of a GGUF file: per-family metadata keys and tensor layouts, as llama.cpp reads them.

Each family differs from plain Llama in a few documented ways (llama.cpp's convert_hf_to_gguf.py is
the reference; transformers' GGUF loader undoes the same steps when it reads a file back):
- llama / mistral: q/k rows permuted for llama.cpp's interleaved rotary layout; Llama 3.1-style rope
  scaling becomes a `rope_freqs` tensor. Mistral is the Llama graph in llama.cpp.
- qwen2 / qwen3: NeoX rotary, so no permutation; qwen2 keeps its q/k/v biases, qwen3 its q/k norms.
- gemma2 / gemma3: RMSNorm weights are stored +1 (HF computes x * (1 + w), llama.cpp x * w); softcaps,
  the sliding window and which layers use it; gemma3's local rope base. llama.cpp fixes the attention
  scale at 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 27B shapes), so a model whose
  `query_pre_attn_scalar` differs gets the difference folded into its query weights.
- phi3: fused qkv and gate_up projections are written as they are (`attn_qkv`, `ffn_up`); long-context
  (su/longrope) scaling becomes `rope_factors_long/short` tensors plus the attention factor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UserError

# Hugging Face model_type -> GGUF architecture name (llama.cpp's LLM_ARCH names)
SUPPORTED_ARCHITECTURES = {
    "llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
    "gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3",
}
CONVERT_HINT = "export --format hf and convert that folder with llama.cpp's convert_hf_to_gguf.py"
GEMMA = ("gemma2", "gemma3")
# llama.cpp's own rule for Gemma's attention scale: the 27B shapes (by layer count) use hidden/heads
GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
# rope scaling kinds each GGUF architecture can express
ROPE_KINDS = {"llama": ("linear", "llama3", "yarn"), "qwen2": ("linear", "yarn"), "qwen3": ("linear", "yarn"),
              "gemma2": ("linear",), "gemma3": ("linear",), "phi3": ("su", "longrope")}


@dataclass(frozen=True)
class ArchParams:
    """The shape facts a GGUF reader needs, read once from a transformers config."""

    arch: str
    n_layers: int
    hidden: int
    ffn: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rope_dim: int
    context: int
    rope_theta: float
    rope_theta_swa: float | None
    rope_scaling: dict | None
    rms_eps: float
    vocab_size: int
    tied: bool
    sliding_window: int | None = None
    swa_layers: tuple[bool, ...] | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    query_scale: float = 1.0  # folded into the queries so llama.cpp's fixed attention scale gives HF's


def check_architecture(config) -> str:
    """The GGUF architecture name for this config, or a UserError listing what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(sorted(SUPPORTED_ARCHITECTURES))
        raise UserError(f"GGUF export does not support the '{model_type}' architecture; supported: {supported}",
                        CONVERT_HINT)
    return SUPPORTED_ARCHITECTURES[model_type]


def _rope(config) -> tuple[float, float | None, dict | None]:
    """(global theta, sliding-layer theta or None, scaling dict or None), for old and new transformers configs."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    local = params.pop("sliding_attention", None)
    params = dict(params.pop("full_attention", None) or params)
    theta = params.pop("rope_theta", None) or getattr(config, "rope_theta", None) or 10000.0
    local_theta = (local or {}).get("rope_theta") or getattr(config, "rope_local_base_freq", None)
    kind = params.get("rope_type", params.get("type", "default"))
    scaling = None if kind in (None, "default") else params | {"rope_type": kind}
    return float(theta), (float(local_theta) if local_theta else None), scaling


def _check_rope(arch: str, scaling: dict | None) -> None:
    if scaling and scaling["rope_type"] not in ROPE_KINDS[arch]:
        kinds = ", ".join(ROPE_KINDS[arch])
        raise UserError(f"GGUF export: rope scaling '{scaling['rope_type']}' is not supported for {arch} ({kinds} are)",
                        CONVERT_HINT)


def _is_tied(model) -> bool:
    embed = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    return out is None or out.weight.data_ptr() == embed.data_ptr() or bool(getattr(model.config, "tie_word_embeddings", False))


def _swa_layers(config, n_layers: int) -> tuple[bool, ...] | None:
    """Which layers attend through the sliding window (HF `layer_types`, else Gemma's every-other / 5-of-6 rule)."""
    types = getattr(config, "layer_types", None)
    if types:
        return tuple(t == "sliding_attention" for t in types)
    pattern = getattr(config, "sliding_window_pattern", None) or (2 if config.model_type == "gemma2" else 6)
    return tuple((i + 1) % pattern != 0 for i in range(n_layers))


def _query_scale(arch: str, config, head_dim: int) -> float:
    """The factor that turns llama.cpp's fixed Gemma attention scale into the model's query_pre_attn_scalar."""
    if arch not in GEMMA:
        return 1.0
    wanted = getattr(config, "query_pre_attn_scalar", None) or head_dim
    fixed = config.hidden_size / config.num_attention_heads if config.num_hidden_layers == GEMMA_27B_LAYERS[arch] else head_dim
    return math.sqrt(fixed / wanted)


def arch_params(model) -> ArchParams:
    """Read the architecture facts once, so the writers below never touch the config."""
    config = model.config
    arch = check_architecture(config)
    theta, theta_swa, scaling = _rope(config)
    _check_rope(arch, scaling)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    partial = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor") \
        or getattr(config, "partial_rotary_factor", None) or 1.0
    rope_dim = int(partial * config.hidden_size) // config.num_attention_heads if arch == "phi3" else head_dim
    tied = _is_tied(model)
    if arch == "gemma2" and not tied:
        raise UserError("GGUF export: llama.cpp's gemma2 always ties the output head to the embeddings; this model's differ",
                        CONVERT_HINT)
    gemma = arch in GEMMA
    window = getattr(config, "sliding_window", None) if gemma else None
    swa = _swa_layers(config, config.num_hidden_layers) if window else None
    return ArchParams(
        arch=arch, n_layers=config.num_hidden_layers, hidden=config.hidden_size, ffn=config.intermediate_size,
        n_head=config.num_attention_heads, n_head_kv=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_dim=head_dim, rope_dim=rope_dim, context=config.max_position_embeddings, rope_theta=theta,
        rope_theta_swa=theta_swa if arch == "gemma3" else None, rope_scaling=scaling, rms_eps=config.rms_norm_eps,
        vocab_size=model.get_input_embeddings().weight.shape[0], tied=tied,
        sliding_window=window, swa_layers=swa,
        attn_softcap=getattr(config, "attn_logit_softcapping", None) if gemma else None,
        final_softcap=getattr(config, "final_logit_softcapping", None) if gemma else None,
        query_scale=_query_scale(arch, config, head_dim),
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
    for i in range(0, p.rope_dim, 2):
        wavelen = 2 * math.pi * p.rope_theta ** (i / p.rope_dim)
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _original_context(p: ArchParams, config) -> int:
    s = p.rope_scaling or {}
    return int(s.get("original_max_position_embeddings") or getattr(config, "original_max_position_embeddings", None) or p.context)


def write_rope_scaling(writer, p: ArchParams, config) -> None:
    """The rope scaling keys, as convert_hf_to_gguf.py writes them for each kind."""
    import gguf

    s = p.rope_scaling
    kind = s["rope_type"] if s else None
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(s["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(s["factor"]))
        writer.add_rope_scaling_orig_ctx_len(_original_context(p, config))
        if s.get("attention_factor") is not None:
            writer.add_rope_scaling_yarn_attn_factor(float(s["attention_factor"]))
        for key, add in (("beta_fast", writer.add_rope_scaling_yarn_beta_fast), ("beta_slow", writer.add_rope_scaling_yarn_beta_slow)):
            if s.get(key) is not None:
                add(float(s[key]))
    elif kind in ("su", "longrope"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
    if p.arch == "phi3":  # llama.cpp picks long/short factors by comparing the context with this
        original = _original_context(p, config)
        writer.add_rope_scaling_orig_ctx_len(original)
        scale = p.context / original
        if kind in ("su", "longrope"):
            writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)


def write_family_keys(writer, p: ArchParams) -> None:
    """Keys only some families have: softcaps, sliding window and its layers, local rope base, head size."""
    if p.arch in GEMMA or p.head_dim != p.hidden // p.n_head:
        writer.add_key_length(p.head_dim)
        writer.add_value_length(p.head_dim)
    if p.attn_softcap:
        writer.add_attn_logit_softcapping(float(p.attn_softcap))
    if p.final_softcap:
        writer.add_final_logit_softcapping(float(p.final_softcap))
    if p.arch == "phi3":
        writer.add_sliding_window(0)  # llama.cpp runs Phi-3 without SWA; 0 marks "not Phi-4"
    elif p.sliding_window and p.swa_layers:
        writer.add_sliding_window(int(p.sliding_window))
        writer.add_sliding_window_pattern(list(p.swa_layers))
    if p.rope_theta_swa:
        writer.add_rope_freq_base_swa(p.rope_theta_swa)


def _transform(gguf_name: str, hf_name: str, data, p: ArchParams):
    """One tensor's layout change for llama.cpp: rotary permute, Gemma's +1 norms, folded query scale."""
    if p.arch == "llama" and gguf_name.endswith(".attn_q"):
        return permute_for_rotary(data, p.n_head, p.n_head)
    if p.arch == "llama" and gguf_name.endswith(".attn_k"):
        return permute_for_rotary(data, p.n_head, p.n_head_kv)
    if p.arch in GEMMA and hf_name.endswith("norm.weight"):
        data = data + 1.0
    scaled = ".attn_q_norm" if p.arch == "gemma3" else ".attn_q"
    if p.query_scale != 1.0 and gguf_name.endswith(scaled):
        data = data * p.query_scale
    return data


def extra_tensors(p: ArchParams):
    """Tensors llama.cpp computes rope from that HF keeps in the config: Llama 3 and Phi-3 long-context factors."""
    import gguf
    import numpy as np

    kind = (p.rope_scaling or {}).get("rope_type")
    if kind == "llama3":
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", llama3_rope_factors(p)
    if kind in ("su", "longrope"):
        for key, tensor in (("long_factor", gguf.MODEL_TENSOR.ROPE_FACTORS_LONG), ("short_factor", gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT)):
            factors = np.asarray(p.rope_scaling[key], dtype=np.float32)
            if factors.shape != (p.rope_dim // 2,):
                raise UserError(f"GGUF export: rope_scaling.{key} has {factors.size} values, expected {p.rope_dim // 2}",
                                "fix the model's config.json rope_scaling")
            yield gguf.TENSOR_NAMES[tensor] + ".weight", factors


def gguf_tensors(model, p: ArchParams):
    """(GGUF name, float32 numpy array) for every weight, in llama.cpp's names and layout."""
    import gguf
    import torch

    arch_enum = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == p.arch)
    names = gguf.get_tensor_name_map(arch_enum, p.n_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and p.tied:
            continue
        stem, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise UserError(f"GGUF export: no GGUF name for the weight '{hf_name}'", CONVERT_HINT)
        data = tensor.detach().to(torch.float32).cpu().numpy()
        yield f"{gguf_name}.{suffix}", _transform(gguf_name, hf_name, data, p)
    yield from extra_tensors(p)
