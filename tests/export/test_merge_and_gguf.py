"""merge and export: the merged folder and the GGUF file must reproduce adapter-on-base logits.

GGUF tolerances (documented in docs/deploy.md), as relative error ||Δlogits|| / ||logits||:
f32 is exact to float rounding (max |Δ| < 1e-5); f16 within 1%; q8_0 within 5%.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from run_folders import make_adapter_run, make_full_run

from tunewright.errors import UserError

TEXT = "<|im_start|>user\nWhat does os.path.join do?  It joins 2 paths, e.g. 'a/b'.<|im_end|>\n"
RELATIVE_TOLERANCE = {"f32": 1e-6, "f16": 0.01, "q8_0": 0.05}


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, tiny_model_dir) -> Path:
    return make_adapter_run(tmp_path_factory.mktemp("runs"), tiny_model_dir)


@pytest.fixture(scope="module")
def reference(adapter_run):
    """Adapter-on-base logits for TEXT, and the run's tokenizer."""
    from tunewright.models import load_for_inference

    loaded = load_for_inference(str(adapter_run))
    ids = torch.tensor([loaded.tokenizer(TEXT)["input_ids"]])
    with torch.no_grad():
        return ids, loaded.model(ids).logits, loaded.tokenizer


def test_merge_gives_adapter_on_base_logits(adapter_run, reference, tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from tunewright.export import merge

    out = merge(str(adapter_run), str(tmp_path / "merged")).path
    ids, ref_logits, _ = reference
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        logits = model(ids).logits
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        assert (base(ids).logits - ref_logits).abs().max() > 1e-2, "the adapter should change the logits"
    assert list(out.glob("*.safetensors")) and not (out / "adapter_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>" in tokenizer.chat_template
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])


def test_merge_of_full_run_copies_the_model(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from tunewright.export import merge

    run = make_full_run(tmp_path, tiny_model_dir)
    result = merge(str(run), str(tmp_path / "out"))
    assert not result.merged_adapter
    copied = AutoModelForCausalLM.from_pretrained(result.path)
    assert torch.equal(copied.model.norm.weight, AutoModelForCausalLM.from_pretrained(run / "model").model.norm.weight)


def test_merge_refuses_bad_input(tmp_path, adapter_run):
    from tunewright.export import merge

    with pytest.raises(UserError, match="not a run folder"):
        merge(str(tmp_path), str(tmp_path / "out"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        merge(str(adapter_run), str(tmp_path / "busy"))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
def test_gguf_round_trip(quant, adapter_run, reference, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunewright.export import export

    path = export(str(adapter_run), fmt="gguf", quant=quant, output=str(tmp_path / "gguf"))
    assert path.name == f"run-{quant}.gguf"
    ids, ref_logits, ref_tokenizer = reference
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    with torch.no_grad():
        logits = model(ids).logits
    error = relative_error(logits, ref_logits)
    assert error <= RELATIVE_TOLERANCE[quant], f"{quant}: relative logit error {error:.2e}"
    if quant == "f32":
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in (TEXT, "hello world  the quick brown fox jumps over 123 dogs!", "x = {'a': [1, 2]}\n\tdone"):
        assert tokenizer(text)["input_ids"] == ref_tokenizer(text)["input_ids"]
    assert tokenizer.chat_template == ref_tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"


def test_gguf_writes_an_ollama_modelfile(adapter_run, tmp_path):
    from tunewright.export import export

    path = export(str(adapter_run), fmt="gguf", quant="f16", output=str(tmp_path / "model.gguf"))
    assert path == tmp_path / "model.gguf"
    modelfile = (tmp_path / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n")
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile


def test_gguf_round_trip_llama3_tokenizer(tiny_llama3_dir, tmp_path):
    """A tokenizer that adds BOS and ends turns with <|eot_id|> survives the trip too."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunewright.export import export

    path = export(str(tiny_llama3_dir), fmt="gguf", quant="f32", output=str(tmp_path))
    ref_tokenizer = AutoTokenizer.from_pretrained(tiny_llama3_dir)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text = "<|start_header_id|>user<|end_header_id|>\n\nhello world<|eot_id|>"
    assert tokenizer(text)["input_ids"] == ref_tokenizer(text)["input_ids"]
    ids = torch.tensor([ref_tokenizer(text)["input_ids"]])
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(tiny_llama3_dir)(ids).logits
        got = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)(ids).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert 'PARAMETER stop "<|eot_id|>"' in (tmp_path / "Modelfile").read_text()


def test_gguf_refuses_unsupported_architecture(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tunewright.export import export

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with pytest.raises(UserError, match="supported: gemma2, gemma3_text, llama, mistral, phi3, qwen2, qwen3"):
        export(str(folder), fmt="gguf", quant="f16", output=str(tmp_path / "out"))


def test_export_command_line(adapter_run, tmp_path):
    from typer.testing import CliRunner

    from tunewright.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["export", str(adapter_run), "--format", "hf", "--output", str(tmp_path / "hf")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "hf" / "config.json").is_file()
    bad = runner.invoke(app, ["export", str(adapter_run), "--format", "onnx", "--output", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown export format" in bad.output
    q8_hf = runner.invoke(app, ["export", str(adapter_run), "--format", "hf", "--quant", "q8_0", "--output", str(tmp_path / "y")])
    assert q8_hf.exit_code == 2


def test_merge_says_when_the_base_was_dequantized(tmp_path):
    from tunewright.export.merge import base_notes

    gguf_file = tmp_path / "base.Q4_1.gguf"
    gguf_file.write_bytes(b"GGUF")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": str(gguf_file), "method": "qlora"}))
    notes = base_notes(str(gguf_file), str(run))
    assert any("dequantized to fp32" in n for n in notes)
    assert any("4-bit" in n for n in notes)
