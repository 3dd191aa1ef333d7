"""Each metric against values worked out by hand, and the user-scorer loader."""
from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu

from tunewright.errors import UserError
from tunewright.evaluate import metrics as m


def test_exact_match_is_literal_apart_from_outer_whitespace():
    assert m.exact_match("Paris", "Paris") == 1.0
    assert m.exact_match("Paris", " Paris\n") == 1.0
    assert m.exact_match("Paris", "paris") == 0.0
    assert m.exact_match("Paris", "Paris.") == 0.0


def test_normalized_accuracy_ignores_case_whitespace_and_punctuation():
    assert m.normalized_accuracy("Paris.", "  paris ") == 1.0
    assert m.normalized_accuracy("Yes, it is!", "yes  it is") == 1.0
    assert m.normalized_accuracy("positive", "POSITIVE\n") == 1.0
    assert m.normalized_accuracy("«Oui» — c'est ça", "oui c est ça") == 1.0  # Unicode punctuation too
    assert m.normalized_accuracy("Paris", "Lyon") == 0.0
    assert m.normalized_accuracy("the cat", "cat") == 0.0  # articles count here (only token F1 drops them)


def test_token_f1_hand_computed():
    # SQuAD tokens: ref [cat sat on mat], answer [cat sat on hat] -> 3 common, P = R = 3/4
    assert m.token_f1("The cat sat on the mat.", "A cat sat on a hat") == pytest.approx(0.75)
    # repeats count once per match: ref [cat cat dog], answer [cat dog dog bird] -> 2 common, P = 2/4, R = 2/3, F1 = 4/7
    assert m.token_f1("cat cat dog", "cat dog dog bird") == pytest.approx(4 / 7)
    assert m.token_f1("cat", "dog") == 0.0
    assert m.token_f1("", "") == 1.0
    assert m.token_f1("the", "") == 1.0  # only an article: both normalise to nothing
    assert m.token_f1("cat", "") == 0.0


def test_rouge_l_hand_computed():
    # LCS of "the cat sat on the mat" (6) and "the cat on the mat" (5) is 5 words: P = 1, R = 5/6, F = 10/11
    assert m.rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    assert m.rouge_l("alpha beta", "alpha beta") == pytest.approx(1.0)
    assert m.rouge_l("alpha beta", "gamma") == 0.0


def test_chrf_hand_computed():
    # chars of "ab" vs "abc": 1-grams P = 2/2, R = 2/3; 2-grams P = 1/1, R = 1/2; higher orders have no
    # hypothesis n-grams, so (sacreBLEU's effective order) average P = 1, R = 7/12;
    # F_beta=2 = 5 * 1 * 7/12 / (4 * 1 + 7/12) = 7/11
    assert m.sentence_chrf("abc", "ab") == pytest.approx(100 * 7 / 11)
    assert m.sentence_chrf("same text", "same text") == pytest.approx(100.0)
    assert m.sentence_chrf("abc", "xyz") == 0.0


def test_bleu_hand_computed():
    # "the cat sat" against "the cat sat on the mat": 1-, 2- and 3-gram precision 100% (4-grams: none, so the
    # effective order is 3); brevity penalty exp(1 - 6/3) = exp(-1)
    assert m.sentence_bleu("the cat sat on the mat", "the cat sat") == pytest.approx(100 * math.exp(-1))
    assert m.sentence_bleu("a b c d", "a b c d") == pytest.approx(100.0)


def test_corpus_bleu_sums_statistics_before_the_score():
    refs, answers = ["the cat sat on the mat", "a b c d"], ["the cat sat", "a b c d"]
    stats = m.bleu_stats(refs, answers)
    # all n-gram precisions 100% over the corpus (7, 5, 3, 1 n-grams); BP = exp(1 - 10/7)
    assert m.corpus_value("bleu", stats) == pytest.approx(100 * math.exp(1 - 10 / 7))
    assert m.corpus_value("bleu", stats) == pytest.approx(sacrebleu.corpus_bleu(answers, [refs]).score)


def test_corpus_chrf_matches_sacrebleu():
    refs = ["The quick brown fox.", "Lazy dogs sleep all day.", "abc"]
    answers = ["The quick brown dog.", "Dogs sleep.", "ab"]
    assert m.corpus_value("chrf", m.chrf_stats(refs, answers)) == pytest.approx(sacrebleu.corpus_chrf(answers, [refs]).score)


def test_answer_length_counts_words():
    assert m.answer_length("one two  three\nfour") == 4.0
    assert m.answer_length("") == 0.0


def test_loss_is_token_weighted_and_perplexity_its_exponential():
    # example 1: NLL 1.0 over 1 token, example 2: NLL 6.0 over 3 tokens -> 7/4, not the mean of 1.0 and 2.0
    stats = np.array([[1.0, 1.0], [6.0, 3.0]])
    assert m.corpus_value("loss", stats) == pytest.approx(1.75)
    assert m.corpus_value("perplexity", stats) == pytest.approx(math.exp(1.75))
    assert math.isnan(m.corpus_value("loss", np.zeros((2, 2))))


def test_mean_metrics_average_over_examples():
    per_example = [m.example_scores("Paris", "Paris"), m.example_scores("Paris", "Lyon")]
    stats = m.generation_stats(["Paris", "Paris"], ["Paris", "Lyon"], per_example)
    assert m.corpus_value("exact_match", stats["exact_match"]) == 0.5
    assert m.corpus_value("length", stats["length"]) == 1.0
    assert set(stats) == {"exact_match", "accuracy", "token_f1", "rouge_l", "length", "bleu", "chrf"}


def test_example_scores_has_every_generation_metric():
    scores = m.example_scores("The answer is 4.", "the answer is 4")
    assert set(scores) == set(m.GENERATION_METRICS)
    assert scores["exact_match"] == 0.0 and scores["accuracy"] == 1.0 and scores["token_f1"] == 1.0


def test_load_scorer_from_module_and_from_file(tmp_path, monkeypatch):
    (tmp_path / "my_scorers.py").write_text("def contains(prompt, reference, answer):\n    return float(reference in answer)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = m.load_scorer("my_scorers:contains")
    assert fn("q", "4", "it is 4") == 1.0
    fn = m.load_scorer(f"{tmp_path / 'my_scorers.py'}:contains")
    assert fn("q", "4", "five") == 0.0


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "expected module:function"),
    ("surely_not_a_module_xyz:f", "cannot import"),
    ("math:not_a_function", "has no function"),
    ("missing_file.py:f", "not found"),
])
def test_load_scorer_errors_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        m.load_scorer(spec)


def test_apply_scorer_names_the_example_when_the_scorer_fails():
    with pytest.raises(UserError, match="test.jsonl:3"):
        m.apply_scorer(lambda p, r, a: 1 / 0, "s:f", "p", "r", "a", "test.jsonl:3")
    with pytest.raises(UserError, match="not a number"):
        m.apply_scorer(lambda p, r, a: "good", "s:f", "p", "r", "a", "test.jsonl:3")
    assert m.apply_scorer(lambda p, r, a: True, "s:f", "p", "r", "a", "x") == 1.0
