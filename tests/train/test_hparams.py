"""The `auto` rules: epochs and batch size from the data, evaluation cadence, early stopping, reasons in config.yaml."""
from __future__ import annotations

import pytest
import torch
import yaml

from tunewright.config import RunConfig, load_config, to_yaml
from tunewright.train.hparams import (
    DataShape,
    auto_batch_size,
    auto_epochs,
    auto_eval_every,
    auto_eval_examples,
    resolve_with_reasons,
)

CPU = torch.device("cpu")
# issue 11's hidden task: 1,200 rows of ~260 tokens, ~3 trained (a one-word answer), 200 validation rows
CLASSIFY = DataShape(1_200, 3 * 1_200, 260 * 1_200, 200, 260 * 200)


@pytest.mark.parametrize(("rows", "epochs"), [(10, 10), (20, 5), (500, 3), (1_200, 3), (8_333, 3), (10_000, 2), (20_000, 1), (1_000_000, 1), (2, 25)])
def test_epochs_follow_openais_guidance(rows, epochs):
    """3 epochs; at least 100 and at most 25,000 examples seen; 1..25 epochs."""
    assert auto_epochs(rows)[0] == epochs


def test_early_stopping_trains_the_target_epochs_so_the_rate_has_decayed_where_the_best_weights_come():
    """A 6-epoch ceiling left the rate at ~80% where validation loss was lowest, and scored 0.811 against 0.834."""
    for rows in (50, 1_200, 10_000, 50_000):
        cfg, why = resolve_with_reasons(load_config(data__train="t.jsonl", data__validation="v.jsonl"),
                                        DataShape(rows, 3 * rows, 260 * rows, 200, 260 * 200), 135_000_000, CPU)
        assert cfg.train.epochs == auto_epochs(rows)[0] and cfg.train.early_stopping_patience >= 2
        assert "decays" in why["train.epochs"] and "early stopping" in why["train.epochs"]


def test_one_word_answers_get_small_batches_and_the_hidden_task_gets_450_steps():
    assert auto_batch_size(1_200, trained_per_example=3)[0] == 8
    cfg, _ = resolve_with_reasons(load_config(data__train="t.jsonl"), DataShape(1_200, 3 * 1_200, 260 * 1_200), 135_000_000, CPU)
    assert (cfg.train.epochs, cfg.train.batch_size) == (3, 8)  # 450 steps: what scored 0.797 (the old auto ran 150)


def test_batch_grows_only_while_300_steps_remain():
    assert auto_batch_size(500, trained_per_example=60)[0] == 8  # 188 steps even at 8
    assert auto_batch_size(2_000, trained_per_example=60)[0] == 16  # 375 steps at 16, 188 at 32
    assert auto_batch_size(5_000, trained_per_example=60)[0] == 32  # 469 at 32


def test_evaluation_costs_at_most_a_tenth_of_training_and_happens_every_epoch():
    every, _ = auto_eval_every(CLASSIFY, batch_size=8, steps=900)
    step_tokens, pass_tokens = 8 * 260, 200 * 260
    assert (pass_tokens / 3) / (every * step_tokens) <= 0.10 + 1e-9  # a forward pass is ~1/3 of a training step
    assert every <= 150  # an epoch is 150 steps
    huge_validation = DataShape(1_200, 3_600, 260 * 1_200, 5_000, 260 * 5_000)
    assert auto_eval_every(huge_validation, batch_size=8, steps=900)[0] == 150  # once an epoch, not rarer
    assert auto_eval_every(DataShape(1_200), batch_size=8, steps=900)[0] == 180  # no validation: five times


def test_a_validation_set_too_large_for_a_tenth_is_sampled_to_fit():
    huge_validation = DataShape(1_200, 3_600, 260 * 1_200, 5_000, 260 * 5_000)
    every, _ = auto_eval_every(huge_validation, batch_size=8, steps=900)
    sample, reason = auto_eval_examples(huge_validation, batch_size=8, eval_every=every)
    assert 100 <= sample < 5_000 and "sample" in reason
    assert (sample * 260 / 3) / (every * 8 * 260) <= 0.10 + 1e-9
    assert auto_eval_examples(CLASSIFY, 8, auto_eval_every(CLASSIFY, 8, 900)[0])[0] is None  # all 200 rows fit


def test_the_validation_sample_is_the_same_rows_at_every_evaluation():
    from tunewright.train.loop import validation_ids

    assert validation_ids(10, None, 42) == list(range(10))
    a = validation_ids(5_000, 150, 42)
    assert a == validation_ids(5_000, 150, 42) and len(set(a)) == 150 and a == sorted(a)


def test_auto_with_validation_trains_the_target_epochs_and_early_stops():
    cfg, why = resolve_with_reasons(load_config(data__train="t.jsonl", data__validation="v.jsonl"), CLASSIFY, 135_000_000, CPU)
    t = cfg.train
    assert t.epochs == 3 and t.batch_size == 8 and t.early_stopping_patience >= 2
    assert t.save_every == t.eval_every
    assert "early stopping" in why["train.epochs"]


def test_a_set_length_or_no_validation_turns_early_stopping_off():
    no_val, why = resolve_with_reasons(load_config(data__train="t.jsonl"), DataShape(1_200, 3_600, 312_000), 1, CPU)
    assert no_val.train.early_stopping_patience is None and no_val.train.epochs == 3
    assert "no validation" in why["train.early_stopping_patience"]
    fixed, _ = resolve_with_reasons(load_config(data__train="t.jsonl", overrides=["train.epochs=2"]), CLASSIFY, 1, CPU)
    assert fixed.train.early_stopping_patience is None and fixed.train.epochs == 2
    mine, _ = resolve_with_reasons(load_config(data__train="t.jsonl", overrides=["train.early_stopping_patience=5"]), CLASSIFY, 1, CPU)
    assert mine.train.early_stopping_patience == 5


@pytest.mark.parametrize(("objective", "trained", "validation", "metric"), [
    ("sft", 3, 200, "eval_exact_match"),  # one-word answers: the whole greedy answer is the score
    ("sft", 40, 200, "eval_loss"),  # sentences are rarely matched whole
    ("sft", 3, 0, "eval_loss"),  # nothing to select on
    ("dpo", 3, 200, "eval_loss"),  # the preference loss per pair
])
def test_best_metric_is_exact_match_for_short_answers_and_the_loss_elsewhere(objective, trained, validation, metric):
    shape = DataShape(1_200, trained * 1_200, 260 * 1_200, validation, 260 * validation)
    cfg, why = resolve_with_reasons(load_config(data__train="t.jsonl", objective=objective), shape, 135_000_000, CPU)
    assert cfg.train.best_metric == metric and why["train.best_metric"].startswith(metric)


def test_a_best_metric_the_objective_does_not_log_is_a_clear_error():
    from tunewright.errors import UserError

    cfg = load_config(data__train="t.jsonl", objective="dpo", overrides=["train.best_metric=eval_exact_match"])
    with pytest.raises(UserError, match="dpo validation does not log it") as err:
        resolve_with_reasons(cfg, CLASSIFY, 135_000_000, CPU)
    assert "eval_preference_accuracy" in err.value.fix
    mine = load_config(data__train="t.jsonl", overrides=["train.best_metric=eval_token_accuracy"])
    assert resolve_with_reasons(mine, CLASSIFY, 135_000_000, CPU)[0].train.best_metric == "eval_token_accuracy"


def test_config_yaml_carries_a_reason_beside_each_auto_value_and_still_loads():
    cfg, why = resolve_with_reasons(load_config(data__train="t.jsonl", data__validation="v.jsonl"), CLASSIFY, 135_000_000, CPU)
    text = to_yaml(cfg, why)
    assert RunConfig.model_validate(yaml.safe_load(text)).model_dump() == cfg.model_dump()
    train_section = text.split("\ntrain:\n")[1].split("\neval:\n")[0]
    lines = {line.split(":")[0].strip(): line for line in train_section.splitlines()}
    for key in ("epochs", "learning_rate", "batch_size", "eval_every", "early_stopping_patience", "threads", "precision",
                "attention"):
        assert "# auto: " in lines[key], lines[key]
    assert "# auto" not in lines["warmup_ratio"]  # set by the user's defaults, not by a rule


def test_the_range_test_is_on_where_it_costs_a_fifth_of_a_lora_run_or_less():
    # the hidden task: 3 epochs of 1,200 x 260 tokens = 936k; the test's 30 x 512 tokens are 2% of that
    cfg, why = resolve_with_reasons(load_config(data__train="t.jsonl", data__validation="v.jsonl"), CLASSIFY, 135_000_000, CPU)
    assert cfg.train.lr_range_test is True
    assert why["train.lr_range_test"].startswith("on: ~15,360 tokens, 2% of the run's ~936,000")
    # 3 epochs of 80 x 60 tokens = 14,400 tokens: the test alone would cost more than the run
    small, why = resolve_with_reasons(load_config(data__train="t.jsonl"), DataShape(80, 400, 80 * 60), 135_000_000, CPU)
    assert small.train.lr_range_test is False and "more than 20%" in why["train.lr_range_test"]
    # stdlib-qa: 3 epochs of 450 rows, 36,083 tokens = 108k; the test's 15,360 are 14% of that
    qa, why = resolve_with_reasons(load_config(data__train="t.jsonl"), DataShape(450, 450 * 40, 36_083), 135_000_000, CPU)
    assert qa.train.lr_range_test is True and "14% of the run's ~108,249" in why["train.lr_range_test"]


@pytest.mark.parametrize(("overrides", "shows"), [
    (["train.learning_rate=1e-4"], "learning_rate is set"),
    (["method=full"], "not full sft"),
    (["objective=dpo"], "not lora dpo"),
    (["train.max_steps=20"], "more than 20%"),  # a quick try: 20 steps of 8 rows is ~42k tokens
    (["train.lr_range_test=false"], None),
])
def test_the_range_test_stays_off_where_it_was_not_shown_to_win_or_was_asked_off(overrides, shows):
    cfg, why = resolve_with_reasons(load_config(data__train="t.jsonl", data__validation="v.jsonl", overrides=overrides),
                                    CLASSIFY, 135_000_000, CPU)
    assert cfg.train.lr_range_test is False
    if shows:
        assert shows in why["train.lr_range_test"], why["train.lr_range_test"]
    else:
        assert "train.lr_range_test" not in why  # the user's own value carries no auto reason


@pytest.mark.parametrize(("overrides", "stored", "shows"), [
    (["train.precision=bf16"], "all", "all: every frozen weight"),
    (["train.precision=bf16", "method=dora"], "all", "all: every frozen weight"),
    (["train.precision=fp32"], False, "off: precision is fp32"),
    (["train.precision=bf16", "method=full"], False, "off: full"),
    (["train.precision=bf16", "method=qlora"], False, "off: qlora"),
    (["train.precision=bf16", "train.distributed=fsdp"], False, "off: fsdp"),
    (["train.precision=bf16", "train.bf16_base=true"], True, None),
])
def test_the_frozen_base_is_stored_in_bf16_for_lora_and_dora_trained_in_bf16_and_nowhere_else(overrides, stored, shows):
    cfg, why = resolve_with_reasons(load_config(data__train="t.jsonl", overrides=overrides), CLASSIFY, 135_000_000, CPU)
    assert cfg.train.bf16_base == stored
    if shows:
        assert why["train.bf16_base"].startswith(shows), why["train.bf16_base"]
    else:
        assert "train.bf16_base" not in why  # the user's own value carries no auto reason


def _model_config(attention: str = "sdpa", **extra):
    from transformers import LlamaConfig

    config = LlamaConfig(**extra)
    config._attn_implementation = attention
    return config


@pytest.mark.parametrize(("attention", "extra", "shared", "reason"), [
    ("sdpa", {}, True, "once"),
    ("eager", {}, True, "once"),
    ("flash_attention_2", {}, False, "takes no 4-D mask"),
    ("sdpa", {"sliding_window": 512}, False, "sliding window (512 tokens)"),
    ("sdpa", {"sliding_window": 4096}, True, "once"),  # longer than any row of two 1,024-token sequences
])
def test_pairs_share_their_prompt_where_the_models_attention_takes_the_mask(attention, extra, shared, reason):
    cfg = load_config(data__train="t.jsonl", objective="dpo")
    resolved, why = resolve_with_reasons(cfg, 200, 135_000_000, CPU, _model_config(attention, **extra))
    assert resolved.preference.shared_prompt is shared and reason in why["preference.shared_prompt"]
    sft, _ = resolve_with_reasons(load_config(data__train="t.jsonl"), 200, 135_000_000, CPU, _model_config())
    assert sft.preference.shared_prompt is False


def test_shared_prompt_true_on_a_model_that_cannot_take_it_is_a_clear_error():
    from tunewright.errors import UserError

    cfg = load_config(data__train="t.jsonl", objective="dpo", overrides=["preference.shared_prompt=true"])
    with pytest.raises(UserError, match="flash_attention_2 attention takes no 4-D mask") as err:
        resolve_with_reasons(cfg, 200, 135_000_000, CPU, _model_config("flash_attention_2"))
    assert "preference.shared_prompt=false" in err.value.fix
    off = load_config(data__train="t.jsonl", objective="dpo", overrides=["preference.shared_prompt=false"])
    assert resolve_with_reasons(off, 200, 135_000_000, CPU, _model_config("flash_attention_2"))[0].preference.shared_prompt is False
