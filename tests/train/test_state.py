"""TrainState's choice of the best evaluation by train.best_metric."""
from __future__ import annotations

from tunewright.train.state import TrainState


def _feed(state: TrainState, rows: list[dict], metric: str) -> list[bool]:
    marks = []
    for k, row in enumerate(rows, start=1):
        state.step = 10 * k
        marks.append(state.record_eval(row, metric))
    return marks


def test_exact_match_decides_and_a_tie_goes_to_the_lower_loss():
    rows = [{"eval_loss": 0.5, "eval_exact_match": 0.6}, {"eval_loss": 0.6, "eval_exact_match": 0.8},
            {"eval_loss": 0.4, "eval_exact_match": 0.8}, {"eval_loss": 0.3, "eval_exact_match": 0.7},
            {"eval_loss": 0.45, "eval_exact_match": 0.8}]
    state = TrainState()
    assert _feed(state, rows, "eval_exact_match") == [True, True, True, False, False]
    assert (state.best_step, state.best_score, state.best_eval_loss, state.evals_without_gain) == (30, 0.8, 0.4, 2)


def test_by_loss_the_lowest_loss_wins_whatever_the_exact_match():
    rows = [{"eval_loss": 0.5, "eval_exact_match": 0.6}, {"eval_loss": 0.6, "eval_exact_match": 0.9},
            {"eval_loss": 0.4, "eval_exact_match": 0.1}]
    state = TrainState()
    assert _feed(state, rows, "eval_loss") == [True, False, True]
    assert (state.best_step, state.best_score) == (30, 0.4)


def test_a_state_saved_before_best_score_existed_resumes_comparing_by_its_loss():
    state = TrainState.from_json({"step": 20, "best_eval_loss": 0.5, "best_step": 20, "evals_without_gain": 0})
    assert state.best_score == 0.5
    state.step = 30
    assert not state.record_eval({"eval_loss": 0.55}, "eval_loss") and state.evals_without_gain == 1
