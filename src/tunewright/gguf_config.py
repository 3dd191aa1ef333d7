"""The transformers config of a `.gguf` file, with what transformers' GGUF loader leaves out put back.

transformers reads a fixed list of metadata keys per architecture and fills the rest with the
config class's defaults, which belong to the biggest checkpoint of the family. A model trained
from such a config is not the model in the file. Measured on tiny models of each family:
- Qwen3: `head_dim` is not read, so it becomes 128 and the weights no longer fit (load error);
- Gemma 2/3: `query_pre_attn_scalar` becomes 256 whatever the head size (llama.cpp scales by the
  head size, hidden/heads for the 27B models); Gemma 2's soft-capping is not read; the sliding /
  full pattern of the layers is not read;
- Llama 3.x: the `rope_freqs` tensor (llama.cpp's form of Llama 3 rope scaling) is ignored, so the
  rope falls back to unscaled frequencies and every logit moves;
- every family: the rope.scaling keys (linear, YaRN) and Phi-3's LongRoPE factor tensors are ignored.
Each repair below reads the file's own metadata (with the `gguf` package) and only ever makes the
config agree with what llama.cpp computes from the same file.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from .errors import UserError

# llama.cpp's head-size rule for Gemma: 1/sqrt(hidden/heads) for the 27B models (by block count), else 1/sqrt(head_dim)
_GEMMA_27B_BLOCKS = {"gemma2": 46, "gemma3": 62}
# architectures whose rotary dimension is the whole head, so rope.dimension_count is the head size
_FULL_ROTARY = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3"}
LLAMA3_ORIGINAL_CONTEXT = 8192  # only the ratios to it matter: any value gives the same frequencies
# llama.cpp gives Phi-3's special tokens "strip the whitespace after me" when general.name contains phi3 / phi-3
PHI3_NAME = re.compile(r"phi-?3", re.IGNORECASE)
PHI3_UNSTRIPPED = ("<unk>", "<s>", "<|endoftext|>")  # llama.cpp's exceptions to "every special token rstrips"


def gguf_config(gguf_path: Path):
    """transformers' config for this GGUF file, repaired from the file's own metadata."""
    from gguf import GGUFReader
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    reader = GGUFReader(str(gguf_path))
    meta = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.")}
    arch = meta.get("general.architecture", "")
    _repair_head_dim(config, meta, arch)
    if arch in _GEMMA_27B_BLOCKS:
        _repair_gemma(config, meta, arch)
    tensors = {t.name: np.asarray(t.data, dtype=np.float64).reshape(-1) for t in reader.tensors if t.name.startswith("rope_")}
    scaling = _rope_scaling(meta, arch, tensors)
    if scaling:
        _set_rope_scaling(config, scaling)
    if "rope_freqs.weight" in tensors:
        _repair_llama3_rope(config, tensors["rope_freqs.weight"])
    return config


def _rope_scaling(meta: dict, arch: str, tensors: dict) -> dict | None:
    """Linear, YaRN or LongRoPE scaling in transformers' terms, from the GGUF rope.scaling keys."""
    def key(name: str):
        return meta.get(f"{arch}.rope.scaling.{name}")

    kind, factor, original = key("type"), key("factor"), key("original_context_length")
    if kind == "linear" and factor:
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn" and factor:
        scaling = {"rope_type": "yarn", "factor": float(factor), "original_max_position_embeddings": int(original)}
        for gguf_name, hf_name in (("yarn_attn_factor", "attention_factor"), ("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            if key(gguf_name) is not None:
                scaling[hf_name] = float(key(gguf_name))
        return scaling
    if kind == "longrope" and "rope_factors_long.weight" in tensors and "rope_factors_short.weight" in tensors:
        scaling = {"rope_type": "longrope", "long_factor": tensors["rope_factors_long.weight"].tolist(),
                   "short_factor": tensors["rope_factors_short.weight"].tolist(), "original_max_position_embeddings": int(original)}
        if key("attn_factor") is not None:
            scaling["attention_factor"] = float(key("attn_factor"))
        return scaling
    return None


def _set_rope_scaling(config, scaling: dict) -> None:
    """Gemma 3 scales only its full-attention layers' rope (llama.cpp: the sliding layers keep theta_swa)."""
    params = dict(config.rope_parameters or {})
    if "full_attention" in params:
        params["full_attention"] = {"rope_theta": params["full_attention"]["rope_theta"]} | scaling
    else:
        params = {k: v for k, v in params.items() if k in ("rope_theta", "partial_rotary_factor")} | scaling
    config.rope_parameters = params
    if "original_max_position_embeddings" in scaling and hasattr(config, "original_max_position_embeddings"):
        config.original_max_position_embeddings = scaling["original_max_position_embeddings"]


def _repair_head_dim(config, meta: dict, arch: str) -> None:
    head_dim = meta.get(f"{arch}.attention.key_length")
    if head_dim is None and arch in _FULL_ROTARY:
        head_dim = meta.get(f"{arch}.rope.dimension_count")
    if head_dim is not None and hasattr(config, "head_dim"):
        config.head_dim = int(head_dim)


def _repair_gemma(config, meta: dict, arch: str) -> None:
    """Attention scale, soft-capping and sliding-window layout as llama.cpp reads them."""
    if config.num_hidden_layers == _GEMMA_27B_BLOCKS[arch]:
        config.query_pre_attn_scalar = config.hidden_size // config.num_attention_heads
    else:
        config.query_pre_attn_scalar = config.head_dim
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if f"{arch}.{key}" in meta:
            setattr(config, key, float(meta[f"{arch}.{key}"]))
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list) and len(pattern) == config.num_hidden_layers and hasattr(config, "layer_types"):
        config.layer_types = ["sliding_attention" if sliding else "full_attention" for sliding in pattern]


def _repair_llama3_rope(config, divisors: np.ndarray) -> None:
    """Llama 3 rope parameters that give exactly the frequencies `rope_freqs` divides by."""
    params = dict(config.rope_parameters or {})
    theta = float(params.get("rope_theta") or getattr(config, "rope_theta", 10000.0))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    wavelen = 2 * math.pi * theta ** (np.arange(0, head_dim, 2) / head_dim)
    if len(divisors) != len(wavelen):
        raise UserError(f"GGUF file: rope_freqs has {len(divisors)} values for a head of {head_dim}",
                        "re-export the model; the file does not match its own metadata")
    if np.allclose(divisors, 1.0):
        return
    rope = _fit_llama3(wavelen, divisors, config.max_position_embeddings) | {"rope_type": "llama3", "rope_theta": theta}
    config.rope_parameters = rope
    if not _same_frequencies(config, wavelen, divisors):
        raise UserError("GGUF file: its rope_freqs tensor is not a Llama 3 rope scaling tunewright can express",
                        "train from the Hugging Face folder of this model instead of the .gguf file")


def _fit_llama3(wavelen: np.ndarray, divisors: np.ndarray, context: int) -> dict:
    """factor, low/high_freq_factor: unscaled below the high-frequency wavelength, / factor above the low one."""
    factor = float(divisors.max())
    smooth = (1 / divisors - 1 / factor) / (1 - 1 / factor)  # 1 unscaled, 0 fully scaled
    unscaled, scaled = np.isclose(smooth, 1.0, atol=1e-6), np.isclose(smooth, 0.0, atol=1e-6)
    medium = ~(unscaled | scaled)
    old = min(LLAMA3_ORIGINAL_CONTEXT, context // 2)  # transformers wants it below max_position_embeddings
    if medium.sum() >= 2:  # smooth = (old / wavelen - low) / (high - low): a line in 1 / wavelen
        slope, intercept = np.polyfit(1 / wavelen[medium], smooth[medium], 1)
        low = -intercept * old / slope
        high = low + old / slope
    else:  # any wavelengths in the gaps reproduce the same frequencies
        last_unscaled = wavelen[unscaled | medium].max() if (unscaled | medium).any() else wavelen.min() / 2
        first_scaled = wavelen[scaled].min() if scaled.any() else wavelen.max() * 2
        low_wavelen = math.sqrt(last_unscaled * first_scaled)
        low = old / low_wavelen
        if medium.any():
            w, s = float(wavelen[medium][0]), float(smooth[medium][0])
            high = low + (old / w - low) / s
        else:
            high = old / math.sqrt(wavelen[unscaled].max() * low_wavelen) if unscaled.any() else low * 2
    return {"factor": factor, "low_freq_factor": float(low), "high_freq_factor": float(high),
            "original_max_position_embeddings": old}


def _same_frequencies(config, wavelen: np.ndarray, divisors: np.ndarray) -> bool:
    """Check the fit with transformers' own Llama 3 rope code."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    wanted = (2 * math.pi / wavelen) / divisors
    return bool(np.allclose(inv_freq.double().numpy(), wanted, rtol=1e-5, atol=0))


def restore_phi3_rstrip(folder: Path, gguf_path: Path) -> bool:
    """Give the tokenizer transformers' GGUF loader rebuilt from `gguf_path` (saved in `folder`) the rule llama.cpp
    applies to a GGUF named phi3: every added token strips the whitespace after it, <unk>, <s>, <|endoftext|> aside,
    as Phi-3's own tokenizer.json has it. The loader keeps no rstrip, so training from a Phi-3 GGUF would otherwise
    put a newline token after each chat token that neither Phi-3 nor llama.cpp has. True when it changed a token."""
    import json

    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields.get("general.name")
    path = folder / "tokenizer.json"
    if field is None or not PHI3_NAME.search(str(field.contents())) or not path.is_file():
        return False
    data = json.loads(path.read_text(encoding="utf-8"))
    changed = False
    for token in data.get("added_tokens", []):
        strip = token["content"] not in PHI3_UNSTRIPPED
        changed |= token.get("rstrip") != strip
        token["rstrip"] = strip
    if changed:
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return changed
