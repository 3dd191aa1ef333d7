"""`tunewright eval` as a user runs it: a subprocess, JSON on stdout, exit 2 with one line on bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from run_folders import subprocess_env

from tunewright.evaluate import evaluate

TUNEWRIGHT = str(Path(sys.executable).with_name("tunewright"))


def tunewright(*args: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([TUNEWRIGHT, *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_eval_compare_base_json(adapter_run, test_file, tmp_path):
    proc = tunewright("eval", str(adapter_run), "--data", str(test_file), "--compare-base", "--json",
                      "--max-new-tokens", "4", "--output", str(tmp_path), env=subprocess_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)  # stdout is only the JSON: progress and notes go to stderr
    assert set(results["metrics"]) == {"base", "tuned"}
    assert {"loss", "perplexity", "exact_match", "token_f1", "rouge_l", "chrf", "bleu"} <= set(results["metrics"]["tuned"])
    assert results["comparison"]["loss"]["verdict"] in {"better", "worse", "no clear difference"}
    assert (tmp_path / "eval" / "results.json").is_file() and (tmp_path / "eval" / "report.html").is_file()


@pytest.mark.parametrize("case", ["missing data", "missing run", "plain model with --compare-base", "bad limit"])
def test_bad_inputs_exit_2_with_one_line(case, adapter_run, eval_base_dir, test_file, tmp_path):
    args = {
        "missing data": [str(adapter_run), "--data", str(tmp_path / "nope.jsonl")],
        "missing run": [str(tmp_path / "no-such-run"), "--data", str(test_file)],
        "plain model with --compare-base": [str(eval_base_dir), "--data", str(test_file), "--compare-base"],
        "bad limit": [str(adapter_run), "--data", str(test_file), "--limit", "0"],
    }[case]
    proc = tunewright("eval", *args, env=subprocess_env(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error: ") and all(line.startswith(("error: ", "fix: ")) for line in lines)
    assert sum(line.startswith("error: ") for line in lines) == 1


def test_printed_table(adapter_run, test_file, tmp_path, capsys):
    evaluate(str(adapter_run), data=[str(test_file)], limit=3, max_new_tokens=2, output_dir=tmp_path)
    out = capsys.readouterr().out
    assert "verdict" in out and "95% CI" in out and "token F1" in out
    assert f"report: {tmp_path / 'eval' / 'report.html'}" in out.replace("\n", "")
