"""GRPO and RLOO as pure functions, on tensors worked out by hand; RLOO against trl 0.11.4's lines (bench/peers.py
transcribes them and checks them against trl's source as text)."""

import math
import sys

import pytest
import torch

from alignkit.losses import aggregate, clipped_objective, group_advantages, k3_kl, rloo_advantages
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import peers  # noqa: E402

EPS = 1e-4  # group_advantages' default


def test_grpo_advantages_normalise_within_each_group():
    # group 1: rewards 1, 2, 3 -> mean 2, unbiased std 1; group 2: all 5 -> no signal
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    a = group_advantages(rewards, 3)
    assert torch.allclose(a, torch.tensor([-1 / (1 + EPS), 0.0, 1 / (1 + EPS), 0.0, 0.0, 0.0]))


def test_grpo_advantages_without_the_std_are_only_centred():
    # Dr. GRPO: group 0, 4 -> mean 2; group 1, 1 -> 0 (all equal)
    a = group_advantages(torch.tensor([0.0, 4.0, 1.0, 1.0]), 2, scale=False)
    assert a.tolist() == [-2.0, 2.0, 0.0, 0.0]
    # with the std (unbiased: sqrt(8) for 0, 4): +-2 / (2.8284 + 1e-4)
    scaled = group_advantages(torch.tensor([0.0, 4.0, 1.0, 1.0]), 2)
    assert scaled[1].item() == pytest.approx(2 / (math.sqrt(8) + EPS))


def test_rloo_advantages_leave_one_out():
    # scores 1, 2, 6: baselines (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5
    a = rloo_advantages(torch.tensor([1.0, 2.0, 6.0]), torch.zeros(3), 0.5, 3)
    assert a.tolist() == [-3.0, -1.5, 4.5]
    # the KL goes into the reward: r = score - 0.5 x KL = 0, 2, 6 -> baselines 4, 3, 1
    a = rloo_advantages(torch.tensor([1.0, 2.0, 6.0]), torch.tensor([2.0, 0.0, 0.0]), 0.5, 3)
    assert a.tolist() == [-4.0, -1.0, 5.0]


def test_rloo_advantages_equal_trl_rloo_trainers():
    """trl repeats the batch of B prompts k times (row j*B + p: prompt p's j-th answer) and puts the KL, summed over
    the answer, into the reward with kl_coef; our groups are contiguous (row p*k + j). Same numbers either way."""
    torch.manual_seed(0)
    prompts, k, tokens, beta = 3, 4, 5, 0.05
    scores = torch.randn(prompts * k)
    logprobs, ref_logprobs = -torch.rand(prompts * k, tokens) * 3, -torch.rand(prompts * k, tokens) * 3
    assert peers.trl_rloo_source_matches()  # the transcription is trl 0.11.4's code, line for line
    theirs = peers.trl_rloo_advantages(logprobs, ref_logprobs, scores, beta, k)  # trl's order: row j * B + p
    order = [j * prompts + p for p in range(prompts) for j in range(k)]  # ours: p * k + j
    ours = rloo_advantages(scores[order], (logprobs - ref_logprobs).sum(1)[order], beta, k)
    assert torch.allclose(ours, theirs[order], atol=1e-6)


def test_k3_kl_is_never_negative_and_zero_where_policy_is_reference():
    torch.manual_seed(1)
    logps, ref = -torch.rand(4, 6) * 5, -torch.rand(4, 6) * 5
    assert (k3_kl(logps, ref) >= 0).all()
    assert torch.equal(k3_kl(logps, logps), torch.zeros(4, 6))
    # d = log pi_ref - log pi = ln 2: e^d - d - 1 = 2 - ln 2 - 1
    assert k3_kl(torch.tensor([math.log(0.25)]), torch.tensor([math.log(0.5)])).item() == pytest.approx(1 - math.log(2))


def test_the_ratio_is_clipped_at_epsilon_below_and_epsilon_high_above():
    # ratios 0.5, 1, 1.5 against the old policy; clip range [0.8, 1.28]
    logps = torch.log(torch.tensor([[0.5, 1.0, 1.5]]))
    old = torch.zeros(1, 3)
    # positive advantage: min(rho, clip(rho)) -> 0.5, 1, 1.28 (the top is clipped)
    losses, clipped = clipped_objective(logps, old, torch.tensor([1.0]), 0.2, 0.28)
    assert torch.allclose(losses, torch.tensor([[-0.5, -1.0, -1.28]]))
    assert clipped.tolist() == [[False, False, True]]
    # negative advantage: min(-rho, -clip(rho)) -> -0.8, -1, -1.5 (the bottom is clipped)
    losses, clipped = clipped_objective(logps, old, torch.tensor([-1.0]), 0.2, 0.28)
    assert torch.allclose(losses, torch.tensor([[0.8, 1.0, 1.5]]))
    assert clipped.tolist() == [[True, False, False]]


def test_a_clipped_token_gets_no_gradient():
    logps = torch.log(torch.tensor([[0.5, 1.0, 1.5]])).requires_grad_()
    losses, _ = clipped_objective(logps, torch.zeros(1, 3), torch.tensor([1.0]), 0.2, 0.28)
    losses.sum().backward()
    # d(-rho)/d(log rho) = -rho where unclipped; 0 at the clipped 1.5
    assert torch.allclose(logps.grad, torch.tensor([[-0.5, -1.0, 0.0]]))


LOSSES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[True, True, True], [True, False, False]])


def test_each_loss_aggregation():
    # grpo: (6/3 + 4/1) / 2 answers; dapo: 10 / 4 tokens; dr_grpo: 10 / (2 answers x 4 max_new_tokens)
    assert aggregate(LOSSES, MASK, "grpo", 4).item() == pytest.approx(3.0)
    assert aggregate(LOSSES, MASK, "dapo", 4).item() == pytest.approx(2.5)
    assert aggregate(LOSSES, MASK, "dr_grpo", 4).item() == pytest.approx(1.25)
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'"):
        aggregate(LOSSES, MASK, "mean", 4)


@pytest.mark.parametrize("how", ["grpo", "dapo", "dr_grpo"])
def test_micro_batches_add_up_to_the_rollouts_loss(how):
    whole = aggregate(LOSSES, MASK, how, 4)
    parts = sum(aggregate(LOSSES[i : i + 1], MASK[i : i + 1], how, 4, sequences=2, tokens=MASK.sum()) for i in (0, 1))
    assert parts.item() == pytest.approx(whole.item())


@pytest.mark.parametrize("scale", [True, False])
def test_a_group_whose_rewards_are_all_equal_gives_no_gradient(scale):
    # two groups of two: the first differs, the second is all 1.0
    advantages = group_advantages(torch.tensor([0.0, 1.0, 1.0, 1.0]), 2, scale=scale)
    logps = (-torch.rand(4, 3)).requires_grad_()
    losses, _ = clipped_objective(logps, logps.detach(), advantages, 0.2, 0.28)
    aggregate(losses, torch.ones(4, 3, dtype=torch.bool), "dapo", 3).backward()
    assert (logps.grad[2:] == 0).all() and (logps.grad[:2] != 0).all()
