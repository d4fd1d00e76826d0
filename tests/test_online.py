"""The online stage: each answer's own sampler, and a short run (GRPO with a reference, RLOO without one)."""

import json
import math

import pytest
import torch

from alignkit.conversation import single_turn
from alignkit.evaluation import RowNoise, generate
from alignkit.modeldir import load_policy
from alignkit.policy import prepare_tokenizer
from tests.conftest import stage_main, write_params


def test_row_noise_samples_each_rows_distribution():
    """Gumbel-max over the warped scores: over many seeds, each token's share is its softmax(scores / T)
    probability; top-p leaves out the tail."""
    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    counts = torch.zeros(4)
    for seed in range(4000):
        counts[RowNoise([seed], 0.7, 0, 1.0)(None, scores.clone()).argmax()] += 1
    assert torch.allclose(counts / 4000, torch.softmax(scores[0] / 0.7, -1), atol=0.02)
    # top_p 0.9 keeps the first two tokens (0.76 + 0.18 of the mass at T = 0.7): the others are never drawn
    kept = {RowNoise([seed], 0.7, 0, 0.9)(None, scores.clone()).argmax().item() for seed in range(500)}
    assert kept == {0, 1}


@pytest.fixture(scope="module")
def policy(sft_model):
    model, tokenizer = load_policy(str(sft_model / "sft"))
    return model, prepare_tokenizer(tokenizer)


def test_an_answers_sample_does_not_depend_on_what_shares_its_batch(policy):
    model, tokenizer = policy
    gen = {"temperature": 0.7, "top_p": 0.95, "top_k": 0, "max_new_tokens": 12}
    questions = [single_turn(q) for q in ("What is 12 plus 30?", "What is the capital of Italy?", "Define a noun.")]
    together, _ = generate(model, tokenizer, questions, gen, 3, 0, None, 64, row_seeds=[5, 6, 7])
    alone, _ = generate(model, tokenizer, questions[1:2], gen, 1, 0, None, 64, row_seeds=[6])
    assert together[1] == alone[0]
    # another seed, another sample (of the same prompt)
    other = {generate(model, tokenizer, questions[1:2], gen, 1, 0, None, 64, row_seeds=[s])[0][0] for s in range(8)}
    assert len(other) > 1


def run_online(sft_model, reward_model, prepared_root, out, **online):
    out.mkdir()
    params = write_params(
        out / "params.yaml", online={"max_steps_per_epoch": 2, "prompts_per_step": 2, "checkpoint_every": 0, **online}
    )
    rollouts = []
    argv = ["--params", str(params), "--data", str(prepared_root), "--sft", str(sft_model / "sft")]
    argv += ["--rewards", str(reward_model / "models"), "--out", str(out / "online"), "--metrics", str(out / "m.json")]
    argv += ["--live", str(out / "live"), "--checkpoints", str(out / "checkpoints")]
    stage_main("online")(argv, step_hook=lambda step, roll: rollouts.append(roll))
    return json.loads((out / "m.json").read_text()), rollouts


@pytest.mark.slow
def test_a_short_grpo_run_and_an_rloo_run_without_a_reference(
    sft_model, reward_model, prepared_root, tmp_path, monkeypatch
):
    metrics, rollouts = run_online(sft_model, reward_model, prepared_root, tmp_path / "grpo")
    assert metrics["steps"] == len(rollouts) == 2 and metrics["answers_generated"] == 2 * 2 * 4
    assert metrics["reference_forwards"] == 2 and metrics["kl"] >= 0  # one micro-batch per step
    for roll in rollouts:  # groups of num_generations answers; GRPO's advantages sum to 0 in each
        assert roll["advantages"].view(-1, 4).sum(1).abs().max() < 1e-4
        assert len(roll["texts"]) == 8
    assert set(metrics["val_after"]) >= {"reward", "score", "score_helpful", "rule_ends_turn", "rule_number"}
    assert (tmp_path / "grpo" / "online" / "model.safetensors").is_file()

    # beta 0: no reference model is loaded -- the SFT policy is loaded once, for the policy -- and none is run
    from alignkit import modeldir

    loads = []
    real = modeldir.load_policy
    monkeypatch.setattr(modeldir, "load_policy", lambda *a, **k: loads.append(a) or real(*a, **k))
    metrics, rollouts = run_online(
        sft_model, reward_model, prepared_root, tmp_path / "rloo", algorithm="rloo", beta=0.0
    )
    assert metrics["algorithm"] == "rloo" and metrics["reference_forwards"] == 0 and metrics["kl"] is None
    assert len(loads) == 1
    for roll in rollouts:  # leave-one-out advantages also sum to 0 within a group
        assert roll["advantages"].view(-1, 4).sum(1).abs().max() < 1e-4
    assert not (tmp_path / "rloo" / "live" / "plots" / "metrics" / "train" / "kl.tsv").exists()
    assert math.isfinite(metrics["val_reward_after"])
