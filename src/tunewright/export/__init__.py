"""Step 7, deploy: merged Hugging Face folders, GGUF files for llama.cpp/Ollama."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError
from .merge import MergedModel, merge

FORMATS = ("hf", "gguf")

__all__ = ["FORMATS", "MergedModel", "export", "merge"]


def _load_exportable(run: str):
    """(model, tokenizer, name, folder the weights came from) for a run, adapter folder, or plain model spec."""
    from ..models import describe_run, load_model, load_tokenizer, local_model_dir
    from .merge import base_notes, load_merged

    info = describe_run(run)
    name = Path(run).name if info else Path(run).stem
    if info and "adapter" in info:
        for note in base_notes(info["base"], run):
            print(f"note: {note}", file=sys.stderr)
        model, tokenizer = load_merged(info)
        return model, tokenizer, name, local_model_dir(info["base"])
    model_dir = info["model"] if info else local_model_dir(run)
    return load_model(model_dir), load_tokenizer(model_dir), name, model_dir


def _gguf_target(output: str, name: str, quant: str) -> Path:
    out = Path(output).expanduser()
    path = out if out.suffix == ".gguf" else out / f"{name}-{quant}.gguf"
    if path.exists():
        raise UserError(f"output '{path}' already exists", "choose a new --output path or delete the old file")
    return path


def export(run: str, fmt: str = "hf", quant: str = "f16", output: str | None = None) -> Path:
    """Export a run as a standalone HF folder (`hf`) or a GGUF file plus Ollama Modelfile (`gguf`)."""
    from .gguf import QUANT_TYPES, write_gguf
    from .gguf_vocab import source_gguf_pre
    from .ollama import write_modelfile

    if not output:
        raise UserError("export needs an output path", "pass --output PATH")
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'", f"use one of: {', '.join(FORMATS)}")
    if quant not in QUANT_TYPES:
        raise UserError(f"unknown --quant '{quant}'", f"use one of: {', '.join(QUANT_TYPES)}")
    if fmt == "hf":
        if quant == "q8_0":
            raise UserError("--quant q8_0 is a GGUF type", "use --format gguf, or drop --quant for an fp32 HF folder")
        return merge(run, output).path
    model, tokenizer, name, weights_dir = _load_exportable(run)
    path = _gguf_target(output, name, quant)
    written = write_gguf(model, tokenizer, path, quant, name=name, source_pre=source_gguf_pre(weights_dir))
    modelfile = write_modelfile(path, written["chat_template"], written["stop_tokens"], tokenizer)
    print(f"wrote {path} ({quant}, {path.stat().st_size / 2**20:.1f} MiB) and {modelfile}")
    print(f"run it with: cd {path.parent} && ollama create {name} -f Modelfile && ollama run {name}")
    return path
