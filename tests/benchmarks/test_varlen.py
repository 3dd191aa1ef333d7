"""benchmarks/varlen.py (issue 13's measurement in one command): its data, its random-init models, a smoke run.

Nothing here is timed: the smoke run checks that every piece runs and lands in the table, not the speeds.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import varlen  # noqa: E402  (benchmark code is not in the installed package)
import varlen_data  # noqa: E402

from tunewright.models import load_tokenizer  # noqa: E402


def _source_turns() -> set[str]:
    return {m["content"] for pair in varlen_data.turn_pairs(varlen_data.TRAIN_SOURCES) for m in pair}


def test_rows_are_real_turns_of_variable_length_and_the_same_every_time(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    rows = varlen_data.build_rows(tokenizer, 64, 60, 512)
    assert rows == varlen_data.build_rows(tokenizer, 64, 60, 512)  # deterministic
    lengths = [varlen_data.chat_length(tokenizer, r["messages"]) for r in rows]
    assert min(lengths) >= 60 and max(lengths) <= 512 and max(lengths) - min(lengths) > 300
    turns = _source_turns()
    assert all(m["content"] in turns for r in rows for m in r["messages"])  # the example data's text, not random tokens
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] * (len(r["messages"]) // 2) for r in rows)
    # padding batches of 8 to their longest costs Trainer about 40% of its tokens, as in the issue
    assert 0.3 < varlen_data.pad_share_in_order(lengths, 8) < 0.55


def test_pad_share_by_hand():
    assert varlen_data.pad_share_in_order([10, 30, 20, 20], 2) == pytest.approx(1 - 80 / 100)


@pytest.mark.parametrize(("name", "params"), [("qwen2.5-0.5b", 494_032_768), ("llama-3.2-1b", 1_235_814_400)])
def test_real_shapes_have_the_published_parameter_counts(name, params):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(varlen_data.REAL_CONFIGS[name])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == params


def test_the_cli_trains_from_a_random_init_folder_with_a_larger_vocabulary(tmp_path, tiny_model_dir, monkeypatch):
    """A real shape's vocabulary (151936) around a smaller tokenizer's ids, saved with save_pretrained: tunewright trains it."""
    small = {**varlen_data.REAL_CONFIGS["qwen2.5-0.5b"], "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    monkeypatch.setitem(varlen_data.REAL_CONFIGS, "qwen2.5-0.5b", small)
    folder = varlen_data.build_random_model("qwen2.5-0.5b", tmp_path / "qwen", str(tiny_model_dir))
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == 151936
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "tunewright.cli", "train", "--model", str(folder), "--data",
           str(REPO / "examples/stdlib-qa/train.jsonl"), "--output", str(run), "--set", "train.max_steps=2",
           "--set", "train.batch_size=2", "--set", "data.max_seq_len=128", "--set", "eval.after_train=false",
           "--set", "train.precision=fp32", "--set", "train.threads=1", "--set", "data.validation_split=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["steps"] == 2


def test_smoke_run_end_to_end_on_the_tiny_model(tmp_path, tiny_model_dir):
    """A few rows through every step: data, tunewright's short and long CLI runs, Trainer + PEFT bf16, peaks, MFU, table."""
    out = tmp_path / "out"
    code = varlen.main(["--model", str(tiny_model_dir), "--rows", "16", "--small-rows", "8", "--validation-rows", "4",
                        "--min-len", "20", "--max-len", "128", "--precisions", "bf16", "--peak-budget", "0.2",
                        "--out", str(out)])
    assert code == 0
    report = json.loads((out / "varlen.json").read_text())
    tw, trainer = report["results"]["tunewright_bf16"], report["results"]["trainer_peft_bf16"]
    assert tw["timed_real_tokens"] > 0 and len(tw["walls"]) == 2  # the long run trained more tokens than the short
    assert isinstance(tw["threads"], int) and tw["threads_auto"] and tw["threads_reason"]
    assert trainer["precision"] == "bf16" and trainer["steps"] == 2 and trainer["pad_share"] > 0
    assert tw["final_eval_loss"] > 0 and trainer["final_eval_loss"] > 0 and tw["eval_loss_rel_diff"] is not None
    assert trainer["mfu"] > 0 and trainer["threads"] >= 1
    assert report["lengths"]["rows"] == 16 and 20 <= report["lengths"]["min"] <= report["lengths"]["max"] <= 128
    md = (out / "varlen.md").read_text()
    assert f"| tunewright bf16 | auto → {tw['threads']} |" in md and "| Trainer + PEFT bf16 |" in md
    assert "matmul peak at" in md and "python benchmarks/varlen.py" in md
