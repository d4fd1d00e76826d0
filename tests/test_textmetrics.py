"""Text metrics against values worked out by hand."""

import math

import pytest

from alignkit.textmetrics import bleu, distinct_n, rouge, tokenize, win_rate


def test_tokenize_splits_words_and_punctuation_without_nltk_data():
    assert tokenize("The capital of Italy is Rome.") == ["the", "capital", "of", "italy", "is", "rome", "."]


def test_bleu_identical_is_one_and_disjoint_is_near_zero():
    assert bleu(["the cat sat on the mat ."], ["the cat sat on the mat ."]) == pytest.approx(1.0)
    assert bleu(["a b c d e"], ["v w x y z"]) < 0.01


def test_bleu_by_hand():
    """reference 'a b c d e f', hypothesis 'a b c d e x' (6 tokens each, brevity penalty 1).
    Matches: 1-grams 5/6, 2-grams 4/5, 3-grams 3/4, 4-grams 2/3.
    BLEU = (5/6 * 4/5 * 3/4 * 2/3) ** (1/4) = (1/3) ** 0.25 = 0.759836."""
    assert bleu(["a b c d e f"], ["a b c d e x"]) == pytest.approx((1 / 3) ** 0.25, abs=1e-6)


def test_rouge_by_hand():
    """reference 'the cat sat', hypothesis 'the cat ran':
    ROUGE-1: 2 of 3 unigrams match, P = R = 2/3 -> F1 = 2/3.
    ROUGE-2: bigrams (the cat), (cat sat) vs (the cat), (cat ran): 1 of 2 -> F1 = 1/2.
    ROUGE-L: longest common subsequence 'the cat' = 2 -> F1 = 2/3."""
    scores = rouge(["the cat sat"], ["the cat ran"])
    assert scores["rouge1"] == pytest.approx(2 / 3)
    assert scores["rouge2"] == pytest.approx(1 / 2)
    assert scores["rougeL"] == pytest.approx(2 / 3)


def test_rouge_stems():
    """'cats running' and 'cat runs' stem to the same words: ROUGE-1 F1 = 1."""
    assert rouge(["cats running"], ["cat runs"])["rouge1"] == pytest.approx(1.0)


def test_distinct_by_hand():
    """'a b a b' and 'a c': unigrams a b a b a c -> 3 distinct / 6 = 0.5;
    bigrams (a b) (b a) (a b) (a c) -> 3 distinct / 4 = 0.75."""
    assert distinct_n(["a b a b", "a c"], 1) == 0.5
    assert distinct_n(["a b a b", "a c"], 2) == 0.75
    assert distinct_n(["", "a"], 2) == 0.0


def test_win_rate_counts_the_same_answer_a_tie_whatever_its_scores():
    """Items 1 and 2 hold the same text on both sides, scored 2.0000001 vs 2.0 and 1.0000001 vs 1.0 by
    differently padded batches: both are ties (0.5 each), and item 0 (3 > 1) a win: (1 + 0.5 + 0.5) / 3.
    Judged by the scores alone, the noise would make them wins: (1 + 1 + 1) / 3."""
    assert win_rate([3.0, 2.0000001, 1.0000001], [1.0, 2.0, 1.0], [False, True, True]) == pytest.approx(2 / 3)
    assert win_rate([3.0, 2.0000001, 1.0000001], [1.0, 2.0, 1.0]) == 1.0
    assert win_rate([0.0], [5.0], [True]) == 0.5


def test_win_rate_counts_ties_half():
    """wins: 3 > 1, tie 2 = 2, loss 0 < 5 -> (1 + 0.5 + 0) / 3 = 0.5."""
    assert win_rate([3, 2, 0], [1, 2, 5]) == 0.5
    assert math.isclose(win_rate([1.0, 1.0], [0.0, 0.0]), 1.0)
