"""The evaluate stage: one metrics schema per model, offline, seeded."""

import json
import math
import shutil

import pytest

from alignkit.conversation import as_text, from_json
from tests.conftest import stage_main, write_params

SCHEMA = {
    "bleu",
    "rouge1",
    "rouge2",
    "rougeL",
    "reward_mean",
    "reward_std",
    "win_rate_vs_sft",
    "win_rate_vs_reference",
    "preference_accuracy",
    "preference_accuracy_normalized",
    "kl_to_reference",
    "mean_length",
    "distinct_1",
    "distinct_2",
    "reward_models",
}
PER_MODEL = {"mean", "win_rate_vs_sft", "win_rate_vs_reference"}  # metrics["reward_models"][name]


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


def test_metrics_schema_and_ranges(evaluated):
    metrics = json.loads((evaluated / "sft.json").read_text())
    assert set(metrics) == SCHEMA  # one reward model, no safety model: no violation rate
    for key in SCHEMA - {"reward_mean", "reward_std", "kl_to_reference", "mean_length", "reward_models"}:
        assert 0.0 <= metrics[key] <= 1.0, key
    per_model = metrics.pop("reward_models")
    assert list(per_model) == ["helpful"] and set(per_model["helpful"]) == PER_MODEL
    assert all(math.isfinite(v) for v in [*metrics.values(), *per_model["helpful"].values()])
    # one reward model, weight 1, not whitened: the combined reward is its raw score, and so are the win rates
    assert metrics["reward_mean"] == pytest.approx(per_model["helpful"]["mean"], abs=1e-6)
    assert metrics["win_rate_vs_reference"] == per_model["helpful"]["win_rate_vs_reference"]
    assert metrics["mean_length"] > 2


def test_a_model_against_itself(evaluated):
    """The SFT model evaluated as itself: identical seeded samples tie every time (win rate 0.5), KL 0."""
    metrics = json.loads((evaluated / "sft.json").read_text())
    assert metrics["win_rate_vs_sft"] == 0.5
    assert metrics["kl_to_reference"] == 0.0


def test_generations_are_readable_and_match_the_reward(evaluated, cut_root):
    rows = [json.loads(line) for line in open(evaluated / "sft.jsonl")]
    tests = [json.loads(line) for line in open(cut_root / "helpful" / "test.jsonl")]
    assert len(rows) == len(tests) == TEST_ROWS
    assert set(rows[0]) == {"question", "prompt", "unsafe", "reference", "answer", "reward", "scores"}
    assert all(r["unsafe"] is False and set(r["scores"]) == {"helpful"} for r in rows)
    assert [r["prompt"] for r in rows] == [t["prompt"] for t in tests]  # the conversation, turn by turn
    assert [r["question"] for r in rows] == [as_text(from_json(t["prompt"])) for t in tests]
    metrics = json.loads((evaluated / "sft.json").read_text())
    assert sum(r["reward"] for r in rows) / len(rows) == pytest.approx(metrics["reward_mean"], abs=1e-3)
    plot = json.loads((evaluated / "plot.json").read_text())
    assert {p["model"] for p in plot} == {"sft"} and {p["metric"] for p in plot} <= SCHEMA | {"reward_helpful"}
