"""Bootstrap intervals and paired tests (alignkit.stats), on samples small enough to work out by hand."""

import random

import pytest

from alignkit.stats import bootstrap_ci, paired_test, percentile, resample_means
from alignkit.textmetrics import win_items


def test_percentile_interpolates_between_sorted_values():
    assert percentile([1, 2, 3, 4], 0.5) == 2.5  # halfway between 2 and 3
    assert percentile([1, 2, 3, 4], 0.25) == 1.75  # position 0.75: three quarters of the way from 1 to 2
    assert (percentile([1, 2, 3, 4], 0), percentile([1, 2, 3, 4], 1)) == (1, 4)


def test_a_constant_sample_has_an_interval_of_width_zero():
    assert bootstrap_ci([0.7] * 50) == pytest.approx([0.7, 0.7])
    assert bootstrap_ci([]) is None


def test_two_values_resample_to_0_half_or_1_with_probabilities_one_quarter_half_one_quarter():
    means = resample_means([0.0, 1.0], 4000, seed=1)
    share = {v: means.count(v) / len(means) for v in (0.0, 0.5, 1.0)}
    assert share == pytest.approx({0.0: 0.25, 0.5: 0.5, 1.0: 0.25}, abs=0.03)
    assert bootstrap_ci([0.0, 1.0]) == [0.0, 1.0]  # 2.5% and 97.5% of that distribution


def test_the_interval_narrows_as_one_over_the_square_root_of_n():
    rng = random.Random(0)
    small = [rng.random() for _ in range(100)]
    large = small * 16  # the same spread, 16 times the prompts: a quarter of the width
    width = [hi - lo for lo, hi in (bootstrap_ci(small), bootstrap_ci(large))]
    assert width[1] == pytest.approx(width[0] / 4, rel=0.15)
    # For a mean of uniform(0, 1) values, sd 1/sqrt(12): 95% of means within 1.96 sd/sqrt(n) either side.
    assert width[0] == pytest.approx(2 * 1.96 / 12**0.5 / 10, rel=0.2)


def test_the_same_seed_gives_the_same_interval():
    values = [random.Random(3).random() for _ in range(30)]
    assert bootstrap_ci(values, seed=5) == bootstrap_ci(values, seed=5)


def test_identical_models_differ_by_zero_and_not_significantly():
    a = [random.Random(i).random() for i in range(200)]
    result = paired_test(a, list(a))
    assert result == {"diff": 0.0, "ci": [0.0, 0.0], "p": 1.0, "significant": False}


def test_two_models_of_the_same_quality_are_not_significantly_different():
    rng = random.Random(7)
    difficulty = [rng.gauss(0, 2) for _ in range(200)]  # what each prompt does to both models' scores
    a = [d + rng.gauss(0, 1) for d in difficulty]
    b = [d + rng.gauss(0, 1) for d in difficulty]
    result = paired_test(a, b)
    assert not result["significant"] and result["ci"][0] < 0 < result["ci"][1] and result["p"] > 0.05


def test_a_clearly_better_model_is_significantly_better_and_pairing_is_what_finds_it():
    rng = random.Random(7)
    difficulty = [rng.gauss(0, 3) for _ in range(200)]
    a = [d + 0.3 + rng.gauss(0, 0.5) for d in difficulty]  # 0.3 better on every prompt, give or take
    b = [d + rng.gauss(0, 0.5) for d in difficulty]
    result = paired_test(a, b)
    assert result["significant"] and result["p"] < 0.01 and 0.15 < result["diff"] < 0.45
    assert result["ci"][0] > 0
    # Unpaired, each mean's interval is as wide as the prompts' spread (sd 3): the two overlap.
    ci_a, ci_b = bootstrap_ci(a), bootstrap_ci(b)
    assert ci_a[0] < ci_b[1]


def test_a_constant_difference_is_significant_without_any_spread():
    assert paired_test([2.0, 3.0, 4.0], [1.0, 2.0, 3.0]) == {
        "diff": 1.0,
        "ci": [1.0, 1.0],
        "p": 0.0,
        "significant": True,
    }


def test_paired_samples_must_be_of_one_length():
    with pytest.raises(ValueError, match="one non-zero length, got 2 and 3"):
        paired_test([1, 2], [1, 2, 3])


def test_wins_count_a_tie_as_half():
    assert win_items([3, 1, 2], [1, 1, 3]) == [1.0, 0.5, 0.0]
    assert win_items([3, 1], [1, 2], [True, False]) == [0.5, 0.0]  # the same text: a tie, whatever the scores
