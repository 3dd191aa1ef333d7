"""Checks before any work: what `train --resume` accepts, an unwritable output_dir, and the QLoRA loading call."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from helpers import write_jsonl

from tunewright.config import load_config
from tunewright.errors import UserError
from tunewright.train import train
from tunewright.train.guards import merge_resume_request

CLI = [sys.executable, "-m", "tunewright.cli"]


def _rows(n: int) -> list[dict]:
    words = ["apple", "river", "stone", "cloud", "green", "tiger", "paper", "light"]
    return [{"messages": [{"role": "user", "content": f"Repeat {words[i % 8]}."}, {"role": "assistant", "content": words[i % 8]}]}
            for i in range(n)]


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory) -> dict:
    """A 4-step LoRA run with a checkpoint at step 2 (trained once per module; tests copy it before changing it)."""
    root = tmp_path_factory.mktemp("guards")
    data = str(write_jsonl(root / "train.jsonl", _rows(16)))
    run = root / "run"
    cfg = load_config(model=str(tiny_model_dir), data__train=data, output_dir=str(run),
                      overrides=["train.max_steps=4", "train.save_every=2", "train.threads=1", "eval.after_train=false"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEWRIGHT_TOKENIZED_CACHE", str(root / "tokcache"))
        train(cfg)
    return {"run": run, "data": data, "model": str(tiny_model_dir)}


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_refuses_a_changed_model_method_or_schedule_and_lists_each_difference(finished_run):
    run = finished_run["run"]
    before = _snapshot(run)
    out = subprocess.run(CLI + ["train", "--model", "smollm2-135m-instruct", "--data", finished_run["data"], "--method", "full",
                                "--output", str(run), "--set", "train.max_steps=2", "--set", "train.learning_rate=0.5",
                                "--set", "train.threads=1", "--resume"], check=False, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    err = " ".join(out.stderr.split())  # rich wraps long lines
    assert f"model: '{finished_run['model']}' -> 'smollm2-135m-instruct'" in err
    assert "method: 'lora' -> 'full'" in err
    assert "train.max_steps: 4 -> 2" in err and "train.learning_rate: 0.0002 -> 0.5" in err
    assert "train.threads" not in err, "a harmless key is not a conflict"
    assert "Traceback" not in out.stderr
    assert _snapshot(run) == before, "a refused resume changes nothing in the run directory"


def test_resume_may_extend_max_steps_and_change_harmless_keys_and_then_trains_to_the_new_end(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run["run"], run)
    out = subprocess.run(CLI + ["train", "--model", finished_run["model"], "--data", finished_run["data"], "--output", str(run),
                                "--set", "train.max_steps=6", "--set", "train.precision=auto", "--set", "data.format=auto",
                                "--set", "train.log_every=2", "--set", "train.threads=1", "--set", "eval.after_train=false",
                                "--resume"], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "learning-rate schedule" in " ".join(out.stderr.split()), "extending warns that the schedule is recomputed"
    steps = [yaml.safe_load(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 6 and steps == sorted(set(steps))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 6 and saved["train"]["log_every"] == 2
    assert saved["data"]["format"] == "messages", "auto in the request keeps the resolved value"


def _saved(**train_keys):
    return load_config(model="m", data__train="t.jsonl", overrides=["train.epochs=3", "train.learning_rate=2e-4",
                                                                    "train.precision=fp32", "lora.r=16"] +
                       [f"train.{k}={v}" for k, v in train_keys.items()])


def test_merge_rules_auto_harmless_extension_and_refusals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = _saved()
    same_file = load_config(model="m", data__train=str(tmp_path / "t.jsonl"), overrides=["train.precision=auto", "eval.limit=5"])
    merged = merge_resume_request(same_file, saved)
    assert merged.train.precision == "fp32" and merged.eval.limit == 5 and merged.data.train == "t.jsonl"
    assert merge_resume_request(load_config(overrides=["train.epochs=5"]), saved).train.epochs == 5
    with pytest.raises(UserError, match=r"train.epochs: 3.0 -> 2.0"):
        merge_resume_request(load_config(overrides=["train.epochs=2"]), saved)
    with pytest.raises(UserError, match=r"lora.r: 16 -> 8"):
        merge_resume_request(load_config(overrides=["lora.r=8"]), saved)
    assert merge_resume_request(load_config(), saved) == saved, "nothing given: the run's own settings"


def test_a_run_folder_from_before_best_metric_resumes_choosing_by_the_loss(tmp_path):
    from tunewright.train.guards import reconcile_resume

    old = {"model": "m", "data": {"train": "t.jsonl"}, "train": {"epochs": 3.0, "precision": "fp32"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert reconcile_resume(load_config(), tmp_path)[0].train.best_metric == "eval_loss"  # its trainer_state holds a loss
    new = {**old, "train": {**old["train"], "best_metric": "eval_exact_match"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(new))
    assert reconcile_resume(load_config(), tmp_path)[0].train.best_metric == "eval_exact_match"


# --- item 10: output_dir must be writable, checked before any tokenizing ---------------------------------------------


def _train_into(output: str, model: str, data: str, cache: Path):
    env = os.environ | {"TUNEWRIGHT_TOKENIZED_CACHE": str(cache)}
    return subprocess.run(CLI + ["train", "--model", model, "--data", data, "--output", output, "--set", "train.threads=1"], check=False,
                          capture_output=True, text=True, env=env)


def test_an_output_dir_under_a_regular_file_exits_2_before_tokenizing(tiny_model_dir, tmp_path):
    data = str(write_jsonl(tmp_path / "train.jsonl", _rows(8)))
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    out = _train_into(str(blocker / "run"), str(tiny_model_dir), data, tmp_path / "tokcache")
    assert out.returncode == 2, out.stderr
    assert "notes.txt" in out.stderr and "not a folder" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "tokcache").exists(), "refused before tokenizing"
    assert blocker.read_text() == "keep me"


def _unwritable_as_root() -> Path | None:
    """sysfs refuses new files even to root (chmod does not stop root): a folder there is truly unwritable."""
    try:
        tempfile.TemporaryFile(dir="/sys").close()
    except OSError:
        return Path("/sys/tunewright-run")
    return None


def test_an_unwritable_output_dir_exits_2_before_tokenizing(tiny_model_dir, tmp_path):
    data = str(write_jsonl(tmp_path / "train.jsonl", _rows(8)))
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        target = locked / "run"
    else:
        target = _unwritable_as_root()
        if target is None:
            pytest.skip("running as root and /sys accepts writes: no folder here refuses root's writes")
    out = _train_into(str(target), str(tiny_model_dir), data, tmp_path / "tokcache")
    assert out.returncode == 2, out.stderr
    assert "not writable" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "tokcache").exists(), "refused before tokenizing"


# --- item 13: QLoRA's 4-bit config reaches from_pretrained ---------------------------------------------------------


class _Loaded(Exception):
    """Stops the run at the loading call, once its arguments are captured."""


def test_qlora_passes_a_4bit_nf4_config_to_from_pretrained(tiny_model_dir, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    import tunewright.train.run as run_module

    captured = {}

    def fake_from_pretrained(*args, **kwargs):
        captured.update(kwargs)
        raise _Loaded

    monkeypatch.setattr(run_module, "check_method_available", lambda cfg: None)  # the CUDA + bitsandbytes check
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    data = str(write_jsonl(tmp_path / "train.jsonl", _rows(8)))
    cfg = load_config(model=str(tiny_model_dir), method="qlora", data__train=data, output_dir=str(tmp_path / "run"),
                      overrides=["train.threads=1"])
    with pytest.raises(_Loaded):
        train(cfg)
    q = captured["quantization_config"]
    assert type(q).__name__ == "BitsAndBytesConfig"
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert captured["device_map"] == {"": 0}
