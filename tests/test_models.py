"""`model:` may be a previous run folder: SFT -> a second run (e.g. DPO) in two commands.

The second run trains on the SFT model (adapter merged into its base), its adapter names a base folder
stock PEFT can load, and chat/merge of the second run give the model it trained.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import CHATML_TEMPLATE, write_jsonl

from tunewright.config import load_config
from tunewright.train import train

CLI = [sys.executable, "-m", "tunewright.cli"]
IDS = torch.tensor([[5, 17, 42, 99, 7, 300, 12, 64]])
# the base's ChatML with a marker, so the test can tell the SFT run's template from the base model's
SFT_TEMPLATE = CHATML_TEMPLATE.replace("'<|im_start|>' + message['role'] + '\\n'", "'<|im_start|>' + message['role'] + ' (sft)\\n'")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """The merged SFT base goes under this test's own tunewright cache."""
    monkeypatch.setenv("TUNEWRIGHT_HOME", str(tmp_path / "home"))


@pytest.fixture
def data(tmp_path) -> str:
    rows = [{"messages": [{"role": "user", "content": f"Repeat the word {w}."}, {"role": "assistant", "content": f"{w} {w} {w}"}]}
            for w in ["apple", "river", "stone", "cloud", "green", "tiger", "paper", "light"] * 2]
    return str(write_jsonl(tmp_path / "train.jsonl", rows))


def _train(model, data, out, resume: bool = False, **sets):
    overrides = ["eval.after_train=false", "train.threads=1", "train.precision=fp32", "train.max_steps=2",
                 "train.learning_rate=5e-2", "train.batch_size=4"]
    overrides += [f"{k.replace('__', '.')}={v}" for k, v in sets.items()]
    return train(load_config(model=str(model), data__train=data, output_dir=str(out), overrides=overrides), resume=resume)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IDS).logits


def test_a_run_started_from_a_lora_run_trains_on_the_merged_sft_model(tiny_model_dir, data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunewright.models import load_for_inference, local_model_dir

    sft = _train(tiny_model_dir, data, tmp_path / "sft", chat_template=json.dumps(SFT_TEMPLATE))
    sft_logits = _logits(sft.model)  # the SFT adapter on its base, as the SFT run left it
    second = _train(tmp_path / "sft", data, tmp_path / "second")

    with second.model.disable_adapter():  # the new run's starting point (and a DPO run's reference)
        torch.testing.assert_close(_logits(second.model), sft_logits, atol=1e-5, rtol=0)
    trained = _logits(second.model)
    assert (trained - sft_logits).abs().max() > 1e-3, "the second run must have trained its own adapter"

    adapter = tmp_path / "second" / "adapter"
    base_dir = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base_dir).is_dir() and base_dir == local_model_dir(str(tmp_path / "sft"))
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter)
    torch.testing.assert_close(_logits(stock), trained, atol=1e-5, rtol=0)
    torch.testing.assert_close(_logits(load_for_inference(str(tmp_path / "second")).model), trained, atol=1e-5, rtol=0)

    assert yaml.safe_load((tmp_path / "second" / "config.yaml").read_text())["model"] == str(tmp_path / "sft")
    assert AutoTokenizer.from_pretrained(adapter).chat_template == SFT_TEMPLATE, "the SFT run's chat template carries over"

    merged = tmp_path / "merged"
    done = subprocess.run([*CLI, "merge", str(tmp_path / "second"), "--output", str(merged)], check=False, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(merged)), trained, atol=1e-5, rtol=0)


def test_resume_reloads_the_same_merged_base_without_rebuilding_it(tiny_model_dir, data, tmp_path):
    from tunewright.models import local_model_dir

    _train(tiny_model_dir, data, tmp_path / "sft")
    _train(tmp_path / "sft", data, tmp_path / "second", train__save_every=1)
    base_dir = Path(local_model_dir(str(tmp_path / "sft")))
    built = (base_dir / "model.safetensors").stat().st_mtime_ns
    _train(tmp_path / "sft", data, tmp_path / "second", train__max_steps=3, train__save_every=1, resume=True)
    assert (base_dir / "model.safetensors").stat().st_mtime_ns == built, "the merged base is built once, then reused"
    adapter_cfg = json.loads((tmp_path / "second" / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(base_dir)
    saved = yaml.safe_load((tmp_path / "second" / "config.yaml").read_text())
    assert saved["model"] == str(tmp_path / "sft") and saved["train"]["max_steps"] == 3
    steps = [json.loads(line)["step"] for line in (tmp_path / "second" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3], "the resumed run continues from step 2 on the same base"


def test_a_run_started_from_a_full_run_uses_its_model_folder(tiny_model_dir, data, tmp_path):
    from tunewright.models import local_model_dir

    full = _train(tiny_model_dir, data, tmp_path / "full", method="full", train__learning_rate="1e-3")
    assert local_model_dir(str(tmp_path / "full")) == str((tmp_path / "full" / "model").resolve())
    second = _train(tmp_path / "full", data, tmp_path / "second")
    with second.model.disable_adapter():
        torch.testing.assert_close(_logits(second.model), _logits(full.model), atol=1e-5, rtol=0)


def test_an_unfinished_run_folder_is_a_clear_error(tmp_path, data):
    run = tmp_path / "killed"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: smollm2-135m-instruct\n")
    done = subprocess.run([*CLI, "train", "--model", str(run), "--data", data, "--output", str(tmp_path / "next")], check=False,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "adapter/" in done.stderr and "model/" in done.stderr and "--resume" in done.stderr, done.stderr
