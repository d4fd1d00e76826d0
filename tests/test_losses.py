"""Losses against numbers worked out by hand."""

import math

import torch

from alignkit.losses import bradley_terry_loss


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
