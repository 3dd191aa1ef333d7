"""`tunewright bench` maths and report on synthetic results, and the baselines for real on a tiny model.

Nothing here is timed: the numbers checked are computed from inputs the test chose.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench  # noqa: E402  (benchmarks/bench.py: benchmark code is not in the installed package)

SMOL = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152}


def _result(tps, mem, loss=2.0, precision="fp32", **kw):
    return {"ok": True, "tokens_per_s": tps, "peak_memory_bytes": mem, "final_eval_loss": loss, "final_train_loss": loss,
            "precision": precision, "steps": 10, "pad_share": 0.0, **kw}


def test_model_dims_of_smollm2_match_its_parameter_count():
    dims = bench.model_dims(SMOL)
    # q 576x576, k/v 576x192, o 576x576, gate/up 576x1536, down 1536x576, per layer
    per_layer = 576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536
    assert dims["backbone_params"] == 30 * per_layer
    assert dims["head_params"] == 49152 * 576
    # backbone + embedding (tied head) + norms = the 134.5M of SmolLM2-135M
    assert abs(dims["backbone_params"] + dims["head_params"] + 576 * 61 - 134_515_008) < 1000
    # LoRA r16 on the 7 linears: r * (in + out) each; PEFT reports 4,884,480 trainable for this model
    assert dims["lora_params"] == 4_884_480
    assert dims["attn_width"] == 576 and dims["layers"] == 30


def test_training_flops_formula_by_hand():
    dims = {"backbone_params": 100, "lora_params": 10, "head_params": 50, "layers": 2, "attn_width": 8}
    # 1000 real tokens, 300 trained, E[L^2]/E[L] = 40
    flops = bench.training_flops(dims, 1000, 300, 40.0)
    assert flops == 1000 * (4 * 100 + 6 * 10) + 300 * 4 * 50 + 6 * 2 * 8 * 40.0 * 1000


def test_add_mfu_uses_the_peak_of_the_run_precision():
    dims = {"backbone_params": 100, "lora_params": 0, "head_params": 0, "layers": 1, "attn_width": 1}
    peaks = {"float32": {"flops_per_s": 1000.0}, "bfloat16": {"flops_per_s": 4000.0}}
    r = {"timed_seconds": 2.0, "timed_real_tokens": 10, "timed_trained_tokens": 0, "precision": "fp32",
         "lengths": {"sum_len": 10, "sum_len_sq": 0}}
    bench.add_mfu(r, dims, peaks)
    assert r["flops_per_s"] == 10 * 400 / 2.0
    assert r["mfu"] == pytest.approx(2.0)
    r16 = dict(r, precision="bf16")
    bench.add_mfu(r16, dims, peaks)
    assert r16["mfu"] == pytest.approx(0.5)


def test_ratios_and_goals():
    results = {
        "tunewright": _result(300.0, 2e9, loss=2.02),
        "tunewright_bf16": _result(500.0, 2e9, precision="bf16"),
        "trainer_peft": _result(100.0, 5e9, loss=2.0),
        "trl_no_packing": _result(80.0, 6e9),
        "trl_packing": _result(120.0, 9e9),
    }
    r = bench.compute_ratios(results)
    assert r["vs_trainer_same_precision"] == pytest.approx(3.0)
    assert r["vs_trl_best"] == pytest.approx(2.5) and r["trl_best_mode"] == "trl_packing"
    assert r["bf16_vs_trainer_fp32"] == pytest.approx(5.0)
    assert r["memory_vs_trainer"] == pytest.approx(0.4)
    assert r["eval_loss_rel_diff"] == pytest.approx(0.01)
    assert r["goals_met"] == {"vs_trainer_same_precision": True, "vs_trl_best": True, "bf16_vs_trainer_fp32": True,
                              "memory_vs_trainer": True, "eval_loss_rel_diff": True}


def test_ratios_with_missing_and_failed_tools():
    results = {"tunewright": _result(150.0, 4e9, loss=2.1), "trainer_peft": _result(100.0, 5e9, loss=2.0),
               "trl_packing": {"ok": False, "reason": "trl is not installed"}}
    r = bench.compute_ratios(results)
    assert r["vs_trl_best"] is None and r["bf16_vs_trainer_fp32"] is None and r["trl_best_mode"] is None
    assert r["goals_met"] == {"vs_trainer_same_precision": False, "memory_vs_trainer": False, "eval_loss_rel_diff": False}


def test_report_files_and_table(tmp_path):
    results = {"tunewright": _result(300.0, 2e9, mfu=0.31), "trainer_peft": _result(100.0, 5e9),
               "trl_packing": {"ok": False, "reason": "trl is not installed"}}
    report = {"command": "tunewright bench --steps 10", "results": results, "ratios": bench.compute_ratios(results),
              "peaks": {"float32": {"flops_per_s": 2.17e11, "size": 4096, "threads": 2, "device": "cpu"}},
              "environment": {"cpu": "test cpu", "cores": 2, "bf16": "none", "load_before": "0.1", "load_after": "0.2"}}
    json_path, md_path = bench.write_report(report, tmp_path / "out")
    assert json.loads(json_path.read_text())["ratios"]["vs_trainer_same_precision"] == pytest.approx(3.0)
    md = md_path.read_text()
    assert "| tunewright, fp32 | - | 10 | 300.0 | 0.0% | 2.00 GB | 2.0000 | 2.0000 | 31.0% |" in md
    assert "not run: trl is not installed" in md
    assert "| tunewright fp32 / Trainer+PEFT fp32 (tokens/s) | 3.00x | >= 2x | yes |" in md
    assert "217.0 GFLOP/s" in md and "tunewright bench --steps 10" in md


def test_tunewright_result_reads_summary_and_metrics(tmp_path):
    rows = [{"step": 1, "tokens": 100, "tokens_per_s": 10.0, "loss": 3.0},
            {"step": 2, "tokens": 300, "tokens_per_s": 100.0, "loss": 2.5},
            {"step": 3, "tokens": 600, "tokens_per_s": 150.0, "loss": 2.0, "eval_loss": 2.2}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "summary.json").write_text(json.dumps({
        "steps": 3, "train_seconds": 14.0, "real_tokens": 600, "padded_tokens": 640, "trained_tokens": 240,
        "pad_share": 0.0625, "peak_memory_bytes": 123, "final_train_loss": 2.0, "final_eval_loss": 2.2}))
    r = bench.tunewright_result(tmp_path)
    # step 1 (10 s for 100 tokens) is left out: 500 tokens in 2 + 2 seconds
    assert r["timed_real_tokens"] == 500 and r["timed_seconds"] == pytest.approx(4.0)
    assert r["tokens_per_s"] == pytest.approx(125.0)
    assert r["first_step_seconds"] == pytest.approx(10.0)
    assert r["timed_trained_tokens"] == 200 and r["final_eval_loss"] == 2.2 and r["pad_share"] == 0.0625
    assert r["threads"] is None  # no config.yaml in this folder: the table says "-"


def test_plan_skips_with_reasons():
    args = bench.build_parser().parse_args(["--precision", "auto"])
    todo = bench.plan(args, bf16_ok=False, trl_python=None)
    assert todo["tunewright"] is None and todo["trainer_peft"] is None
    assert "bf16" in todo["tunewright_bf16"] and "trl" in todo["trl_packing"]
    forced = bench.plan(bench.build_parser().parse_args(["--precision", "bf16", "--only", "tunewright,tunewright_bf16"]), False, None)
    assert forced == {"tunewright": "--precision bf16", "tunewright_bf16": None}
    with pytest.raises(SystemExit):
        bench.plan(bench.build_parser().parse_args(["--only", "nope"]), True, None)


def test_tunewright_bench_runs_benchmarks_bench_py_of_the_checkout(tmp_path):
    """The command finds benchmarks/bench.py beside the source tree and hands it the arguments."""
    proc = subprocess.run([sys.executable, "-m", "tunewright.cli", "bench", "--only", "nope", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 1 and "unknown --only name(s) ['nope']" in proc.stderr, proc.stderr[-2000:]


def test_bench_outside_a_checkout_is_one_clear_error(tmp_path):
    from tunewright.cli import bench_script
    from tunewright.errors import UserError

    with pytest.raises(UserError, match="needs a source checkout") as caught:
        bench_script([tmp_path])
    assert "clone the tunewright repository" in caught.value.fix


def test_packing_steps_match_the_others_tokens():
    args = bench.build_parser().parse_args(["--steps", "20", "--max-len", "512"])
    assert bench.packing_steps(args, {"sum_len": 8000, "examples": 100}) == 4  # 20 steps x 80 tokens / 512
    assert bench.packing_steps(args, None) == 4


def test_matmul_peak_reports_a_rate():
    peak = bench.matmul_peak("float32", size=512, budget_s=0.5)
    assert peak["size"] == 512 and peak["flops_per_s"] > 0


def _run_baseline(script: str, tmp_path: Path, model_dir: Path, python: str, *extra: str) -> dict:
    out = tmp_path / f"{script}.json"
    cmd = [python, str(REPO / "benchmarks" / script), "--model", str(model_dir), "--steps", "2", "--micro-batch", "4",
           "--max-len", "128", "--validation", str(REPO / "examples/stdlib-qa/test.jsonl"), "--out", str(out), *extra]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


def _check_baseline(r: dict, tool: str) -> None:
    assert r["tool"] == tool and r["steps"] == 2
    assert r["real_tokens"] > 0 and r["padded_tokens"] >= r["real_tokens"] and 0 < r["trained_tokens"] < r["real_tokens"]
    assert r["timed_real_tokens"] < r["real_tokens"]  # step 1 is reported apart
    assert r["peak_memory_bytes"] > 0 and r["final_train_loss"] > 0 and r["final_eval_loss"] > 0
    assert r["lengths"]["examples"] == 500


def test_trainer_peft_baseline_trains_two_steps(tmp_path, tiny_model_dir):
    r = _run_baseline("trainer_peft.py", tmp_path, tiny_model_dir, sys.executable)
    _check_baseline(r, "trainer_peft")
    assert r["pad_share"] > 0  # padded to the longest of each batch


def _trl_python() -> str | None:
    """The interpreter the bench itself would use for TRL (this one or .venv-bench), so test and bench agree."""
    return bench.find_baseline_python(None)


@pytest.mark.skipif(_trl_python() is None, reason="trl is not installed (make bench installs it into .venv-bench)")
@pytest.mark.parametrize("packing", [False, True])
def test_trl_baseline_trains_two_steps(tmp_path, tiny_model_dir, packing):
    r = _run_baseline("trl_sft.py", tmp_path, tiny_model_dir, _trl_python(), "--packing" if packing else "--no-packing")
    _check_baseline(r, "trl_packing" if packing else "trl_no_packing")
    assert (r["pad_share"] == 0) == packing


def _plant_run_config(run_dir: Path, threads: int, reason: str | None) -> None:
    """config.yaml as a run writes it (the real writer), with `threads` resolved to the planted value."""
    from tunewright.config import RunConfig, to_yaml

    cfg = RunConfig.model_validate({"train": {"threads": threads}})
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg, {"train.threads": reason} if reason else None))


def test_tunewright_result_reports_the_threads_auto_resolved_to(tmp_path, monkeypatch):
    """The real rule on a planted load (one of two cores busy elsewhere) -> config.yaml -> the bench's result."""
    from tunewright.train import cpu_usage
    from tunewright.train.hparams import threads_choice

    monkeypatch.setattr(cpu_usage, "usable_cores", lambda: 2)
    monkeypatch.setattr("tunewright.train.hparams.usable_cores", lambda: 2)
    threads, reason = threads_choice(busy_elsewhere=lambda: 1.0)
    _plant_run_config(tmp_path, threads, reason)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "tokens": 100, "tokens_per_s": 10.0, "loss": 3.0}) + "\n")
    (tmp_path / "summary.json").write_text(json.dumps({
        "steps": 1, "train_seconds": 10.0, "real_tokens": 100, "padded_tokens": 100, "trained_tokens": 40,
        "pad_share": 0.0, "peak_memory_bytes": 1, "final_train_loss": 3.0}))
    r = bench.tunewright_result(tmp_path)
    assert r["threads"] == 1 and r["threads_auto"] is True
    assert r["threads_reason"].startswith("1: 2 cores, 1.0 busy with other processes")


def test_a_set_thread_count_is_not_reported_as_auto(tmp_path):
    import bench_threads

    _plant_run_config(tmp_path, 2, None)
    assert bench_threads.resolved_threads(tmp_path) == {"threads": 2, "threads_auto": False, "threads_reason": None}


def test_bench_warns_only_when_auto_picked_fewer_threads_than_cores():
    import bench_threads

    results = {"tunewright": _result(100.0, 1e9, threads=1, threads_auto=True, threads_reason="1: 2 cores, 1.0 busy"),
               "tunewright_bf16": _result(150.0, 1e9, threads=2, threads_auto=True, threads_reason="2: 2 cores, 0.0 busy"),
               "trainer_peft": _result(90.0, 3e9, threads=1)}  # a set count, not auto: no warning
    lines = bench_threads.fewer_threads_warnings(results, cores=2)
    assert len(lines) == 1
    assert "tunewright: threads: auto picked 1 of 2 cores (1: 2 cores, 1.0 busy)" in lines[0]
    assert "--threads 2" in lines[0]
    assert bench_threads.fewer_threads_warnings(results, cores=1) == []


def test_the_warning_is_one_yellow_line(capsys, monkeypatch):
    import bench_threads

    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    bench_threads.print_warnings(["warning: tunewright: threads: auto picked 1 of 2 cores"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b[33m" in err and "auto picked 1 of 2 cores" in err


def test_report_table_shows_the_resolved_threads_and_the_warning(tmp_path):
    results = {"tunewright": _result(100.0, 1e9, threads=1, threads_auto=True, threads_reason="1: 2 cores, 1.0 busy"),
               "trainer_peft": _result(90.0, 3e9, threads=2)}
    report = {"command": "tunewright bench", "results": results, "ratios": bench.compute_ratios(results),
              "warnings": ["warning: tunewright: threads: auto picked 1 of 2 cores"]}
    md = bench.render_markdown(report)
    assert "| tool | threads |" in md
    assert "| tunewright, fp32 | auto → 1 | 10 |" in md and "| transformers.Trainer + PEFT, pad to longest, fp32 | 2 | 10 |" in md
    assert "- threads: tunewright auto → 1: 1: 2 cores, 1.0 busy" in md
    assert "- warning: tunewright: threads: auto picked 1 of 2 cores" in md


def test_trainer_bf16_runs_where_tunewright_bf16_does_and_is_its_ratio():
    """Trainer + PEFT at bf16 (its bf16=True) beside tunewright bf16: the issue's "equal precision" ratio."""
    no_bf16 = bench.plan(bench.build_parser().parse_args([]), bf16_ok=False, trl_python=None)
    assert "no native bf16" in no_bf16["trainer_peft_bf16"]
    assert bench.plan(bench.build_parser().parse_args([]), bf16_ok=True, trl_python=None)["trainer_peft_bf16"] is None
    assert bench.plan(bench.build_parser().parse_args(["--precision", "fp32"]), True, None)["trainer_peft_bf16"] == "--precision fp32"
    results = {"tunewright": _result(200.0, 2e9), "tunewright_bf16": _result(600.0, 2e9, precision="bf16"),
               "trainer_peft": _result(100.0, 5e9), "trainer_peft_bf16": _result(150.0, 5e9, precision="bf16")}
    ratios = bench.compute_ratios(results)
    assert ratios["bf16_vs_trainer_bf16"] == pytest.approx(4.0) and ratios["goals_met"]["bf16_vs_trainer_bf16"] is True
    md = bench.render_markdown({"results": results, "ratios": ratios})
    assert "| tunewright bf16 / Trainer+PEFT bf16 (tokens/s) | 4.00x | >= 2x | yes |" in md
    assert "| transformers.Trainer + PEFT, pad to longest, bf16 autocast |" in md
