"""The paths users start from: `tunewright.train()`, train-then-evaluate, trackers, and `tunewright quickstart`.

Tiny real models and real subprocesses of the CLI; only the quickstart test uses the embedded SmolLM2,
for two steps and two evaluation examples.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import EXAMPLES, write_jsonl

import tunewright
from tunewright.config import load_config
from tunewright.evaluate import evaluate

CLI = [sys.executable, "-m", "tunewright.cli"]
STEPS = 3


@pytest.fixture
def data(tmp_path, chat_rows) -> dict:
    return {"train": str(write_jsonl(tmp_path / "train.jsonl", chat_rows[:32])),
            "validation": str(write_jsonl(tmp_path / "val.jsonl", chat_rows[32:]))}


def _overrides(data: dict, **sets) -> list[str]:
    base = {"data.validation": data["validation"], "train.max_steps": STEPS, "train.learning_rate": 5e-2,
            "train.threads": 1, "train.precision": "fp32", "eval.limit": 2, "eval.max_new_tokens": 4}
    base.update({k.replace("__", "."): v for k, v in sets.items()})
    return [f"{k}={v}" for k, v in base.items()]


def _cfg(model_dir, data, out, **sets):
    return load_config(model=str(model_dir), data__train=data["train"], output_dir=str(out), overrides=_overrides(data, **sets))


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_public_train_reads_a_yaml_config_and_writes_the_run_directory(tiny_model_dir, data, tmp_path):
    run = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "method": "lora", "output_dir": str(run),
        "data": {"train": data["train"], "validation": data["validation"]},
        "train": {"max_steps": STEPS, "threads": 1, "precision": "fp32", "learning_rate": 5e-2},
        "eval": {"after_train": False},
    }))
    result = tunewright.train(str(config))
    assert result.run_dir == run
    assert result.summary["steps"] == STEPS
    assert json.loads((run / "summary.json").read_text()) == result.summary
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert result.summary["final_train_loss"] == pytest.approx(rows[-1]["loss"])
    assert result.summary["final_eval_loss"] == pytest.approx(rows[-1]["eval_loss"])
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == STEPS
    assert result.eval_results is None and not (run / "eval").exists()  # eval.after_train=false was honoured


def test_public_train_stays_callable_after_the_train_subpackage_is_imported():
    # importing tunewright.train.* used to replace the function tunewright.train with the subpackage
    code = ("import tunewright, tunewright.workflow\n"
            "import tunewright.train.loop as loop\n"
            "tunewright.train('/no/such/config.yaml')\n")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert "not callable" not in out.stderr
    assert "UserError" in out.stderr and "/no/such/config.yaml" in out.stderr  # it reached load_config


def test_train_then_evaluates_against_the_base_by_default(tiny_model_dir, data, tmp_path):
    run = tmp_path / "run"
    result = tunewright.train(_cfg(tiny_model_dir, data, run))  # eval.after_train is true by default
    on_disk = json.loads((run / "eval" / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(result.eval_results))
    assert list(on_disk["sides"]) == ["base", "tuned"] and on_disk["n_examples"] == 2
    assert [e["prompt"] for e in on_disk["examples"]] == ["What is 32 plus 32?", "What is 33 plus 33?"]  # the validation set
    assert on_disk["settings"]["max_new_tokens"] == 4
    assert on_disk["comparison"]["loss"]["delta"] != 0.0  # three steps at lr 5e-2 moved the adapter
    report = (run / "eval" / "report.html").read_text()
    assert "loss-curve" in report and "What is 32 plus 32?" in report

    # the in-memory evaluation right after training equals evaluating the saved run from disk
    again = evaluate(str(run), data=[data["validation"]], limit=2, max_new_tokens=4, output_dir=tmp_path / "again")
    for side in ("base", "tuned"):
        assert again["metrics"][side]["loss"] == pytest.approx(on_disk["metrics"][side]["loss"], rel=1e-5)
        assert [e[f"{side}_answer"] for e in again["examples"]] == [e[f"{side}_answer"] for e in on_disk["examples"]]


def test_report_to_tensorboard_logs_the_same_loss_as_metrics_jsonl(tiny_model_dir, data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    tunewright.train(_cfg(tiny_model_dir, data, run, train__report_to="[tensorboard]", eval__after_train="false"))
    folders = {f.parent for f in run.rglob("events.out.tfevents.*")}
    scalars = {}
    for folder in folders:
        events = EventAccumulator(str(folder))
        events.Reload()
        if "loss" in events.Tags()["scalars"]:
            scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    assert scalars, f"no TensorBoard loss under {run}: {sorted(map(str, folders))}"
    rows = _metrics(run)
    assert scalars["loss"] == pytest.approx({r["step"]: r["loss"] for r in rows}, rel=1e-6)
    assert sorted(scalars["loss"]) == [1, 2, 3]
    assert scalars["eval_loss"] == pytest.approx({r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}, rel=1e-6)
    hparams = [yaml.safe_load(p.read_text()) for p in run.rglob("hparams.yml")]  # the resolved config, flattened
    assert len(hparams) == 1 and hparams[0]["train.max_steps"] == STEPS and hparams[0]["train.precision"] == "fp32"


def _missing_tracker() -> str:
    """A tracker accelerate knows but this environment lacks."""
    for name in ("wandb", "mlflow", "comet_ml", "aim", "dvclive", "swanlab", "trackio"):
        if importlib.util.find_spec(name) is None:
            return name
    pytest.skip("every tracker accelerate knows is installed here")


@pytest.mark.parametrize("tracker", ["no_such_tracker", "missing"])
def test_an_unknown_or_uninstalled_tracker_exits_2_before_anything_is_written(tiny_model_dir, data, tmp_path, tracker):
    tracker = _missing_tracker() if tracker == "missing" else tracker
    run = tmp_path / "run"
    cmd = CLI + ["train", "--model", str(tiny_model_dir), "--data", data["train"], "--output", str(run)]
    for item in _overrides(data, train__report_to=f"[{tracker}]"):
        cmd += ["--set", item]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "report_to" in out.stderr and tracker in out.stderr and "Traceback" not in out.stderr
    assert not (run / "metrics.jsonl").exists() and not (run / "adapter").exists()


def test_quickstart_defaults_stay_and_set_overrides_them():
    from tunewright.quickstart import quickstart_config

    default = quickstart_config("runs/q")
    assert (default.train.max_steps, default.eval.limit, default.eval.max_new_tokens) == (60, 40, 64)
    short = quickstart_config("runs/q", max_steps=2, overrides=["eval.limit=2", "eval.max_new_tokens=8"])
    assert (short.train.max_steps, short.eval.limit, short.eval.max_new_tokens) == (2, 2, 8)
    assert short.model == "smollm2-135m-instruct" and short.output_dir == "runs/q"


def test_quickstart_runs_the_whole_path_on_the_embedded_model(tmp_path):
    run = tmp_path / "quickstart"
    cmd = CLI + ["quickstart", "--output", str(run), "--steps", "2", "--set", "eval.limit=2",
                 "--set", "eval.max_new_tokens=8", "--set", "train.threads=1", "--set", "train.batch_size=4",
                 "--set", "data.validation_split=0.01"]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "quickstart finished" in out.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    results = json.loads((run / "eval" / "results.json").read_text())
    assert list(results["sides"]) == ["base", "tuned"] and results["n_examples"] == 2
    test_prompts = [json.loads(line)["messages"] for line in (EXAMPLES / "test.jsonl").read_text().splitlines()[:2]]
    assert [e["prompt"] for e in results["examples"]] == [next(m["content"] for m in ms if m["role"] == "user") for ms in test_prompts]
    assert all(0 < e["answer_tokens"]["base"] <= 8 for e in results["examples"])  # the real model answers
    assert (run / "eval" / "report.html").is_file()
