"""Config as the data pipeline reads it: YAML, `--set` overrides, typo rejection, and the shipped example config."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunewright.cli import app
from tunewright.config import load_config
from tunewright.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_set_overrides_parse_yaml_scalars(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train: a.jsonl\n  max_seq_len: 512\n")
    cfg = load_config(path, overrides=["data.max_seq_len=2048", "data.validation_split=0.1", "data.on_bad_rows=skip",
                                       "data.train=[a.jsonl, b.jsonl]", "data.packing=false"])
    assert cfg.data.max_seq_len == 2048 and cfg.data.validation_split == 0.1 and cfg.data.on_bad_rows == "skip"
    assert cfg.data.train == ["a.jsonl", "b.jsonl"] and cfg.data.packing is False


@pytest.mark.parametrize("override, suggestion", [
    ("data.max_seq_lenn=10", "data.max_seq_len"),
    ("data.on_bad_row=skip", "data.on_bad_rows"),
    ("dta.train=x.jsonl", "data"),
])
def test_typos_are_rejected_with_a_suggestion(override, suggestion):
    with pytest.raises(UserError) as e:
        load_config(overrides=[override])
    assert "unknown key" in e.value.message and f"did you mean '{suggestion}'" in e.value.fix


def test_bad_values_name_the_key():
    with pytest.raises(UserError, match="data.on_bad_rows"):
        load_config(overrides=["data.on_bad_rows=ignore"])
    with pytest.raises(UserError, match="data.format"):
        load_config(overrides=["data.format=chatml"])


def test_typo_in_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  trian: a.jsonl\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    assert "data.trian" in e.value.message and "did you mean 'data.train'" in e.value.fix


def test_cli_rejects_typo_with_exit_2():
    result = CliRunner().invoke(app, ["train", "--set", "data.max_seq_lenn=10"])
    assert result.exit_code == 2 and "did you mean 'data.max_seq_len'" in result.output


def test_example_config_loads_and_points_at_the_example_data():
    cfg = load_config(REPO / "examples" / "stdlib-qa.yaml")
    assert cfg.model == "smollm2-135m-instruct" and cfg.method == "lora" and cfg.output_dir == "runs/stdlib-qa"
    for path in (cfg.data.train, cfg.data.validation):
        assert (REPO / path).is_file()


def test_a_flag_fills_a_section_left_empty_in_the_yaml(tmp_path):
    """`data:` with nothing under it reads as null; --data (a keyword field) and --set still fill it."""
    path = tmp_path / "c.yaml"
    path.write_text("model: smollm2-135m-instruct\ndata:\ntrain:\n")
    cfg = load_config(path, overrides=["train.seed=7"], data__train="a.jsonl")
    assert cfg.data.train == "a.jsonl" and cfg.train.seed == 7


def test_train_compile_is_refused_saying_it_never_had_an_effect(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: smollm2-135m-instruct\ntrain:\n  compile: true\n")
    out = subprocess.run([sys.executable, "-m", "tunewright.cli", "train", str(path)],
                         check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    said = " ".join(out.stderr.split())  # rich wraps long lines
    assert str(path) in said and "train.compile" in said and "never had an effect" in said, said
    assert "remove train.compile" in said, said


def test_a_run_config_recorded_with_compile_false_still_loads(tmp_path):
    """Every config.yaml written before train.compile was removed says `compile: false` (what happened anyway)."""
    path = tmp_path / "config.yaml"
    path.write_text("model: smollm2-135m-instruct\ntrain:\n  compile: false\n  seed: 7\n")
    cfg = load_config(path)
    assert cfg.train.seed == 7 and "compile" not in cfg.train.model_dump()
