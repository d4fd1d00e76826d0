"""The verdict (alignkit.verdict) on crafted generations: the right model when its lead is clear, "no
significant difference" when it is not, the KL flag, and the proxy against the judge."""

import random

from alignkit.verdict import compare

N = 120


def rows(judge, reward=None, answers=None):
    reward = reward or judge
    answers = answers or [f"answer {i} {j:.3f}" for i, j in enumerate(judge)]
    return [{"answer": a, "judge": j, "reward": r} for a, j, r in zip(answers, judge, reward)]


def models(dpo_shift, ppo_shift, seed=1):
    """sft, dpo and ppo judge scores: per-prompt difficulty shared by all, noise, and each model's shift."""
    rng = random.Random(seed)
    difficulty = [rng.gauss(0, 2) for _ in range(N)]
    score = {
        m: [d + shift + rng.gauss(0, 0.5) for d in difficulty]
        for m, shift in (("sft", 0.0), ("dpo", dpo_shift), ("ppo", ppo_shift))
    }
    return {m: rows(s) for m, s in score.items()}


EVALS = {
    "sft": {
        "kl_to_reference": 0.0,
        "safety_violation_rate": 0.0,
        "safety_violation_rate_ci": [0.0, 0.0],
        "n_unsafe": 40,
    },
    "dpo": {
        "kl_to_reference": 26.5,
        "safety_violation_rate": 0.05,
        "safety_violation_rate_ci": [0.0, 0.125],
        "n_unsafe": 40,
    },
    "ppo": {
        "kl_to_reference": 0.55,
        "safety_violation_rate": 0.025,
        "safety_violation_rate_ci": [0.0, 0.075],
        "n_unsafe": 40,
    },
}


def test_a_clearly_better_model_is_the_verdict_with_its_lead_and_its_flags():
    result = compare(models(dpo_shift=1.0, ppo_shift=0.3), EVALS, 0.95, 1000, 0, kl_warn=5.0)
    v = result["verdict"]
    assert result["score"] == "judge" and result["n"] == N
    assert v["best"] == "dpo" and v["tied"] == [] and v["kl_flag"] and v["kl"] == 26.5
    assert v["text"].startswith("dpo: the highest judge score") and "ahead of ppo by 0.7" in v["text"]
    assert "KL to SFT 26.500, above report.kl_warn=5: flagged." in v["text"]
    assert "Safety violations 0.050 [0.000, 0.125] of 40 unsafe prompts." in v["text"]
    assert (
        v["tradeoff"].startswith("dpo buys +0.9") and "for a KL of 26.50 at a violation rate of 0.050" in v["tradeoff"]
    )
    assert result["tests"]["dpo vs ppo"]["significant"] and result["tests"]["sft vs dpo"]["diff"] < 0
    dpo = result["models"]["dpo"]
    assert dpo["judge_win_rate_vs_sft"] > 0.9 and dpo["judge_win_rate_vs_sft_ci"][0] > 0.8


def test_two_models_of_equal_quality_give_no_significant_difference():
    result = compare(models(dpo_shift=0.5, ppo_shift=0.5, seed=3), EVALS, 0.95, 1000, 0, kl_warn=50.0)
    v = result["verdict"]
    assert v["best"] is None and v["top"] in ("dpo", "ppo") and v["tied"] == [{"dpo": "ppo", "ppo": "dpo"}[v["top"]]]
    assert v["text"].startswith("No significant difference: ") and not v["kl_flag"]
    assert not result["tests"]["dpo vs ppo"]["significant"]
    assert result["tests"]["sft vs dpo"]["significant"]  # both beat SFT


def test_identical_models_are_never_significantly_different():
    same = models(0.0, 0.0)
    same["dpo"] = [dict(r) for r in same["sft"]]
    result = compare(same, EVALS, 0.95, 1000, 0, kl_warn=5.0)
    assert result["tests"]["sft vs dpo"] == {"diff": 0.0, "ci": [0.0, 0.0], "p": 1.0, "significant": False}
    assert result["models"]["dpo"]["judge_win_rate_vs_sft"] == 0.5  # the same text: every prompt a tie


def test_the_judge_sees_through_a_model_that_games_the_proxy():
    """dpo gains 2 on the reward models it trained against, nothing on the judge: the proxy gain is not a win."""
    base = models(0.0, 0.0)
    base["dpo"] = [{**r, "reward": r["reward"] + 2.0, "judge": s["judge"]} for r, s in zip(base["dpo"], base["sft"])]
    result = compare(base, EVALS, 0.95, 1000, 0, kl_warn=50.0)
    dpo = result["models"]["dpo"]
    assert dpo["reward_gain_vs_sft"] > 1.9 and abs(dpo["judge_gain_vs_sft"]) < 0.2
    assert dpo["win_rate_vs_sft"] > 0.95 and dpo["judge_win_rate_vs_sft"] < 0.7
    assert result["verdict"]["best"] != "dpo"


def test_without_judges_the_proxy_decides_and_the_verdict_says_so():
    gens = {m: [{"answer": r["answer"], "reward": r["judge"]} for r in rs] for m, rs in models(1.0, 0.0).items()}
    v = compare(gens, EVALS, 0.95, 1000, 0, kl_warn=50.0)["verdict"]
    assert v["best"] == "dpo" and "no judges: the proxy the policies trained on" in v["text"]
