"""The job runner's view of a run: the step count in its events is the trainer's own."""
from __future__ import annotations

import json

import pytest

from tunewright.config import load_config, save_config
from tunewright.serve.jobs_runner import _total_steps, job_config
from tunewright.train.hparams import total_steps


@pytest.mark.parametrize("sets, examples", [
    (["train.epochs=1.5", "train.batch_size=4"], 10),
    (["train.epochs=3", "train.batch_size=8"], 3),
    (["train.max_steps=7", "train.batch_size=2"], 100),
])
def test_total_steps_of_a_run_is_what_the_trainer_counts(tmp_path, sets, examples):
    cfg = load_config(overrides=sets)
    save_config(cfg, tmp_path / "config.yaml")
    (tmp_path / "data_report.json").write_text(json.dumps({"train_examples": examples}))
    assert _total_steps(tmp_path) == total_steps(cfg, examples)


def test_total_steps_is_unknown_until_the_trainer_has_written_the_run(tmp_path):
    assert _total_steps(tmp_path) is None
    (tmp_path / "config.yaml").write_text("train:\n  epochs: 2\n  batch_size: 4\n")
    assert _total_steps(tmp_path) is None  # no data report yet


def test_job_settings_are_set_as_nested_keys():
    job = {"base_spec": "m", "seed": 3, "hyperparameters": {"n_epochs": 2},
           "extras": {"settings": {"train.max_steps": 5, "lora.r": 4}}}
    config = job_config(job, "t.jsonl", None, None)
    assert config["train"] == {"seed": 3, "epochs": 2, "max_steps": 5} and config["lora"] == {"r": 4}
