"""benchmarks/average_adapters.py: the soup of N LoRA adapters is the mean of their deltas, loaded by stock PEFT."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parents[2]


def _adapter_run(model_dir: Path, run: Path, seed: int) -> dict[str, torch.Tensor]:
    """A run folder with a LoRA adapter whose B is non-zero; returns the merged weights it gives."""
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    model.save_pretrained(run / "adapter")
    (run / "config.yaml").write_text(yaml.safe_dump({"lora": {"r": 2, "alpha": 4}}))
    return {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}


@pytest.mark.parametrize("n", [2, 3])
def test_the_averaged_adapter_adds_the_mean_of_the_deltas(tiny_model_dir, tmp_path, n):
    base = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict().items()}
    merged = [_adapter_run(tiny_model_dir, tmp_path / f"run{i}", seed=i) for i in range(n)]
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "average_adapters.py"),
                    *(str(tmp_path / f"run{i}") for i in range(n)), "--output", str(tmp_path / "soup")], check=True)
    soup = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "soup" / "adapter")
    got = soup.merge_and_unload().state_dict()
    changed = [k for k in base if not torch.equal(merged[0][k], base[k])]
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)
    for key, loaded in base.items():
        expected = loaded + sum(m[key] - loaded for m in merged) / n
        torch.testing.assert_close(got[key], expected, rtol=1e-5, atol=1e-6)
    assert yaml.safe_load((tmp_path / "soup" / "config.yaml").read_text())["lora"] == {"r": 2 * n, "alpha": 4 * n}
