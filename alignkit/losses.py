"""Losses as pure functions of tensors: nothing here loads a model or a file.

Naming follows the DPO reference code: {policy,reference}_{chosen,rejected}_{logps,rewards}.
"""

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen_rewards, rejected_rewards):
    """Pairwise reward-model loss, L = -(1/N) sum_i log sigmoid(r_chosen_i - r_rejected_i).

    Args:
        chosen_rewards: (N,) scores of the preferred answers.
        rejected_rewards: (N,) scores of the less preferred answers.
    Returns:
        (loss, accuracy, margin): scalar mean loss; share of pairs with
        r_chosen > r_rejected; mean of r_chosen - r_rejected.

    logsigmoid is used rather than log(sigmoid(x)), which underflows to log(0) = -inf
    for margins below about -100 in float32.
    """
    margin = chosen_rewards - rejected_rewards
    loss = -F.logsigmoid(margin).mean()
    return loss, (margin > 0).float().mean(), margin.mean()
