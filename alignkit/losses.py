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


DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust")


def dpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    beta,
    loss_type="sigmoid",
    label_smoothing=0.0,
):
    """Direct Preference Optimization loss and its variants, as trl 0.11's DPOTrainer.dpo_loss computes them.

    With h = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)) and eps = label_smoothing:
      sigmoid (Rafailov et al. 2023, eq. 7; conservative DPO when eps > 0):
          -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
      robust  (Chowdhury et al. 2024, unbiased under label noise eps < 0.5):
          (-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)) / (1 - 2 eps)
      hinge   (SLiC, Zhao et al. 2023):  max(0, 1 - beta h)
      ipo     (Azar et al. 2023, eq. 17; beta is their tau):  (h - 1 / (2 beta))^2

    Args: four (N,) tensors of summed answer-token log-probs; beta, the KL strength.
    Returns: (losses (N,), chosen_rewards (N,), rejected_rewards (N,)), where the
    implicit rewards are beta * (log pi - log pi_ref), detached.
    """
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    h = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing
    elif loss_type == "robust":
        losses = (-F.logsigmoid(beta * h) * (1 - label_smoothing) + F.logsigmoid(-beta * h) * label_smoothing) / (
            1 - 2 * label_smoothing
        )
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}; expected one of {', '.join(DPO_LOSS_TYPES)}")
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def answer_nll(token_logps, loss_mask):
    """Mean negative log-likelihood per answer token.

    Args: token_logps (B, T-1) next-token log-probs; loss_mask (B, T), True on answer tokens.
    Returns: (mean NLL, number of answer tokens).
    """
    mask = loss_mask[:, 1:]
    n = mask.sum()
    return -(token_logps * mask).sum() / n.clamp(min=1), n
