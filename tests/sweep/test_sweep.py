"""`tunewright sweep`: real `tunewright train` trials on the tiny model, Optuna pruning, the budget, the best run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import write_jsonl

from tunewright.config import load_config
from tunewright.errors import UserError
from tunewright.sweep import SearchSpace, parse_budget, run_sweep

CLI = [sys.executable, "-m", "tunewright.cli"]
WORDS = ["apple", "river", "stone", "cloud", "green", "tiger", "paper", "light"]


def _rows(n: int, offset: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Repeat the word {w}."}, {"role": "assistant", "content": f"{w} {w} {w}"}]}
            for w in (WORDS * (n // len(WORDS) + 2))[offset:offset + n]]


def _config(tmp_path: Path, model_dir: Path, n_train: int, method: str = "lora") -> Path:
    cfg = {"model": str(model_dir), "method": method,
           "data": {"train": str(write_jsonl(tmp_path / "train.jsonl", _rows(n_train))),
                    "validation": str(write_jsonl(tmp_path / "val.jsonl", _rows(8, offset=3)))},
           "train": {"precision": "fp32", "threads": 1}, "output_dir": str(tmp_path / "sweep")}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _steps_run(run: Path) -> int:
    return max(json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines())


def test_sweep_runs_two_tiny_trials_and_links_the_best(tiny_model_dir, tmp_path):
    config = _config(tmp_path, tiny_model_dir, n_train=32)
    out = subprocess.run(CLI + ["sweep", str(config), "--budget", "10m", "--trials", "2"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [t["number"] for t in record["trials"]] == [0, 1]
    first = record["trials"][0]  # `auto` goes first: what `tunewright train` would run, so the sweep never does worse
    resolved_first = yaml.safe_load((tmp_path / "sweep" / "trial-000" / "config.yaml").read_text())
    assert first["auto"] is True and first["params"]["learning_rate"] == resolved_first["train"]["learning_rate"]
    assert first["params"]["batch_size"] == resolved_first["train"]["batch_size"] and first["params"]["lora_r"] == 16
    assert "0 auto" in out.stderr
    complete = [t for t in record["trials"] if t["state"] == "complete"]
    assert complete and all(t["state"] in ("complete", "pruned") for t in record["trials"])
    best = min(complete, key=lambda t: (t["value"], t["kept_eval_loss"]))  # ties of a coarse metric: the lower loss
    assert record["best"]["number"] == best["number"]
    resolved_metric = resolved_first["train"]["best_metric"]
    assert resolved_metric == "eval_exact_match" and all(t["metric"] == resolved_metric for t in complete)  # 3-word answers
    assert all(t["value"] == pytest.approx(1 - t["score"]) for t in complete)
    best_dir = (tmp_path / "sweep" / "best").resolve()
    assert best_dir == Path(best["run_dir"]).resolve()
    assert (best_dir / "adapter" / "adapter_config.json").is_file()
    resolved = yaml.safe_load((best_dir / "config.yaml").read_text())
    assert resolved["train"]["learning_rate"] == pytest.approx(best["params"]["learning_rate"])
    assert resolved["lora"]["r"] == best["params"]["lora_r"] and resolved["train"]["batch_size"] == best["params"]["batch_size"]
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 1000
    assert "sweep trials" in out.stderr and f"best: trial {best['number']}" in out.stdout


def test_a_planted_bad_trial_is_pruned_on_validation_loss_and_stopped(tiny_model_dir, tmp_path):
    config = _config(tmp_path, tiny_model_dir, n_train=400, method="full")
    cfg = load_config(config)
    good = {"learning_rate": 1e-2, "batch_size": 8, "epochs": 1}
    bad = {"learning_rate": 1e-7, "batch_size": 4, "epochs": 4}  # 400 steps: still running when its first eval is in
    result = run_sweep(cfg, 600, max_trials=2, space=SearchSpace(learning_rate=(1e-8, 1e-1)), first=[good, bad])
    first, second = result.trials
    assert first["state"] == "complete" and second["state"] == "pruned", result.trials
    assert second["last_eval_loss"] > first["evals"][0][1]  # worse than the good trial at the same half-epoch
    bad_run = Path(second["run_dir"])
    assert _steps_run(bad_run) < 400 and not (bad_run / "summary.json").exists()  # SIGTERM ended it early
    assert result.best["number"] == 0 and result.best_dir.resolve() == Path(first["run_dir"]).resolve()


def test_a_budget_too_short_for_any_trial_stops_it_and_says_so(tiny_model_dir, tmp_path):
    cfg = load_config(_config(tmp_path, tiny_model_dir, n_train=16))
    with pytest.raises(UserError, match="no trial finished within the budget"):
        run_sweep(cfg, 1.0)
    record = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [t["state"] for t in record["trials"]] == ["budget"]


def test_sweep_without_validation_data_is_a_user_error(tiny_model_dir, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "data": {"train": str(write_jsonl(tmp_path / "t.jsonl", _rows(8)))}}))
    out = subprocess.run(CLI + ["sweep", str(config), "--budget", "1m"], capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "sweep needs validation data" in out.stderr and "data.validation_split" in out.stderr


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("1h", 3600), ("1h30m", 5400), ("90s", 90), ("15", 900)])
def test_budgets_parse(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "30x", "0m", "-5m"])
def test_bad_budgets_are_user_errors(text):
    with pytest.raises(UserError, match="--budget"):
        parse_budget(text)


def _watch_rows(monkeypatch, watch, timed_rows, judge=True):
    """Feed (time, row) pairs to a Watch with time.monotonic() planted; the verdicts in order."""
    from tunewright.sweep import trial as trial_module

    verdicts = []
    for now, row in timed_rows:
        monkeypatch.setattr(trial_module.time, "monotonic", lambda now=now: now)
        verdicts.append(watch.verdict(row, judge=judge))
    return verdicts


def test_a_trial_whose_pace_overruns_the_budget_is_stopped_once_its_pace_is_known(monkeypatch):
    from tunewright.sweep.trial import Watch

    rows = [(100.0, {"step": 1, "epoch": 0.01}), (110.0, {"step": 2, "epoch": 0.03}), (120.0, {"step": 3, "epoch": 0.05})]
    # 20 s per 0.04 epoch: 4 epochs need ~33 min, the deadline is 10 min away
    slow = Watch(lambda epoch, loss: False, deadline=700.0, planned_epochs=4)
    assert _watch_rows(monkeypatch, slow, rows) == [None, None, "budget"]  # not before 15 s of logged steps
    assert "min after the budget" in slow.message and slow.epochs_done == 0.05
    fits = Watch(lambda epoch, loss: False, deadline=700.0, planned_epochs=0.5)  # ~4 min: fits
    assert _watch_rows(monkeypatch, fits, rows) == [None, None, None]
    patient = Watch(lambda epoch, loss: False, deadline=700.0, planned_epochs=4, trust_after_s=90.0)  # a 30m budget's 5%
    assert _watch_rows(monkeypatch, patient, rows) == [None, None, None]
    assert patient.pace.stepping() == (20.0, pytest.approx(0.04))
    finished = Watch(lambda epoch, loss: True, deadline=700.0, planned_epochs=4)  # exited already: only record
    assert _watch_rows(monkeypatch, finished, rows + [(130.0, {"step": 4, "epoch": 0.07, "eval_loss": 2.0})], judge=False) == [None] * 4
    assert finished.evals == [(0.07, 2.0)]


def test_a_first_trial_that_fails_ends_the_sweep_with_the_trainers_message(tmp_path):
    config = tmp_path / "c.yaml"
    data = {"train": str(write_jsonl(tmp_path / "t.jsonl", _rows(8))), "validation": str(write_jsonl(tmp_path / "v.jsonl", _rows(4)))}
    config.write_text(yaml.safe_dump({"model": str(tmp_path / "no-such-model"), "data": data, "output_dir": str(tmp_path / "sw")}))
    out = subprocess.run(CLI + ["sweep", str(config), "--budget", "30m"], capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "trial 0 failed" in out.stderr and "no-such-model" in out.stderr
    assert [t["state"] for t in json.loads((tmp_path / "sw" / "sweep.json").read_text())["trials"]] == ["failed"]


LAST_EVAL = {"step": 8, "eval_loss": 1.5, "eval_exact_match": 0.5}


@pytest.mark.parametrize(("summary", "kept"), [
    ({"stopped_early": False, "best_step": 4, "weights_step": 8, "best_eval_loss": 1.0, "final_eval_loss": 1.5}, 1.5),
    ({"stopped_early": False, "best_step": 4, "weights_step": 4, "best_eval_loss": 1.0, "final_eval_loss": 1.5}, 1.0),
    ({"stopped_early": True, "best_step": 4, "best_eval_loss": 1.0, "final_eval_loss": 1.5}, 1.0),
    # by exact match the error is 1 - the kept weights' exact match: the best evaluation's, or the last one's
    ({"stopped_early": True, "best_step": 4, "best_eval_loss": 1.0, "best_metric": "eval_exact_match", "best_score": 0.75}, 0.25),
    ({"stopped_early": False, "best_step": 4, "weights_step": 8, "best_eval_loss": 1.0, "best_metric": "eval_exact_match",
      "best_score": 0.75}, 0.5),
])
def test_a_trial_is_scored_by_its_best_metric_for_the_weights_it_kept(tmp_path, summary, kept):
    from tunewright.sweep.trial import kept_validation

    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert kept_validation(tmp_path, LAST_EVAL).error == pytest.approx(kept)


def test_the_auto_trial_is_told_to_tpe_when_it_lies_in_the_space_and_kept_out_when_not(tmp_path):
    from tunewright.sweep.study import make_study, tell_known
    from tunewright.sweep.trial import TrialOutcome

    study = make_study(0, [])
    done = TrialOutcome("complete", tmp_path, 60.0, evals=[(0.68, 1.2), (1.36, 0.86), (2.04, 0.8)], value=0.8)
    tell_known(study, SearchSpace(), "lora", {"learning_rate": 5.9e-4, "batch_size": 8, "epochs": 3, "lora_r": 16}, done)
    [told] = study.trials
    assert told.value == 0.8 and told.params["learning_rate"] == 5.9e-4
    # read at the half-epochs other trials report at, not rounded: nothing at 0.5 epochs (before its first evaluation)
    assert told.intermediate_values.keys() == {2, 3, 4}
    assert told.intermediate_values[2] == pytest.approx(1.2 - 0.34 * (1.0 - 0.68) / 0.68)
    assert told.intermediate_values[4] == pytest.approx(0.8, abs=0.004)
    tell_known(study, SearchSpace(), "lora", {"learning_rate": 5.9e-4, "batch_size": 8, "epochs": 10, "lora_r": 16}, done)
    tell_known(study, SearchSpace(), "lora", {"learning_rate": 5.9e-4, "batch_size": 8, "epochs": 3, "lora_r": 16},
               TrialOutcome("pruned", tmp_path, 10.0))
    assert len(study.trials) == 1, "10 epochs lies outside 1..4, and a trial that did not finish has no value"


def test_the_budget_charges_start_up_once_per_trial_not_to_a_stopped_trials_few_steps(monkeypatch, tmp_path):
    from tunewright.sweep import study as study_module
    from tunewright.sweep.trial import TrialOutcome

    monkeypatch.setattr(study_module.time, "monotonic", lambda: 1000.0)
    clock = study_module.Clock(1800)
    assert clock.trust_pace_after() == 90.0 and study_module.Clock(60).trust_pace_after() == 15.0
    assert clock.affordable_epochs() == 10**6  # nothing seen yet
    # a trial stopped after 60 s: 45 s of loading, then 15 s of steps that covered 0.1 epoch (150 s an epoch)
    clock.record(TrialOutcome("budget", tmp_path, 60.0, startup_s=45.0, stepping=(15.0, 0.1)))
    monkeypatch.setattr(study_module.time, "monotonic", lambda: 1060.0)
    assert clock.affordable_epochs() == 11  # (1740 s left - 45 s start-up) / 150 s; 60 s / 0.1 epoch would say 2
    clock.record(TrialOutcome("failed", tmp_path, 5.0))  # died before a step: nothing about the pace
    assert clock.affordable_epochs() == 11
