"""The evaluate stage: one metrics schema per model, offline, seeded."""

import json
import shutil

import pytest

from alignkit.conversation import as_text, from_json
from tests.conftest import stage_main, write_params

SCHEMA = {
    "objective",
    "rules",
    "n",
    "n_unsafe",
    "n_pairs",
    "bleu",
    "rouge1",
    "rouge2",
    "rougeL",
    "reward_mean",
    "reward_mean_ci",
    "reward_std",
    "win_rate_vs_reference",
    "win_rate_vs_reference_ci",
    "judge_mean",
    "judge_mean_ci",
    "judge_win_rate_vs_reference",
    "judge_win_rate_vs_reference_ci",
    "preference_accuracy",
    "preference_accuracy_ci",
    "preference_accuracy_normalized",
    "preference_accuracy_normalized_ci",
    "kl_to_reference",
    "kl_to_reference_ci",
    "mean_length",
    "distinct_1",
    "distinct_2",
    "reward_models",
    "judges",
}
PER_MODEL = {"mean", "mean_ci", "win_rate_vs_reference", "win_rate_vs_reference_ci"}  # reward_models.<name>


TEST_ROWS = 48  # of the sample's test split: enough for every metric, a quarter of the generation


@pytest.fixture(scope="module")
def cut_root(prepared_root, tmp_path_factory):
    """The prepared helpfulness set with its test split cut to its first TEST_ROWS pairs."""
    root = tmp_path_factory.mktemp("cut")
    shutil.copytree(prepared_root / "helpful", root / "helpful")
    lines = (root / "helpful" / "test.jsonl").read_text().splitlines(keepends=True)
    (root / "helpful" / "test.jsonl").write_text("".join(lines[:TEST_ROWS]))
    return root


@pytest.fixture(scope="module")
def evaluated(sft_model, reward_model, cut_root, tmp_path_factory):
    """evaluate@sft on the (cut) test split, with the network cut off."""
    import socket

    out = tmp_path_factory.mktemp("eval")
    # SFT against a second copy of itself: loaded twice, so evaluate's shortcut for the same directory does not
    # apply and the test checks that two loads sample the same answers under one seed.
    copy = shutil.copytree(sft_model / "sft", out / "sft-copy")
    mp = pytest.MonkeyPatch()
    mp.setattr(socket.socket, "connect", lambda *a: (_ for _ in ()).throw(AssertionError("network access")))
    try:
        stage_main("evaluate")(
            [
                "--params",
                str(write_params(out / "params.yaml", eval={"max_new_tokens": 10})),
                "--name",
                "sft",
                "--model",
                str(sft_model / "sft"),
                "--sft",
                str(copy),
                "--data",
                str(cut_root),
                "--rewards",
                str(reward_model / "models"),
                # The judge here is the reward model itself: what the test checks is the judges' path through
                # evaluate (their scores, intervals, generations), which the same model makes easy to check.
                "--judges",
                str(reward_model / "models"),
                "--metrics",
                str(out / "sft.json"),
                "--generations",
                str(out / "sft.jsonl"),
                "--plot",
                str(out / "plot.json"),
            ]
        )
    finally:
        mp.undo()
    return out


def test_every_model_goes_to_the_default_device(sft_model, reward_model, cut_root, tmp_path, monkeypatch):
    """On a GPU machine evaluate generates and scores there: the policy, the SFT model, each reward model and each
    judge is moved to alignkit.training.default_device(). A meta device stands in for the GPU here, and evaluation
    itself for a probe that reads where each model is (before it, evaluate left every model on the CPU)."""
    import torch

    import alignkit.evaluation
    import alignkit.training

    class Probed(Exception):
        pass

    seen = {}

    def probe(name, policy, sft, tokenizer, scorer, judges, *rest):
        seen["policy"], seen["sft"] = policy.device.type, sft.device.type
        for kind, models in (("reward", scorer), ("judge", judges)):
            for n, s in models.scorers.items():
                seen[f"{kind} {n}"] = next(s.model.parameters()).device.type
        raise Probed

    monkeypatch.setattr(alignkit.training, "default_device", lambda: torch.device("meta"))
    monkeypatch.setattr(alignkit.evaluation, "evaluate_policy", probe)
    copy = shutil.copytree(sft_model / "sft", tmp_path / "sft-copy")
    out = tmp_path / "out"
    args = ["--params", str(write_params(tmp_path / "params.yaml")), "--name", "sft"]
    args += ["--model", str(sft_model / "sft"), "--sft", str(copy), "--data", str(cut_root)]
    args += ["--rewards", str(reward_model / "models"), "--judges", str(reward_model / "models")]
    args += ["--metrics", str(out / "m.json"), "--generations", str(out / "g.jsonl"), "--plot", str(out / "p.json")]
    with pytest.raises(Probed):
        stage_main("evaluate")(args)
    assert seen == {"policy": "meta", "sft": "meta", "reward helpful": "meta", "judge helpful": "meta"}


def test_metrics_schema_and_ranges(evaluated):
    metrics = json.loads((evaluated / "sft.json").read_text())
    assert set(metrics) == SCHEMA  # one reward model, no safety model: no violation rate
    assert metrics["objective"] == "sft"  # from the model folder's alignment.json
    assert (metrics["n"], metrics["n_unsafe"], metrics["n_pairs"]) == (TEST_ROWS, 0, TEST_ROWS)
    for key in ("bleu", "rougeL", "win_rate_vs_reference", "preference_accuracy", "distinct_1"):
        assert 0.0 <= metrics[key] <= 1.0, key
    per_model = metrics.pop("reward_models")
    assert list(per_model) == ["helpful"] and set(per_model["helpful"]) == PER_MODEL
    # one reward model, weight 1, not whitened: the combined reward is its raw score, and so are the win rates
    assert metrics["reward_mean"] == pytest.approx(per_model["helpful"]["mean"], abs=1e-6)
    assert metrics["win_rate_vs_reference"] == per_model["helpful"]["win_rate_vs_reference"]
    # the judge is that same model here: its scores are the reward model's
    assert metrics["judge_mean"] == pytest.approx(metrics["reward_mean"], abs=1e-6)
    assert metrics["judges"]["helpful"]["mean_ci"] == pytest.approx(per_model["helpful"]["mean_ci"])
    assert metrics["mean_length"] > 2
    # each verifiable rule over the prompts it applies to: ends_turn all of them, number those with an expected answer
    rules = metrics["rules"]
    assert set(rules) == {"number", "ends_turn"} and rules["ends_turn"]["n"] == TEST_ROWS > rules["number"]["n"]
    assert 0 <= rules["ends_turn"]["pass_rate"] <= 1 and len(rules["ends_turn"]["pass_rate_ci"]) == 2


def test_every_mean_has_its_interval_around_it(evaluated):
    metrics = json.loads((evaluated / "sft.json").read_text())
    for key in ("reward_mean", "win_rate_vs_reference", "judge_mean", "preference_accuracy", "kl_to_reference"):
        lo, hi = metrics[f"{key}_ci"]
        assert lo <= metrics[key] <= hi, key
    lo, hi = metrics["reward_mean_ci"]
    assert hi - lo > 0  # 48 different answers: some spread
    assert metrics["kl_to_reference_ci"] == [0.0, 0.0]  # SFT against a copy of itself: KL 0 on every prompt


def test_a_model_against_itself(evaluated):
    """The SFT model evaluated against a second copy of itself: the same seeded samples and log-probs, KL 0."""
    metrics = json.loads((evaluated / "sft.json").read_text())
    assert metrics["kl_to_reference"] == 0.0


def test_generations_are_readable_and_match_the_reward(evaluated, cut_root):
    rows = [json.loads(line) for line in open(evaluated / "sft.jsonl")]
    tests = [json.loads(line) for line in open(cut_root / "helpful" / "test.jsonl")]
    assert len(rows) == len(tests) == TEST_ROWS
    assert set(rows[0]) == {
        "question",
        "prompt",
        "set",
        "unsafe",
        "reference",
        "answer",
        "reward",
        "scores",
        "reference_reward",
        "judge",
        "judge_scores",
        "violation",
        "rules",
        "kl",
    }
    assert all(r["set"] == "helpful" and r["violation"] is None and r["kl"] == 0.0 for r in rows)
    assert all(r["unsafe"] is False and set(r["scores"]) == {"helpful"} for r in rows)
    assert [r["prompt"] for r in rows] == [t["prompt"] for t in tests]  # the conversation, turn by turn
    assert [r["question"] for r in rows] == [as_text(from_json(t["prompt"])) for t in tests]
    metrics = json.loads((evaluated / "sft.json").read_text())
    assert sum(r["reward"] for r in rows) / len(rows) == pytest.approx(metrics["reward_mean"], abs=1e-3)
    plot = json.loads((evaluated / "plot.json").read_text())
    plotted = SCHEMA | {"reward_helpful", "rule_ends_turn", "rule_number"}
    assert {p["model"] for p in plot} == {"sft"} and {p["metric"] for p in plot} <= plotted
    # a generation's rules: true or false, or null for a rule that needs an expected answer the prompt lacks
    assert all(set(r["rules"]) == {"number", "ends_turn"} and r["rules"]["ends_turn"] is not None for r in rows)
    assert {r["rules"]["number"] is None for r in rows} == {True, False}
    assert sum(r["judge"] for r in rows) / len(rows) == pytest.approx(metrics["judge_mean"], abs=1e-3)
