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


# ---------------------------------------------------------------- online RL without a value model (GRPO, RLOO)
#
# A rollout holds G sampled answers to each of B prompts, in groups: rows [g*G, (g+1)*G) answer prompt g.


def group_advantages(rewards, group_size, scale=True, eps=1e-4):
    """GRPO's advantages (Shao et al. 2024): each answer's reward against its group's,
    A_i = (r_i - mean_group) / (std_group + eps), with the unbiased std as trl's GRPOTrainer takes it; scale=False
    leaves out the std (Dr. GRPO, Liu et al. 2025: it up-weights groups that are nearly all alike).

    rewards: (B*G,) in groups of group_size. A group whose rewards are all equal gets 0 everywhere: no gradient.
    """
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(1, keepdim=True) + eps)
    return centred.flatten()


def rloo_advantages(scores, sequence_kl, beta, group_size):
    """RLOO's advantages (Ahmadian et al. 2024), as trl 0.11.4's RLOOTrainer computes them: the KL penalty goes
    into the reward, r_i = score_i - beta * KL_i, and each answer is measured against the mean reward of the
    other G - 1 answers to its prompt, A_i = r_i - (sum_group r - r_i) / (G - 1).

    scores: (B*G,); sequence_kl: (B*G,) each answer's summed log pi - log pi_ref over its tokens; in groups.
    """
    rewards = (scores - beta * sequence_kl).view(-1, group_size)
    baseline = (rewards.sum(1, keepdim=True) - rewards) / (group_size - 1)
    return (rewards - baseline).flatten()


def k3_kl(logps, reference_logps):
    """The k3 estimator of KL(pi || pi_ref) per token (Schulman 2020), exp(d) - d - 1 with d = log pi_ref - log pi:
    never negative, 0 where the two agree, unbiased on tokens sampled from pi."""
    d = reference_logps - logps
    return torch.exp(d) - d - 1


def clipped_objective(logps, old_logps, advantages, epsilon, epsilon_high):
    """The per-token policy loss of PPO's clipped surrogate, with DAPO's separate upper clip (Yu et al. 2025):
    -min(rho A, clip(rho, 1 - epsilon, 1 + epsilon_high) A), rho = pi / pi_old per token.

    logps, old_logps: (N, T) per-token log-probs; advantages: (N,), one per answer.
    Returns (losses (N, T), clipped (N, T) booleans: where the clipped term is the one taken).
    """
    ratio = torch.exp(logps - old_logps)
    a = advantages.unsqueeze(1)
    unclipped, clipped = ratio * a, torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high) * a
    return -torch.min(unclipped, clipped), clipped < unclipped


LOSS_AGGREGATIONS = ("grpo", "dapo", "dr_grpo")


def aggregate(losses, mask, how, max_new_tokens, sequences=None, tokens=None):
    """One loss from per-token losses (N, T) on the answer tokens (mask (N, T)):
      grpo:    the mean over each answer's tokens, then over answers (a long answer's tokens count for less)
      dapo:    token-level, the sum over every answer token / their number
      dr_grpo: the sum / (answers x max_new_tokens), a constant normaliser (Dr. GRPO: no length bias)
    sequences, tokens: the answers and answer tokens of the whole rollout when `losses` is one micro-batch of it,
    so that micro-batches add up to the rollout's loss (None: this batch's own).
    """
    mask = mask.to(losses.dtype)
    sequences = losses.shape[0] if sequences is None else sequences
    if how == "grpo":
        return ((losses * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / sequences
    if how == "dapo":
        total = mask.sum() if tokens is None else torch.as_tensor(tokens, dtype=losses.dtype, device=losses.device)
        return (losses * mask).sum() / total.clamp(min=1)
    if how == "dr_grpo":
        return (losses * mask).sum() / (sequences * max_new_tokens)
    raise ValueError(f"unknown loss aggregation {how!r}; expected one of {', '.join(LOSS_AGGREGATIONS)}")
