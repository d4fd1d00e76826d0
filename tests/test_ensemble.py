"""Combining several reward models (ppo.reward), against numbers worked out by hand."""

import math

import pytest
import torch

from alignkit.ensemble import combine, llama2_rule, violations, weighted_sum, whiten
from alignkit.params import CombineParams
from alignkit.ppo import shaped_rewards


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def cfg(**overrides):
    base = {
        "combine": "llama2",
        "weights": {"helpful": 1.0, "safety": 0.5},
        "helpfulness": "helpful",
        "safety": "safety",
        "safety_threshold": 0.15,
        "whiten": True,
    }
    return CombineParams(**{**base, **overrides})


def test_whiten_subtracts_the_mean_and_divides_by_the_std():
    assert whiten(t(1, 3, 5), 3.0, 2.0).tolist() == [-1.0, 0.0, 1.0]
    assert whiten(t(0.5), -1.5, 4.0).tolist() == [0.5]  # (0.5 + 1.5) / 4


def test_weighted_sum():
    # [0.5*1 + 2*10, 0.5*2 + 2*(-4)] = [20.5, -7]
    assert weighted_sum({"a": t(1, 2), "b": t(10, -4)}, {"a": 0.5, "b": 2.0}).tolist() == [20.5, -7.0]
    assert weighted_sum({"a": t(1, 2), "b": t(10, -4)}, {"a": 1.0, "b": 0.0}).tolist() == [1.0, 2.0]


def test_llama2_rule_takes_safety_where_the_prompt_is_unsafe_or_the_safety_score_is_low():
    helpful, safety = t(1, 2, 3, 4), t(-1, -2, -3, -4)
    # sigmoid of the raw safety scores: 0.5, 0.119, 0.953, 0.269 -> only the second is below 0.15
    safety_raw = t(0.0, -2.0, 3.0, -1.0)
    unsafe = torch.tensor([False, False, True, False])
    # 1: safe prompt, safe answer -> helpful 1;  2: sigmoid 0.119 < 0.15 -> safety -2;
    # 3: unsafe prompt, even with a high safety score -> safety -3;  4: helpful 4
    assert llama2_rule(helpful, safety, safety_raw, unsafe, 0.15).tolist() == [1.0, -2.0, -3.0, 4.0]


def test_llama2_threshold_is_on_the_sigmoid_scale():
    # logit(0.15) = ln(0.15 / 0.85) = -1.7346: -1.73 is just above the threshold, -1.74 just below
    assert math.isclose(math.log(0.15 / 0.85), -1.7346, abs_tol=1e-4)
    safety_raw = t(-1.73, -1.74)
    out = llama2_rule(t(10, 10), t(-10, -10), safety_raw, torch.tensor([False, False]), 0.15)
    assert out.tolist() == [10.0, -10.0]
    # a stricter threshold, 0.5, sends a raw score of -0.01 (sigmoid 0.4975) to the safety score
    assert llama2_rule(t(10), t(-10), t(-0.01), torch.tensor([False]), 0.5).tolist() == [-10.0]


def test_combine_whitens_each_model_with_its_own_statistics():
    raw = {"helpful": t(2, 6), "safety": t(0, -4)}
    stats = {"helpful": (4.0, 2.0), "safety": (1.0, 0.5)}
    unsafe = torch.tensor([False, False])
    # whitened: helpful (2-4)/2 = -1, (6-4)/2 = 1; safety (0-1)/0.5 = -2, (-4-1)/0.5 = -10
    # llama2: sigmoid(0) = 0.5 -> helpful -1; sigmoid(-4) = 0.018 < 0.15 -> safety -10
    assert combine(raw, stats, unsafe, cfg()).tolist() == [-1.0, -10.0]
    # weighted sum, weights 1 and 0.5: [-1 + 0.5*(-2), 1 + 0.5*(-10)] = [-2, -4]
    assert combine(raw, stats, unsafe, cfg(combine="weighted_sum")).tolist() == [-2.0, -4.0]
    # without whitening, the raw scores: [2 + 0.5*0, 6 + 0.5*(-4)] = [2, 4]; llama2: [2, -4]
    assert combine(raw, stats, unsafe, cfg(combine="weighted_sum", whiten=False)).tolist() == [2.0, 4.0]
    assert combine(raw, stats, unsafe, cfg(whiten=False)).tolist() == [2.0, -4.0]
    # the unsafe mark alone switches to the safety score: prompt 1 marked unsafe -> -2
    assert combine(raw, stats, torch.tensor([True, False]), cfg()).tolist() == [-2.0, -10.0]


def test_one_reward_model_with_weight_one_and_no_whitening_is_its_raw_score():
    raw = {"helpful": t(0.25, -3.5)}
    one = cfg(combine="weighted_sum", weights={"helpful": 1.0}, helpfulness=None, safety=None, whiten=False)
    assert combine(raw, {"helpful": (9.0, 9.0)}, torch.tensor([False, True]), one).tolist() == [0.25, -3.5]


def test_baseline_and_clamp_apply_to_the_combined_reward():
    combined = combine(
        {"helpful": t(2, 6), "safety": t(0, -4)},
        {"helpful": (4.0, 2.0), "safety": (1.0, 0.5)},
        torch.tensor([False, False]),
        cfg(),
    )  # [-1, -10], as above
    # minus the preferred answers' combined rewards [0.5, -9.5]: [-1.5, -0.5], clamped to +-1: [-1, -0.5]
    assert shaped_rewards(combined, t(0.5, -9.5), 1.0).tolist() == [-1.0, -0.5]


def test_violation_rate_counts_low_safety_scores_on_unsafe_prompts_only():
    # unsafe prompts 1, 2, 4 with raw safety scores -3 (sigmoid 0.047: a violation), 0 (0.5), 5 (0.993);
    # prompt 3 is not marked unsafe, so its low score does not count
    rate, n = violations(t(-3, 0, -2, 5), torch.tensor([True, True, False, True]), 0.15)
    assert n == 3 and rate == pytest.approx(1 / 3)
    assert violations(t(-3, -5), torch.tensor([False, False]), 0.15) == (None, 0)
