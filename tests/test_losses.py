"""Losses against numbers worked out by hand."""

import math

import pytest
import torch

from alignkit.losses import (
    RUNNING_START,
    answer_nll,
    bradley_terry_loss,
    cpo_loss,
    dpo_loss,
    kto_kl,
    kto_loss,
    orpo_loss,
    running_moments,
    simpo_loss,
)


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


# ---------------------------------------------------------------- the rest of trl 0.11.4's DPO loss family


def _trainer(**attributes):
    """A stand-in for a trl trainer holding only what its loss method reads (a full trainer needs a model, a dataset
    and training arguments)."""
    from types import SimpleNamespace

    from trl.trainer.utils import RunningMoments

    accelerator = SimpleNamespace(device=torch.device("cpu"), use_distributed=False, gather=lambda t: t)
    return SimpleNamespace(accelerator=accelerator, running=RunningMoments(accelerator), **attributes)


@pytest.mark.parametrize("loss_type", ["exo_pair", "nca_pair", "sppo_hard", "aot", "aot_pair", "apo_zero", "apo_down"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_remaining_dpo_loss_types_equal_trl_0_11(loss_type, label_smoothing):
    torch.manual_seed(1)
    logps = [-torch.rand(16) * 20 for _ in range(4)]
    ours = dpo_loss(*logps, 0.3, loss_type, label_smoothing)
    theirs = trl_dpo_loss(loss_type, 0.3, label_smoothing, *logps)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_bco_pair_and_its_running_mean_equal_trl_0_11_over_several_batches():
    """bco_pair measures the implicit rewards against a running mean that every batch updates (trl's
    RunningMoments): three batches in turn, ours as pure functions, trl's on one stateful stand-in."""
    from trl import DPOTrainer

    trainer = _trainer(
        reference_free=False, f_divergence_type="reverse_kl", f_divergence_params=None, loss_type="bco_pair", beta=0.3
    )
    trainer.label_smoothing = 0.0
    state = RUNNING_START
    torch.manual_seed(2)
    for _ in range(3):
        logps = [-torch.rand(8) * 20 for _ in range(4)]
        theirs = DPOTrainer.dpo_loss(trainer, *logps)
        rewards = 0.3 * torch.cat((logps[0] - logps[2], logps[1] - logps[3]))
        state = running_moments(state, rewards.mean())
        ours = dpo_loss(*logps, 0.3, "bco_pair", running_mean=state["mean"])
        for a, b in zip(ours, theirs):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)
        assert state["mean"] == pytest.approx(trainer.running.mean, abs=1e-6)
        assert state["var"] == pytest.approx(trainer.running.var, abs=1e-6)
        assert state["count"] == pytest.approx(trainer.running.count)


def test_running_moments_by_hand():
    """From the start (mean 0, var 1, count ~0), a batch [1, 3]: mean 2, var 1 (biased), count 2; then [5]:
    mean 2 + (5 - 2) / 3 = 3, var ((1 x 2 + 9 x 2 / 3) + 0) / 3 = 8 / 3, count 3."""
    state = running_moments(RUNNING_START, torch.tensor([1.0, 3.0]))
    assert state["mean"] == pytest.approx(2.0) and state["var"] == pytest.approx(1.0)
    state = running_moments(state, torch.tensor([5.0]))
    assert state == pytest.approx({"mean": 3.0, "var": 8 / 3, "count": 3.0})


def test_remaining_dpo_loss_types_by_hand():
    """c = -1 - -2 = 1, r = -3 - -2 = -1, h = 2, beta 0.5; s = sigmoid, log s(0.5) = -0.474077,
    log s(-0.5) = -0.974077, log s(1) = -0.313262, log s(-1) = -1.313262.
    exo_pair (eps 0 -> 1e-3): s(1) (log s(1) - log 0.999) + s(-1) (log s(-1) - log 0.001)
        = 0.731059 x -0.312262 + 0.268941 x 5.594493 = 1.276310
    nca_pair: -log s(0.5) - log s(-0.5) / 2 - log s(0.5) / 2 = 0.474077 + 0.487038 + 0.237038 = 1.198154
    bco_pair, running mean 0.25: -log s(0.5 - 0.25) - log s(-(-0.5 - 0.25)) = 0.575939 + 0.386871 = 0.962810
    sppo_hard: (1 - 0.5 / 0.5)^2 + (-1 + 0.5 / 0.5)^2 = 0
    apo_zero: 1 - s(0.5) + s(-0.5) = 1 - 0.622459 + 0.377541 = 0.755081
    apo_down: s(0.5) + 1 - s(1) = 0.622459 + 0.268941 = 0.891401
    aot_pair on two pairs c = [1, 0], r = [-1, 2]: sorted c - sorted r = [0 - -1, 1 - 2] = [1, -1];
        -log s(0.5) = 0.474077, -log s(-0.5) = 0.974077."""
    args = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5)
    expected = {"exo_pair": 1.276310, "nca_pair": 1.198154, "sppo_hard": 0.0, "apo_zero": 0.755081}
    expected["apo_down"] = 0.891401
    for loss_type, value in expected.items():
        assert dpo_loss(*args, loss_type)[0].item() == pytest.approx(value, abs=1e-5), loss_type
    assert dpo_loss(*args, "bco_pair", running_mean=0.25)[0].item() == pytest.approx(0.962810, abs=1e-5)
    pairs = (
        torch.tensor([-1.0, -2.0]),
        torch.tensor([-3.0, 0.0]),
        torch.tensor([-2.0, -2.0]),
        torch.tensor([-2.0, -2.0]),
    )
    losses = dpo_loss(*pairs, 0.5, "aot_pair")[0]
    assert losses.tolist() == pytest.approx([0.474077, 0.974077], abs=1e-5)


# ---------------------------------------------------------------- reference-free: SimPO, CPO, ORPO


def trl_cpo_loss(loss_type, beta, label_smoothing, simpo_gamma, *logps):
    from trl import CPOTrainer

    trainer = _trainer(loss_type=loss_type, beta=beta, label_smoothing=label_smoothing, simpo_gamma=simpo_gamma)
    return CPOTrainer.cpo_loss(trainer, *logps)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_and_cpo_equal_trl_0_11_cpo_trainer(label_smoothing):
    torch.manual_seed(3)
    chosen, rejected = -torch.rand(16) * 3, -torch.rand(16) * 3  # mean log-probs per token for SimPO
    ours = simpo_loss(chosen, rejected, 2.0, 1.4, label_smoothing)
    theirs = trl_cpo_loss("simpo", 2.0, label_smoothing, 1.4, chosen, rejected)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)
    chosen, rejected = -torch.rand(16) * 30, -torch.rand(16) * 30  # summed log-probs for CPO
    ours = cpo_loss(chosen, rejected, 0.1, label_smoothing)
    theirs = trl_cpo_loss("sigmoid", 0.1, label_smoothing, 0.5, chosen, rejected)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_orpo_equals_trl_0_11_odds_ratio_loss():
    from trl import ORPOTrainer

    torch.manual_seed(4)
    chosen, rejected = -torch.rand(16) * 3 - 1e-3, -torch.rand(16) * 3 - 1e-3  # mean log-probs, below 0
    losses, chosen_rewards, rejected_rewards, log_odds = orpo_loss(chosen, rejected, 0.1)
    theirs = ORPOTrainer.odds_ratio_loss(_trainer(beta=0.1), chosen, rejected)
    assert torch.allclose(losses, -theirs[0], rtol=1e-6, atol=1e-6)  # trl's loss is NLL - mean: the sign flips
    assert torch.allclose(chosen_rewards, theirs[1]) and torch.allclose(rejected_rewards, theirs[2])
    assert log_odds.mean().item() == pytest.approx(theirs[4].item(), abs=1e-6)


def test_reference_free_losses_by_hand():
    """Mean log-probs a_w = -1, a_l = -3 (SimPO), summed l_w = -1, l_l = -3 (CPO):
    simpo, beta 0.5, gamma 0.5: -log s(0.5 x 2 - 0.5) = -log s(0.5) = 0.474077
    cpo, beta 0.5: -log s(0.5 x 2) = 0.313262
    orpo, log P_w = -0.5, log P_l = -2: log odds = log P - log(1 - P): -0.5 + 0.932752 = 0.432752 and
        -2 + 0.145413 = -1.854587; beta 0.1: -0.1 log s(2.287339) = 0.1 x 0.096706 = 0.009671."""
    w, l_ = torch.tensor([-1.0]), torch.tensor([-3.0])
    assert simpo_loss(w, l_, 0.5, 0.5)[0].item() == pytest.approx(0.474077, abs=1e-6)
    assert cpo_loss(w, l_, 0.5)[0].item() == pytest.approx(0.313262, abs=1e-6)
    losses, _, _, log_odds = orpo_loss(torch.tensor([-0.5]), torch.tensor([-2.0]), 0.1)
    assert log_odds.item() == pytest.approx(2.287339, abs=1e-5)
    assert losses.item() == pytest.approx(0.009671, abs=1e-6)


# ---------------------------------------------------------------- KTO


@pytest.mark.parametrize("kl_sign", [1.0, -1.0])  # a negative KL estimate is clamped to 0
def test_kto_loss_equals_trl_0_11_kto_trainer(kl_sign):
    from trl import KTOTrainer

    torch.manual_seed(5)
    policy_chosen, reference_chosen = -torch.rand(5) * 20, -torch.rand(5) * 20  # 5 desirable answers
    policy_rejected, reference_rejected = -torch.rand(3) * 20, -torch.rand(3) * 20  # 3 undesirable
    reference_kl = -torch.rand(8) * 20
    policy_kl = reference_kl + kl_sign * torch.rand(8)
    trainer = _trainer(calculate_KL=True, loss_type="kto", beta=0.1, desirable_weight=1.0, undesirable_weight=1.33)
    theirs = KTOTrainer.kto_loss(
        trainer, policy_chosen, policy_rejected, policy_kl, reference_chosen, reference_rejected, reference_kl
    )
    kl = kto_kl(policy_kl, reference_kl)
    ours = kto_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, kl, 0.1, 1.0, 1.33)
    for a, b in zip(ours, theirs[:3]):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)
    assert kl.clamp(min=0).item() == pytest.approx(theirs[3].item(), abs=1e-7)


def test_kto_loss_by_hand():
    """c = 1 (desirable), r = -1 (undesirable), KL estimate z = 0.2, beta 0.5, weights 1 and 1.5:
    desirable 1 - s(0.5 (1 - 0.2)) = 1 - s(0.4) = 0.401312; undesirable 1.5 (1 - s(0.5 (0.2 + 1))) = 1.5 x 0.354344
    = 0.531516. A KL estimate of -0.3 counts as 0: 1 - s(0.5) = 0.377541."""
    args = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
    losses, chosen, rejected = kto_loss(*args, torch.tensor(0.2), 0.5, 1.0, 1.5)
    assert losses.tolist() == pytest.approx([0.401312, 0.531516], abs=1e-6)
    assert chosen.item() == 0.5 and rejected.item() == -0.5
    assert kto_loss(*args, torch.tensor(-0.3), 0.5)[0][0].item() == pytest.approx(0.377541, abs=1e-6)
    empty = torch.tensor([])  # a batch of desirable answers only
    assert kto_loss(args[0], empty, args[2], empty, torch.tensor(0.0), 0.5)[0].shape == (1,)
