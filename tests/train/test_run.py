"""`tunewright train` end to end on a tiny model: run directory, methods, resume, stock PEFT, NaN guard."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import assert_same_adapter, kill_at_checkpoint_then_resume, write_jsonl

from tunewright.config import load_config
from tunewright.train import train

CLI = [sys.executable, "-m", "tunewright.cli"]


def _rows(n: int, offset: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Repeat the word {w}."}, {"role": "assistant", "content": f"{w} {w} {w}"}]}
            for w in (["apple", "river", "stone", "cloud", "green", "tiger", "paper", "light"] * 20)[offset:offset + n]]


@pytest.fixture
def data(tmp_path) -> dict:
    return {"train": str(write_jsonl(tmp_path / "train.jsonl", _rows(48))),
            "validation": str(write_jsonl(tmp_path / "val.jsonl", _rows(8, offset=3)))}


def _cfg(model_dir, data, out, **sets):
    overrides = [f"data.validation={data['validation']}", "eval.after_train=false", "train.threads=1"]
    overrides += [f"{k.replace('__', '.')}={v}" for k, v in sets.items()]
    return load_config(model=str(model_dir), data__train=data["train"], output_dir=str(out), overrides=overrides)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_validation_loss_and_writes_the_run_directory(tiny_model_dir, data, tmp_path):
    run = tmp_path / "run"
    # full fine-tuning: a random tiny model learns this task fast only when its head can move
    result = train(_cfg(tiny_model_dir, data, run, train__max_steps=24, train__learning_rate=1e-2, train__eval_every=6, method="full"))
    rows = _metrics(run)
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(evals) == 4
    assert evals[-1] < evals[0] * 0.8, evals
    for key in ("step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"):
        assert key in rows[0]
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert "auto" not in json.dumps(resolved), "every auto must be resolved in config.yaml"
    report = json.loads((run / "data_report.json").read_text())
    assert report["train_examples"] == 48
    assert (run / "model" / "config.json").is_file() and (run / "loss_curve.png").stat().st_size > 1000
    assert result.summary["steps"] == 24 and result.summary["trained_tokens"] > 0


def test_stock_peft_loads_the_adapter_with_the_same_logits(tiny_model_dir, data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunewright.models import load_for_inference

    run = tmp_path / "run"
    train(_cfg(tiny_model_dir, data, run, train__max_steps=3, train__learning_rate=5e-2))
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run / "adapter").eval()
    ours = load_for_inference(str(run)).model
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 300]])
    with torch.no_grad():
        torch.testing.assert_close(stock(ids).logits, ours(ids).logits)
        assert not torch.allclose(stock(ids).logits, base(ids).logits), "the adapter must change the model"


@pytest.mark.parametrize("method", ["lora", "dora", "full", "freeze"])
def test_each_method_trains_what_it_should_and_nothing_else(tiny_model_dir, data, tmp_path, method):
    from transformers import AutoModelForCausalLM

    run = tmp_path / method
    result = train(_cfg(tiny_model_dir, data, run, method=method, train__max_steps=2, train__learning_rate=1e-2,
                        freeze__trainable_layers=1))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    n_total = sum(p.numel() for p in base.parameters())
    trainable = result.summary["trainable_params"]
    if method in ("lora", "dora"):
        adapter = run / "adapter"
        cfg = json.loads((adapter / "adapter_config.json").read_text())
        assert cfg["use_dora"] is (method == "dora")
        assert 0 < trainable < n_total * 0.5
        # LoRA r=16 on every linear layer of 2 blocks: (in + out) * r per linear layer (+ DoRA magnitudes)
        expected = 0
        for name, mod in base.named_modules():
            if isinstance(mod, torch.nn.Linear) and "lm_head" not in name:
                expected += 16 * (mod.in_features + mod.out_features) + (mod.out_features if method == "dora" else 0)
        assert trainable == expected
    else:
        tuned = AutoModelForCausalLM.from_pretrained(run / "model")
        changed = {n for (n, a), b in zip(base.named_parameters(), tuned.parameters()) if not torch.equal(a, b)}
        if method == "full":
            assert trainable == n_total and len(changed) > 10
        else:  # freeze: only the last block, the final norm and the (tied) head/embedding move
            assert changed and all(n.startswith(("model.layers.1.", "model.norm", "model.embed_tokens", "lm_head")) for n in changed), changed
            assert not any(n.startswith("model.layers.0.") for n in changed)


def test_qlora_without_cuda_fails_at_config_time_suggesting_lora(tiny_model_dir, data, tmp_path):
    out = subprocess.run(CLI + ["train", "--model", str(tiny_model_dir), "--data", data["train"], "--method", "qlora",
                                "--output", str(tmp_path / "q")], check=False, capture_output=True, text=True)
    assert out.returncode == 2
    assert "qlora" in out.stderr and "--method lora" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "q").exists()


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_model_dir, data, tmp_path):
    run = tmp_path / "nan"
    out = subprocess.run(CLI + ["train", "--model", str(tiny_model_dir), "--data", data["train"], "--output", str(run), "--method", "full",
                                "--set", "train.learning_rate=1e35", "--set", "train.max_steps=6", "--set", "train.save_every=1",
                                "--set", "train.max_grad_norm=1e38", "--set", "eval.after_train=false"], check=False, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "loss became" in out.stderr and "checkpoint" in out.stderr
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    assert ckpts, "the last good checkpoint is kept"
    assert not (run / "model").exists()


def test_an_existing_run_is_never_overwritten(tiny_model_dir, data, tmp_path):
    run = tmp_path / "run"
    train(_cfg(tiny_model_dir, data, run, train__max_steps=1))
    before = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    out = subprocess.run(CLI + ["train", "--model", str(tiny_model_dir), "--data", data["train"], "--output", str(run)], check=False, capture_output=True, text=True)
    assert out.returncode == 2 and "--resume" in out.stderr
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == before


def _train_cmd(model_dir, data, run):
    return CLI + ["train", "--model", str(model_dir), "--data", data["train"], "--output", str(run),
                  "--set", f"data.validation={data['validation']}", "--set", "train.max_steps=16", "--set", "train.save_every=4",
                  "--set", "train.eval_every=4", "--set", "train.learning_rate=1e-2", "--set", "lora.dropout=0.3",
                  "--set", "train.threads=1", "--set", "eval.after_train=false", "--set", "train.save_total_limit=5",
                  "--set", "train.precision=fp32"]  # exact comparison: auto is bf16 on avx512_bf16/amx_bf16 CPUs


def test_resume_after_sigkill_gives_the_same_adapter_as_an_uninterrupted_run(tiny_model_dir, data, tmp_path):

    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(tiny_model_dir, data, straight), check=True, capture_output=True)

    killed = tmp_path / "killed"
    kill_at_checkpoint_then_resume(_train_cmd(tiny_model_dir, data, killed), killed)
    assert_same_adapter(straight, killed)
    steps = [r["step"] for r in _metrics(killed)]
    assert steps == sorted(set(steps)) and steps[-1] == 16, "each step logged once"


def test_a_half_written_checkpoint_is_never_resumed_from(tmp_path):
    from tunewright.train.checkpoint import latest_checkpoint

    (tmp_path / "checkpoints" / "step-4").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-4" / "COMPLETE").write_text("ok")
    (tmp_path / "checkpoints" / ".tmp-step-8").mkdir()
    (tmp_path / "checkpoints" / "step-12").mkdir()  # no marker: interrupted
    assert latest_checkpoint(tmp_path).name == "step-4"


@pytest.mark.slow
def test_train_on_the_real_smollm2_for_a_few_steps(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    run = tmp_path / "smol"
    out = subprocess.run(CLI + ["train", "--data", str(repo / "examples/stdlib-qa/train.jsonl"), "--output", str(run),
                                "--set", "train.max_steps=2", "--set", "train.batch_size=4", "--set", "eval.after_train=false",
                                "--set", "data.validation_split=0.02"], check=False, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _metrics(run)
    assert len(rows) == 2 and all(r["loss"] == r["loss"] and r["loss"] < 10 for r in rows)
    assert "eval_loss" in rows[-1]
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]


def test_gradient_checkpointing_gives_the_same_adapter(tiny_model_dir, data, tmp_path):
    from safetensors.torch import load_file

    weights = {}
    for ckpt in (False, True):
        run = tmp_path / f"gc-{ckpt}"
        train(_cfg(tiny_model_dir, data, run, train__max_steps=2, train__learning_rate=1e-2, lora__dropout=0,
                   train__gradient_checkpointing=ckpt, train__precision="fp32"))  # compared to 1e-6: no bf16 rounding
        weights[ckpt] = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    for k in weights[False]:
        torch.testing.assert_close(weights[True][k], weights[False][k], atol=1e-6, rtol=1e-5)


def test_early_stopping_ends_the_run_when_validation_stops_improving(tiny_model_dir, data, tmp_path, monkeypatch):
    from tunewright.train import loop

    worse = iter([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7])
    monkeypatch.setattr(loop, "validation_metrics", lambda *a, **k: {"eval_loss": next(worse)})
    run = tmp_path / "es"
    result = train(_cfg(tiny_model_dir, data, run, train__max_steps=8, train__eval_every=1, train__save_every=1,
                        train__early_stopping_patience=2, train__best_metric="eval_loss"))
    assert result.summary["stopped_early"] and result.summary["steps"] == 3
    assert result.summary["best_eval_loss"] == 1.0
    assert result.summary["best_checkpoint"].endswith("step-1")
    assert (run / "checkpoints" / "step-1" / "COMPLETE").is_file(), "the best checkpoint survives rotation"
    from safetensors.torch import load_file

    best = load_file(str(run / "checkpoints" / "step-1" / "trainable.safetensors"))
    final = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    some_b = next(k for k in best if "lora_B" in k)
    final_key = next(k for k in final if some_b.split("base_model.model.")[-1].replace(".default", "") in k)
    torch.testing.assert_close(final[final_key], best[some_b], msg=lambda m: f"the adapter holds the best weights: {m}")
