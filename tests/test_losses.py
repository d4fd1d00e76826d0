"""Losses against numbers worked out by hand."""

import math

import pytest
import torch

from alignkit.losses import answer_nll, bradley_terry_loss, dpo_loss


def test_bradley_terry_hand_values():
    """chosen = [2, 0, 1], rejected = [0, 0, 3] -> margins m = [2, 0, -2].
    -log sigmoid(m) = log(1 + e^-m):
      m =  2: log(1 + e^-2) = log(1.135335) = 0.126928
      m =  0: log 2                          = 0.693147
      m = -2: log(1 + e^2)  = log(8.389056) = 2.126928
    mean = (0.126928 + 0.693147 + 2.126928) / 3 = 0.982334
    accuracy = share of m > 0 = 1/3; mean margin = 0."""
    loss, accuracy, margin = bradley_terry_loss(torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 3.0]))
    assert math.isclose(loss.item(), 0.982334, abs_tol=1e-6)
    assert math.isclose(accuracy.item(), 1 / 3, abs_tol=1e-7)
    assert margin.item() == 0.0


def test_bradley_terry_gradient():
    """d/dm log(1 + e^-m) = -sigmoid(-m); at m = 0 that is -1/2, so with N = 2 pairs
    d loss / d chosen_i = -1/2 / 2 = -0.25 and d loss / d rejected_i = +0.25."""
    chosen = torch.zeros(2, requires_grad=True)
    rejected = torch.zeros(2, requires_grad=True)
    bradley_terry_loss(chosen, rejected)[0].backward()
    assert torch.allclose(chosen.grad, torch.tensor([-0.25, -0.25]))
    assert torch.allclose(rejected.grad, torch.tensor([0.25, 0.25]))


def test_bradley_terry_is_stable_for_large_margins():
    """m = -200: log(1 + e^200) = 200 + log(1 + e^-200) = 200 to float precision,
    where log(sigmoid(-200)) underflows to log(0) = -inf in float32.
    m = +200: log(1 + e^-200) ~ 1.4e-87, which is 0 in float32."""
    loss, _, _ = bradley_terry_loss(torch.tensor([0.0]), torch.tensor([200.0]))
    assert loss.item() == 200.0
    assert torch.isinf(-torch.log(torch.sigmoid(torch.tensor(-200.0))))
    loss, accuracy, _ = bradley_terry_loss(torch.tensor([200.0]), torch.tensor([0.0]))
    assert loss.item() == 0.0 and accuracy.item() == 1.0


def test_dpo_loss_hand_values():
    """policy logps: chosen -1, rejected -3; reference logps: chosen -2, rejected -2; beta 0.5.
    chosen log-ratio  = -1 - (-2) =  1 -> chosen reward   = 0.5 * 1  =  0.5
    rejected log-ratio = -3 - (-2) = -1 -> rejected reward = 0.5 * -1 = -0.5
    loss = -log sigmoid(0.5 * (1 - (-1))) = log(1 + e^-1) = 0.3132617"""
    losses, chosen, rejected = dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5
    )
    assert math.isclose(losses.item(), 0.3132617, abs_tol=1e-6)
    assert chosen.item() == 0.5 and rejected.item() == -0.5


def test_dpo_loss_is_log2_when_policy_equals_reference():
    """Equal policy and reference log-ratios are 0 whatever the log-probs: -log sigmoid(0) = log 2."""
    torch.manual_seed(0)
    chosen, rejected = torch.randn(64) * 30, torch.randn(64) * 30
    losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, chosen, rejected, beta=0.1)
    assert torch.equal(losses, torch.full((64,), math.log(2)))
    assert not chosen_rewards.any() and not rejected_rewards.any()


def test_dpo_rewards_carry_no_gradient_and_the_loss_does():
    policy = torch.tensor([-1.0, -2.0], requires_grad=True)
    losses, chosen_rewards, _ = dpo_loss(policy[:1], policy[1:], torch.tensor([-1.5]), torch.tensor([-1.5]), 0.1)
    assert not chosen_rewards.requires_grad
    losses.sum().backward()
    assert policy.grad[0] < 0 < policy.grad[1]  # raise chosen, lower rejected


def test_answer_nll_hand_values():
    """Token log-probs of two sequences; answer tokens are marked in loss_mask (shifted by one):
    sequence 1 answer logps -1, -3; sequence 2 answer logp -2  -> mean NLL = (1 + 3 + 2) / 3 = 2."""
    token_logps = torch.tensor([[-9.0, -1.0, -3.0], [-9.0, -2.0, -7.0]])  # (B, T-1)
    loss_mask = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0]], dtype=torch.bool)  # (B, T)
    nll, n = answer_nll(token_logps, loss_mask)
    assert nll.item() == 2.0 and n.item() == 3


def trl_dpo_loss(loss_type, beta, label_smoothing, *logps):
    """trl 0.11.4's DPOTrainer.dpo_loss on the same tensors, called on a stand-in for the trainer that holds only
    the attributes the method reads (a full DPOTrainer needs a model, a dataset and training arguments)."""
    from types import SimpleNamespace

    from trl import DPOTrainer

    trainer = SimpleNamespace(
        accelerator=SimpleNamespace(device=torch.device("cpu")),
        reference_free=False,
        f_divergence_type="reverse_kl",
        f_divergence_params=None,
        loss_type=loss_type,
        beta=beta,
        label_smoothing=label_smoothing,
    )
    return DPOTrainer.dpo_loss(trainer, *logps)


@pytest.mark.parametrize(
    "loss_type, label_smoothing",
    [("sigmoid", 0.0), ("sigmoid", 0.1), ("hinge", 0.0), ("ipo", 0.0), ("robust", 0.1), ("robust", 0.3)],
)
def test_dpo_loss_types_equal_trl_0_11(loss_type, label_smoothing):
    torch.manual_seed(0)
    logps = [-torch.rand(16) * 20 for _ in range(4)]  # policy chosen/rejected, reference chosen/rejected
    ours = dpo_loss(*logps, 0.3, loss_type, label_smoothing)
    theirs = trl_dpo_loss(loss_type, 0.3, label_smoothing, *logps)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_dpo_loss_types_by_hand():
    """h = (-1 - -2) - (-3 - -2) = 2, beta 0.5: beta h = 1.
    hinge: max(0, 1 - 1) = 0; ipo: (2 - 1 / (2 * 0.5))^2 = (2 - 1)^2 = 1;
    sigmoid with eps 0.25: -0.75 log sigmoid(1) - 0.25 log sigmoid(-1) = 0.75 * 0.31326 + 0.25 * 1.31326 = 0.56326;
    robust with eps 0.25: (0.75 * 0.31326 - 0.25 * 1.31326) / 0.5 = (0.23495 - 0.32832) / 0.5 = -0.18674."""
    args = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5)
    assert dpo_loss(*args, "hinge")[0].item() == 0.0
    assert math.isclose(dpo_loss(*args, "ipo")[0].item(), 1.0, rel_tol=1e-6)
    assert math.isclose(dpo_loss(*args, "sigmoid", 0.25)[0].item(), 0.56326, abs_tol=1e-5)
    assert math.isclose(dpo_loss(*args, "robust", 0.25)[0].item(), -0.18674, abs_tol=1e-5)
    with pytest.raises(ValueError, match="unknown DPO loss type 'kto'"):
        dpo_loss(*args, "kto")
