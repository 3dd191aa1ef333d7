"""metrics.jsonl has one reader: every consumer skips what a kill mid-append leaves behind."""
from __future__ import annotations

import json

from tunewright.evaluate.report import read_training_curve
from tunewright.serve.jobs_runner import _trained_tokens
from tunewright.train.metrics_log import (
    append_metrics,
    metrics_path,
    read_metrics,
    truncate_metrics,
)

ROWS = [{"step": 1, "loss": 2.0, "tokens": 100}, {"step": 2, "loss": 1.5, "eval_loss": 1.7, "tokens": 210}]


def _write(run_dir, tail: str) -> None:
    metrics_path(run_dir).write_text("".join(json.dumps(r) + "\n" for r in ROWS) + tail)


def test_a_torn_last_line_and_rows_without_a_step_are_skipped(tmp_path):
    _write(tmp_path, '["not", "a", "row"]\n{"loss": 9.0}\n{"step": 3, "loss": 1.')
    assert read_metrics(metrics_path(tmp_path)) == ROWS
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_every_consumer_reads_a_run_killed_mid_append(tmp_path):
    _write(tmp_path, '{"step": 3, "loss": 1.2, "tok')
    assert _trained_tokens(tmp_path) == 210  # the jobs API's trained_tokens of a killed run
    assert read_training_curve(metrics_path(tmp_path)) == {"train": [(1, 2.0), (2, 1.5)], "eval": [(2, 1.7)]}


def test_resume_truncates_to_the_checkpoint_and_appends_whole_lines(tmp_path):
    _write(tmp_path, '{"step": 3, "loss": 1.2}\n{"step": 4, "lo')
    path = metrics_path(tmp_path)
    truncate_metrics(path, 2)
    append_metrics(path, {"step": 3, "loss": 1.1})
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert path.read_text().endswith('{"step": 3, "loss": 1.1}\n')
