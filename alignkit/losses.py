"""Losses as pure functions of tensors: nothing here loads a model or a file.

Naming follows the DPO reference code: {policy,reference}_{chosen,rejected}_{logps,rewards}.
"""

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


def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """Direct Preference Optimization loss (Rafailov et al. 2023, eq. 7).

    L = -log sigmoid(beta * ((log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))))

    Args: four (N,) tensors of summed answer-token log-probs; beta, the KL strength.
    Returns: (losses (N,), chosen_rewards (N,), rejected_rewards (N,)), where the
    implicit rewards are beta * (log pi - log pi_ref), detached.
    """
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def answer_nll(token_logps, loss_mask):
    """Mean negative log-likelihood per answer token.

    Args: token_logps (B, T-1) next-token log-probs; loss_mask (B, T), True on answer tokens.
    Returns: (mean NLL, number of answer tokens).
    """
    mask = loss_mask[:, 1:]
    n = mask.sum()
    return -(token_logps * mask).sum() / n.clamp(min=1), n
