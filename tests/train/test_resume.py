"""`--resume` after what a kill or a bad disk leaves behind.

Corrupt checkpoints fall back to the newest one that verifies, a half-written metrics line is
dropped, a finished run is left alone, totals cover the whole run, and early stopping restores
the best weights whatever the evaluation and save cadence.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import assert_same_adapter, repeat_word_rows, write_jsonl
from safetensors.torch import load_file

import tunewright.train.checkpoint as ckpt
from tunewright.config import load_config
from tunewright.train import loop, train
from tunewright.train.state import TrainState

CLI = [sys.executable, "-m", "tunewright.cli"]
# fp32 and a fixed dropout: a resumed run must reproduce an uninterrupted one exactly; best by the loss, as
# trainer_state.json files written before train.best_metric chose it (the old-layout tests rewrite them)
SETS = {"train.max_steps": 8, "train.save_every": 2, "train.eval_every": 2, "train.learning_rate": 1e-2,
        "lora.dropout": 0.3, "train.precision": "fp32", "train.save_total_limit": 5, "train.threads": 1,
        "eval.after_train": "false", "train.best_metric": "eval_loss"}
TOTALS = ("steps", "trained_tokens", "real_tokens", "padded_tokens")


class Crash(Exception):
    """Stands in for a kill right after a checkpoint was written."""



@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("data")
    return {"train": str(write_jsonl(root / "train.jsonl", repeat_word_rows(48))),
            "validation": str(write_jsonl(root / "val.jsonl", repeat_word_rows(8, offset=3)))}


def _cfg(model_dir, data, out, **extra):
    sets = {**SETS, "data.validation": data["validation"], **extra}
    return load_config(model=str(model_dir), data__train=data["train"], output_dir=str(out), overrides=[f"{k}={v}" for k, v in sets.items()])


def _cli(model_dir, data, out, *more) -> list[str]:
    sets = {**SETS, "data.validation": data["validation"]}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    return CLI + ["train", "--model", str(model_dir), "--data", data["train"], "--output", str(out), *args, *more]


def _train_until_crash(cfg, after_step: int) -> None:
    real = ckpt.save_checkpoint

    def save_then_crash(run_dir, step, *args, **kwargs):
        path = real(run_dir, step, *args, **kwargs)
        if step == after_step:
            raise Crash(f"killed after checkpoint {step}")
        return path

    with pytest.MonkeyPatch.context() as m:
        m.setattr(ckpt, "save_checkpoint", save_then_crash)
        with pytest.raises(Crash):
            train(cfg)


@pytest.fixture(scope="module")
def straight(tiny_model_dir, data, tmp_path_factory) -> Path:
    """An uninterrupted run: what every resumed run must end up equal to."""
    run = tmp_path_factory.mktemp("straight") / "run"
    with pytest.MonkeyPatch.context() as m:
        m.setenv("TUNEWRIGHT_TOKENIZED_CACHE", str(run.parent / "tokcache"))
        train(_cfg(tiny_model_dir, data, run))
    return run


@pytest.fixture(scope="module")
def crashed(tiny_model_dir, data, tmp_path_factory) -> Path:
    """The same run killed right after writing checkpoints/step-6 (steps 2 and 4 are older, complete ones)."""
    run = tmp_path_factory.mktemp("crashed") / "run"
    with pytest.MonkeyPatch.context() as m:
        m.setenv("TUNEWRIGHT_TOKENIZED_CACHE", str(run.parent / "tokcache"))
        _train_until_crash(_cfg(tiny_model_dir, data, run), after_step=6)
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-2", "step-4", "step-6"]
    return run


@pytest.fixture
def killed(crashed, tmp_path) -> Path:
    """A private copy of the crashed run, free to damage."""
    return Path(shutil.copytree(crashed, tmp_path / "killed"))


def _half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage_same_size(path: Path) -> None:
    path.write_bytes(bytes((b * 7 + 1) % 256 for b in path.read_bytes()))


def _truncate_json(path: Path) -> None:
    path.write_text(path.read_text()[:-10])


CORRUPTIONS = {"trainable.safetensors": _half, "state.pt": _garbage_same_size, "trainer_state.json": _truncate_json}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_corrupt_newest_checkpoint_falls_back_to_the_older_one(tiny_model_dir, data, straight, killed, name, capsys):
    CORRUPTIONS[name](killed / "checkpoints" / "step-6" / name)
    result = train(_cfg(tiny_model_dir, data, killed), resume=True)
    err = capsys.readouterr().err
    assert "skipped checkpoints/step-6" in err and name in err, err
    assert result.summary["steps"] == 8
    assert_same_adapter(straight, killed)
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9)), "steps after the checkpoint resumed from are logged once"


def test_a_checkpoint_from_before_manifests_still_loads_and_a_broken_one_falls_back(tiny_model_dir, data, straight, killed, capsys):
    for step in ("step-2", "step-4", "step-6"):
        (killed / "checkpoints" / step / ckpt.MANIFEST).unlink()  # as the previous version wrote them
    (killed / "checkpoints" / "step-6" / "state.pt").write_bytes(b"not a pickle")
    train(_cfg(tiny_model_dir, data, killed), resume=True)
    assert "skipped checkpoints/step-6: state.pt" in capsys.readouterr().err
    assert_same_adapter(straight, killed)


def test_no_checkpoint_verifies_exits_2_naming_each_and_why(tiny_model_dir, data, killed):
    for step in ("step-2", "step-4", "step-6"):
        _half(killed / "checkpoints" / step / "trainable.safetensors")
    out = subprocess.run(_cli(tiny_model_dir, data, killed, "--resume"), check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    for step in ("step-2", "step-4", "step-6"):
        assert f"checkpoints/{step}: trainable.safetensors" in out.stderr, out.stderr
    assert not (killed / "adapter").exists()


def test_rotation_never_deletes_the_only_checkpoint_that_verifies(tmp_path):
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, model, optimizer, scheduler, TrainState(step=step))
    for step in (2, 3):
        _garbage_same_size(tmp_path / "checkpoints" / f"step-{step}" / "state.pt")
    ckpt.rotate_checkpoints(tmp_path, keep=2)
    assert (tmp_path / "checkpoints" / "step-1" / ckpt.MARKER).is_file()
    assert ckpt.latest_checkpoint(tmp_path).name == "step-1"
    ckpt.save_checkpoint(tmp_path, 4, model, optimizer, scheduler, TrainState(step=4))
    ckpt.rotate_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-3", "step-4"]


def test_a_half_written_metrics_line_is_dropped_on_resume(tiny_model_dir, data, killed):
    metrics = killed / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 7, "epoch": 0.4, "loss": 2.')  # what kill -9 during the append leaves
    train(_cfg(tiny_model_dir, data, killed), resume=True)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_totals_after_a_resume_cover_the_whole_run(tiny_model_dir, data, straight, killed):
    result = train(_cfg(tiny_model_dir, data, killed), resume=True)
    whole = json.loads((straight / "summary.json").read_text())
    resumed = json.loads((killed / "summary.json").read_text())
    assert {k: resumed[k] for k in TOTALS} == {k: whole[k] for k in TOTALS}
    assert result.summary["train_seconds"] > 0
    assert_same_adapter(straight, killed)


# trainer_state.json of step 3 of a run, as tunewright wrote it before TrainState: `tokens` repeated `real_tokens`
WRITTEN_BEFORE_TRAIN_STATE = {"step": 3, "best_eval_loss": 6.5465264320373535, "best_checkpoint": None, "evals_without_gain": 0,
                              "tokens": 1287, "trained_tokens": 526, "real_tokens": 1287, "padded_tokens": 1287,
                              "train_seconds": 0.26499428900024213, "best_step": 2}


def test_trainer_state_written_before_train_state_reads_as_the_same_state():
    state = TrainState.from_json(WRITTEN_BEFORE_TRAIN_STATE)
    assert state == TrainState(step=3, trained_tokens=526, real_tokens=1287, padded_tokens=1287, train_seconds=0.26499428900024213,
                               best_eval_loss=6.5465264320373535, best_score=6.5465264320373535, best_step=2,
                               best_checkpoint=None, evals_without_gain=0)
    assert "tokens" not in state.to_json(), "written once, as real_tokens"


def _as_written_before_train_state(path: Path) -> None:
    """Rewrite a checkpoint's trainer_state.json in the old layout (manifest updated, so it still verifies)."""
    new = json.loads(path.read_text())
    old = {k: new[k] for k in ("step", "best_eval_loss", "best_checkpoint", "evals_without_gain")}
    old["tokens"] = new["real_tokens"]
    old.update({k: new[k] for k in ("trained_tokens", "real_tokens", "padded_tokens", "train_seconds")})
    if new["best_step"] is not None:
        old["best_step"] = new["best_step"]
    path.write_text(json.dumps(old, indent=2))
    for written_after_the_files in (ckpt.MANIFEST, ckpt.MARKER):
        (path.parent / written_after_the_files).unlink()
    ckpt._write_manifest(path.parent)
    (path.parent / ckpt.MARKER).write_text("ok")


def test_a_checkpoint_written_before_train_state_resumes_the_whole_run(tiny_model_dir, data, straight, killed, capsys):
    for step in ("step-2", "step-4", "step-6"):
        _as_written_before_train_state(killed / "checkpoints" / step / "trainer_state.json")
    train(_cfg(tiny_model_dir, data, killed), resume=True)
    assert "skipped" not in capsys.readouterr().err
    whole = json.loads((straight / "summary.json").read_text())
    resumed = json.loads((killed / "summary.json").read_text())
    assert {k: resumed[k] for k in (*TOTALS, "best_eval_loss", "best_step")} == {k: whole[k] for k in (*TOTALS, "best_eval_loss", "best_step")}
    assert_same_adapter(straight, killed)


def test_resume_on_a_finished_run_says_so_and_changes_nothing(tiny_model_dir, data, straight, tmp_path):
    run = Path(shutil.copytree(straight, tmp_path / "done"))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    out = subprocess.run(_cli(tiny_model_dir, data, run, "--resume"), check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "already finished" in out.stderr + out.stdout
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    assert after == before


def _record_evals(monkeypatch, losses: list[float], exact: list[float] | None = None) -> dict[int, dict[str, torch.Tensor]]:
    """Fake validation (losses, and exact match: level unless given, so the loss decides); the trainable weights
    at each evaluation, keyed by evaluation number."""
    seen: dict[int, dict[str, torch.Tensor]] = {}
    scripted = iter(zip(losses, exact or [0.5] * len(losses), strict=True))

    def fake_evaluate(loss_module, batches, device):
        seen[len(seen) + 1] = {n.replace(".default", ""): p.detach().clone()
                               for n, p in loss_module.model.named_parameters() if p.requires_grad}
        loss, match = next(scripted)
        return {"eval_loss": loss, "eval_token_accuracy": match, "eval_exact_match": match}

    monkeypatch.setattr(loop, "validation_metrics", fake_evaluate)
    return seen


def _assert_adapter_is(run: Path, weights: dict[str, torch.Tensor]) -> None:
    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert adapter.keys() == weights.keys()
    for k in adapter:
        torch.testing.assert_close(adapter[k], weights[k], atol=0, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


EARLY = {"train.eval_every": 2, "train.save_every": 4, "train.max_steps": 12, "train.early_stopping_patience": 2}


def test_early_stopping_restores_the_best_weights_between_saves(tiny_model_dir, data, tmp_path, monkeypatch):
    evals = _record_evals(monkeypatch, [1.0, 1.1, 1.2, 1.3])  # best at step 2, which is not a save step
    run = tmp_path / "es"
    result = train(_cfg(tiny_model_dir, data, run, **EARLY))
    assert result.summary["stopped_early"] and result.summary["steps"] == 6
    assert result.summary["best_eval_loss"] == 1.0
    assert not torch.equal(evals[1][next(k for k in evals[1] if "lora_B" in k)], evals[3][next(k for k in evals[3] if "lora_B" in k)])
    _assert_adapter_is(run, evals[1])


def test_early_stopping_restores_the_best_weights_after_a_resume(tiny_model_dir, data, tmp_path, monkeypatch):
    evals = _record_evals(monkeypatch, [1.0, 1.1, 1.2, 1.3])
    run = tmp_path / "es"
    _train_until_crash(_cfg(tiny_model_dir, data, run, **EARLY), after_step=4)  # evaluated at 2 (best) and 4
    result = train(_cfg(tiny_model_dir, data, run, **EARLY), resume=True)
    assert result.summary["stopped_early"] and result.summary["steps"] == 6
    _assert_adapter_is(run, evals[1])


def test_a_run_that_ends_before_patience_runs_out_still_keeps_the_best_weights(tiny_model_dir, data, tmp_path, monkeypatch):
    evals = _record_evals(monkeypatch, [0.8, 0.9, 1.0, 1.1])  # best at step 2; patience 4 never runs out
    run = tmp_path / "ceiling"
    result = train(_cfg(tiny_model_dir, data, run, **{**EARLY, "train.max_steps": 8, "train.early_stopping_patience": 4}))
    assert not result.summary["stopped_early"] and result.summary["steps"] == 8
    assert result.summary["best_step"] == 2
    _assert_adapter_is(run, evals[1])


def test_auto_with_validation_data_early_stops_and_keeps_the_best_weights_with_no_flag(tiny_model_dir, data, tmp_path, monkeypatch):
    """Nothing but data and validation data (issue 11): auto trains the target epochs, stops on the planted curve, keeps the best."""
    curve = [1.0, 0.8, 0.85] + [0.9 + 0.01 * k for k in range(60)]  # best at the second evaluation
    evals = _record_evals(monkeypatch, curve)
    run = tmp_path / "auto"
    auto = {k: v for k, v in SETS.items() if k not in ("train.max_steps", "train.save_every", "train.eval_every", "train.best_metric")}
    result = train(load_config(model=str(tiny_model_dir), data__train=data["train"], output_dir=str(run),
                               overrides=[f"{k}={v}" for k, v in {**auto, "data.validation": data["validation"]}.items()]))
    resolved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert resolved["epochs"] == 3 and resolved["early_stopping_patience"] >= 2  # 48 rows: 3 epochs
    patience, every = resolved["early_stopping_patience"], resolved["eval_every"]
    assert result.summary["stopped_early"] and result.summary["steps"] == (2 + patience) * every
    assert result.summary["best_step"] == 2 * every
    _assert_adapter_is(run, evals[2])


@pytest.mark.parametrize(("metric", "best_eval"), [("auto", 3), ("eval_loss", 2), ("eval_exact_match", 3)])
def test_the_kept_weights_are_the_best_by_best_metric(tiny_model_dir, data, tmp_path, monkeypatch, metric, best_eval):
    """Loss and exact match disagree (as on stdlib-modules, docs/auto.md): the metric decides, and auto picks exact
    match for these 3-word answers; its tie at the 4th evaluation goes to the lower loss, which is not lower there."""
    evals = _record_evals(monkeypatch, [1.0, 0.8, 0.9, 0.95, 1.2, 1.3], exact=[0.2, 0.5, 0.7, 0.7, 0.6, 0.6])
    run = tmp_path / metric
    result = train(_cfg(tiny_model_dir, data, run, **{**EARLY, "train.early_stopping_patience": 3, "train.best_metric": metric}))
    resolved = yaml.safe_load((run / "config.yaml").read_text())["train"]["best_metric"]
    assert resolved == ("eval_exact_match" if metric == "auto" else metric)
    assert result.summary["best_step"] == 2 * best_eval and result.summary["best_metric"] == resolved
    assert result.summary["best_score"] == ([1.0, 0.8, 0.9][best_eval - 1] if resolved == "eval_loss" else 0.7)
    assert result.summary["stopped_early"] and result.summary["steps"] == 2 * (best_eval + 3)
    _assert_adapter_is(run, evals[best_eval])
