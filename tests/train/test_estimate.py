"""`tunewright estimate`: counts without loading weights, and bad sizes are user errors."""
from __future__ import annotations

import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM

from tunewright.train.estimate import estimate, parse_memory


def test_parameter_count_matches_the_real_model_and_checkpointing_saves_memory(tiny_model_dir):
    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    out = estimate(str(tiny_model_dir), method="lora", seq_len=512)
    assert out["parameters"] == real
    assert out["with_checkpointing"]["activations"] < out["estimate"]["activations"]
    full = estimate(str(tiny_model_dir), method="full", seq_len=512)
    assert full["estimate"]["weights_and_optimizer"] > out["estimate"]["weights_and_optimizer"]


def test_memory_sizes_parse_and_bad_ones_exit_2(tiny_model_dir):
    assert parse_memory("16GB") == 16 * 1024**3 and parse_memory("512MiB") == 512 * 1024**2
    run = subprocess.run([sys.executable, "-m", "tunewright.cli", "estimate", "--model", str(tiny_model_dir), "--gpu-memory", "16XB"], check=False,
                         capture_output=True, text=True)
    assert run.returncode == 2 and "not a size" in run.stderr and "Traceback" not in run.stderr


def _no_weight_loading(monkeypatch):
    """Any attempt to load weights (or dequantize a GGUF) fails the test."""
    import tunewright.models

    def refuse(*args, **kwargs):
        raise AssertionError("estimate loaded weights")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(tunewright.models, "_materialize_gguf", refuse)


def test_estimate_reads_only_the_config_of_a_folder(tiny_model_dir, monkeypatch):
    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    _no_weight_loading(monkeypatch)
    assert estimate(str(tiny_model_dir), method="full")["parameters"] == real


def test_estimate_of_a_previous_run_reads_its_base_or_model_config(tiny_model_dir, tmp_path, monkeypatch):
    """`--model runs/sft` trains on that run's model, so estimate sizes the same architecture, loading nothing."""
    import json
    import shutil

    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    lora_run = tmp_path / "lora-run"
    (lora_run / "adapter").mkdir(parents=True)
    (lora_run / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    (lora_run / "config.yaml").write_text(f"model: {tiny_model_dir}\n")
    full_run = tmp_path / "full-run"
    (full_run / "model").mkdir(parents=True)
    shutil.copy(tiny_model_dir / "config.json", full_run / "model" / "config.json")
    _no_weight_loading(monkeypatch)
    assert estimate(str(lora_run), method="lora")["parameters"] == real
    assert estimate(str(full_run), method="full")["parameters"] == real


def test_estimate_reads_only_the_metadata_of_a_gguf_file(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from tunewright.export.gguf import write_gguf

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    path = write_gguf(model, AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path / "tiny.gguf", "f32", "tiny")["path"]
    _no_weight_loading(monkeypatch)
    assert estimate(str(path), method="lora")["parameters"] == sum(p.numel() for p in model.parameters())


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("method,r", [("lora", 8), ("lora", 16), ("dora", 8)])
def test_lora_trainable_count_equals_peft_for_the_given_rank(tiny_model_dir, method, r):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=r, target_modules="all-linear", use_dora=method == "dora", task_type="CAUSAL_LM"))
    out = estimate(str(tiny_model_dir), method=method, overrides=[f"lora.r={r}"])
    assert out["estimate"]["trainable_params"] == _trainable(model)


def test_lora_target_modules_are_honoured(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    out = estimate(str(tiny_model_dir), method="lora", overrides=["lora.r=4", "lora.target_modules=[q_proj, v_proj]"])
    assert out["estimate"]["trainable_params"] == _trainable(model)


@pytest.mark.parametrize("layers", [0, 1])
def test_freeze_counts_only_the_last_blocks_norm_and_head(tiny_model_dir, layers):
    from tunewright.config import load_config
    from tunewright.train.methods import apply_method

    model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                         load_config(method="freeze", overrides=[f"freeze.trainable_layers={layers}"]))
    out = estimate(str(tiny_model_dir), method="freeze", overrides=[f"freeze.trainable_layers={layers}"])
    assert out["estimate"]["trainable_params"] == _trainable(model) < out["parameters"]
    full = estimate(str(tiny_model_dir), method="full")
    assert out["estimate"]["weights_and_optimizer"] < full["estimate"]["weights_and_optimizer"]


def test_estimate_cli_takes_set_overrides(tiny_model_dir):
    run = subprocess.run([sys.executable, "-m", "tunewright.cli", "estimate", "--model", str(tiny_model_dir), "--set", "lora.r=2"], check=False,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    bad = subprocess.run([sys.executable, "-m", "tunewright.cli", "estimate", "--model", str(tiny_model_dir), "--set", "lora.rank=2"], check=False,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "lora.r" in bad.stderr and "Traceback" not in bad.stderr
