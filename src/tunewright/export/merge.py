"""Step 7, deploy: turn a run folder into one standalone Hugging Face model folder.

An adapter is merged into its base in fp32 (never into a rounded low-precision copy), so the
merged model gives the adapter-on-base logits within float tolerance. The folder holds
safetensors weights, the tokenizer with its chat template, and a generation config whose
`eos_token_id` lists every end-of-turn token, so stock `generate()` stops where chat should.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..data.templates import end_of_turn_ids
from ..errors import UserError
from ..models import describe_run, load_model, load_tokenizer, local_model_dir, resolve_model


@dataclass
class MergedModel:
    """What `merge` wrote and what the user should know about it."""

    path: Path
    base: str | None
    merged_adapter: bool
    notes: list[str] = field(default_factory=list)


def describe_or_fail(run: str) -> dict:
    """The run's result folder (adapter or model), or a UserError saying what a run folder holds."""
    info = describe_run(run)
    if info is None:
        raise UserError(
            f"'{run}' is not a run folder: it has neither adapter/adapter_config.json nor model/config.json",
            "pass the output_dir of a finished `tunewright train` run (or an adapter folder)",
        )
    return info


def prepare_output(output: str | os.PathLike) -> Path:
    """The output path, refusing to overwrite a folder that already holds files."""
    out = Path(output).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output '{out}' already exists and is not empty", "choose a new --output path or delete the old one")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def publish(tmp: Path, out: Path) -> None:
    """Move a finished temporary folder into place, so a crash never leaves a half-written model."""
    if out.exists():
        out.rmdir()  # prepare_output guaranteed it is empty
    os.replace(tmp, out)


def base_notes(base: str | None, run: str) -> list[str]:
    """Say when the weights were dequantized before merging: the merged model carries that rounding."""
    notes = []
    if base:
        try:
            source = resolve_model(base)
        except UserError:
            source = None
        if source is not None and source.kind == "gguf":
            notes.append(f"base '{base}' is a GGUF file ({Path(source.path).name}): dequantized to fp32 before merging; "
                         "the merged weights keep its quantization rounding")
    method = _run_method(run)
    if method == "qlora":
        notes.append("the adapter was trained on a 4-bit quantized base: merged into the full-precision base instead, "
                     "so outputs can differ slightly from the 4-bit model used during training")
    return notes


def _run_method(run: str) -> str | None:
    cfg = Path(run) / "config.yaml"
    if not cfg.is_file():
        return None
    import yaml

    return (yaml.safe_load(cfg.read_text()) or {}).get("method")


def load_merged(info: dict):
    """The adapter merged into an fp32 copy of its base, plus the tokenizer to ship with it."""
    from peft import PeftModel

    adapter = Path(info["adapter"])
    base_dir = local_model_dir(info["base"])
    tokenizer = load_tokenizer(str(adapter) if (adapter / "tokenizer_config.json").is_file() else base_dir)
    base = load_model(base_dir)
    if len(tokenizer) > base.get_input_embeddings().num_embeddings:
        base.resize_token_embeddings(len(tokenizer))  # the run added tokens (e.g. a pad token)
    model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    model.eval()
    return model, tokenizer


def generation_config_for(model, tokenizer):
    """The model's generation config with EOS listing every end-of-turn id and a pad id set."""
    from transformers import GenerationConfig

    gen = model.generation_config if model.generation_config is not None else GenerationConfig()
    stop_ids = sorted(end_of_turn_ids(tokenizer))
    if stop_ids:
        gen.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
    if tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id
    return gen


def save_standalone(model, tokenizer, folder: Path, provenance: dict) -> None:
    """Write weights (safetensors), tokenizer + chat template, generation config and where they came from."""
    model.generation_config = generation_config_for(model, tokenizer)
    # a GGUF-loaded base may still carry transformers' "quantized" marker although its weights are floats
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "tunewright_export.json").write_text(json.dumps(provenance, indent=2) + "\n")


def copy_full_model(model_dir: str, out: Path, provenance: dict) -> None:
    """A full fine-tune is already standalone: copy it, making sure tokenizer and generation config are complete."""
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        tokenizer = load_tokenizer(model_dir)
        model = load_model(model_dir)
        save_standalone(model, tokenizer, tmp, provenance)
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def merge(run: str, output: str, quiet: bool = False) -> MergedModel:
    """Merge a run's adapter into its base and save a standalone model folder at `output`."""
    info = describe_or_fail(run)
    out = prepare_output(output)
    provenance = {"run": str(Path(run).resolve()), "base": info.get("base")}
    if "model" in info:
        result = MergedModel(out, info.get("base"), False, ["full fine-tune: no adapter to merge, copied the model"])
        copy_full_model(info["model"], out, provenance | {"kind": "full"})
        return _announce(result, quiet)
    if not info.get("base"):
        raise UserError(f"run '{run}': cannot tell which base model the adapter belongs to",
                        "add `model: <base>` to the run's config.yaml")
    result = MergedModel(out, info["base"], True, base_notes(info["base"], run))
    model, tokenizer = load_merged(info)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        save_standalone(model, tokenizer, tmp, provenance | {"kind": "merged-adapter", "adapter": info["adapter"]})
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _announce(result, quiet)


def _announce(result: MergedModel, quiet: bool) -> MergedModel:
    if not quiet:
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        what = "merged adapter into base" if result.merged_adapter else "copied full model"
        print(f"{what}: {result.path}")
    return result
