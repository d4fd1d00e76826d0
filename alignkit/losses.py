"""Losses as pure functions of tensors: nothing here loads a model or a file.

Naming follows the DPO reference code: {policy,reference}_{chosen,rejected}_{logps,rewards}.
"""

import math

import torch
import torch.nn.functional as F

from alignkit.params import DPO_LOSS_TYPES


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


def dpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    beta,
    loss_type="sigmoid",
    label_smoothing=0.0,
    running_mean=0.0,
):
    """Direct Preference Optimization loss and its variants, as trl 0.11.4's DPOTrainer.dpo_loss computes them.

    With c = log pi(y_w|x) - log pi_ref(y_w|x), r = log pi(y_l|x) - log pi_ref(y_l|x), h = c - r,
    eps = label_smoothing and s = sigmoid:
      sigmoid   (Rafailov et al. 2023, eq. 7; conservative DPO when eps > 0):
                -(1 - eps) log s(beta h) - eps log s(-beta h)
      robust    (Chowdhury et al. 2024, unbiased under label noise eps < 0.5):
                (-(1 - eps) log s(beta h) + eps log s(-beta h)) / (1 - 2 eps)
      hinge     (SLiC, Zhao et al. 2023):  max(0, 1 - beta h)
      ipo       (Azar et al. 2023, eq. 17; beta is their tau):  (h - 1 / (2 beta))^2
      exo_pair  (Ji et al. 2024, eq. 16; eps 0 is taken as 1e-3):
                s(beta h) (log s(beta h) - log(1 - eps)) + s(-beta h) (log s(-beta h) - log eps)
      nca_pair  (Chen et al. 2024):  -log s(beta c) - log s(-beta c) / 2 - log s(-beta r) / 2
      bco_pair  (Jung et al. 2024):  -log s(beta c - delta) - log s(-(beta r - delta)), delta = running_mean, the
                running mean of the batches' mean implicit reward (running_moments), updated by the caller first
      sppo_hard (Wu et al. 2024, hard probabilities):  (c - 1 / (2 beta))^2 + (r + 1 / (2 beta))^2
      aot_pair  (Melnyk et al. 2024):  sigmoid's loss on sort(c) - sort(r), sorted over the batch
      aot       (Melnyk et al. 2024):  sigmoid's loss on sort(pi_w - pi_l) - sort(ref_w - ref_l)
      apo_zero  (D'Oosterlinck et al. 2024, eq. 7):  1 - s(beta c) + s(beta r)
      apo_down  (D'Oosterlinck et al. 2024, eq. 8):  s(beta c) + 1 - s(beta h)

    Args: four (N,) tensors of summed answer-token log-probs; beta, the KL strength.
    Returns: (losses (N,), chosen_rewards (N,), rejected_rewards (N,)), where the
    implicit rewards are beta * (log pi - log pi_ref), detached.
    """
    c = policy_chosen_logps - reference_chosen_logps
    r = policy_rejected_logps - reference_rejected_logps
    h = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h) * (1 - eps) - F.logsigmoid(-beta * h) * eps
    elif loss_type == "robust":
        losses = (-F.logsigmoid(beta * h) * (1 - eps) + F.logsigmoid(-beta * h) * eps) / (1 - 2 * eps)
    elif loss_type == "exo_pair":
        eps = eps or 1e-3
        losses = (beta * h).sigmoid() * (F.logsigmoid(beta * h) - math.log(1 - eps)) + (-beta * h).sigmoid() * (
            F.logsigmoid(-beta * h) - math.log(eps)
        )
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "bco_pair":
        losses = -F.logsigmoid(beta * c - running_mean) - F.logsigmoid(-(beta * r - running_mean))
    elif loss_type == "sppo_hard":
        losses = (c - 0.5 / beta) ** 2 + (r + 0.5 / beta) ** 2
    elif loss_type == "nca_pair":
        losses = -F.logsigmoid(beta * c) - 0.5 * F.logsigmoid(-beta * c) - 0.5 * F.logsigmoid(-beta * r)
    elif loss_type in ("aot", "aot_pair"):
        if loss_type == "aot_pair":
            delta = torch.sort(c, dim=0)[0] - torch.sort(r, dim=0)[0]
        else:
            pi = policy_chosen_logps - policy_rejected_logps
            ref = reference_chosen_logps - reference_rejected_logps
            delta = torch.sort(pi, dim=0)[0] - torch.sort(ref, dim=0)[0]
        losses = -F.logsigmoid(beta * delta) * (1 - eps) - F.logsigmoid(-beta * delta) * eps
    elif loss_type == "apo_zero":
        losses = (1 - torch.sigmoid(beta * c)) + torch.sigmoid(beta * r)
    elif loss_type == "apo_down":
        losses = torch.sigmoid(beta * c) + (1 - torch.sigmoid(beta * (c - r)))
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}; expected one of {', '.join(DPO_LOSS_TYPES)}")
    return losses, beta * c.detach(), beta * r.detach()


def running_moments(state, xs):
    """trl 0.11.4's RunningMoments.update as a pure function: the running mean, variance and count of a stream,
    updated with a batch of values xs (a tensor; under several processes, every process's values gathered).

    state: {"mean", "var", "count"}, starting at {"mean": 0.0, "var": 1.0, "count": 1e-24} (RUNNING_START), as trl's.
    Returns the new state (floats), as trl's fields after the update.
    """
    xs = xs.detach().float().flatten()
    count = xs.numel()
    var, mean = torch.var_mean(xs, unbiased=False)
    delta = mean.item() - state["mean"]
    total = state["count"] + count
    old_sum = state["var"] * state["count"] + delta**2 * state["count"] * count / total
    return {
        "mean": state["mean"] + delta * count / total,
        "var": (old_sum + var.item() * count) / total,
        "count": total,
    }


RUNNING_START = {"mean": 0.0, "var": 1.0, "count": 1e-24}

# ---------------------------------------------------------------- reference-free preference losses (one model)


def simpo_loss(policy_chosen_logps, policy_rejected_logps, beta, gamma, label_smoothing=0.0):
    """SimPO (Meng et al. 2024), as trl 0.11.4's CPOTrainer.cpo_loss computes it with loss_type simpo:
    -(1 - eps) log s(beta (a_w - a_l) - gamma) - eps log s(-(beta (a_w - a_l) - gamma)), where a is the mean
    log-prob per answer token (length-normalised: the caller passes means, not sums) and gamma the target margin.

    Returns (losses (N,), chosen_rewards, rejected_rewards): the rewards are beta * a, detached.
    """
    logits = (policy_chosen_logps - policy_rejected_logps) - gamma / beta
    losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    return losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach()


def cpo_loss(policy_chosen_logps, policy_rejected_logps, beta, label_smoothing=0.0):
    """CPO's preference term (Xu et al. 2024, eq. 3), as trl 0.11.4's CPOTrainer.cpo_loss with loss_type sigmoid:
    DPO's sigmoid loss on summed log-probs with no reference, -(1 - eps) log s(beta (l_w - l_l)) - eps log s(...).
    The whole CPO objective adds cpo_alpha x the chosen answers' NLL (answer_nll).

    Returns (losses (N,), chosen_rewards, rejected_rewards): the rewards are beta * l, detached.
    """
    logits = policy_chosen_logps - policy_rejected_logps
    losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    return losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach()


def orpo_loss(policy_chosen_logps, policy_rejected_logps, beta):
    """ORPO's odds-ratio term (Hong et al. 2024, eqs. 4 and 7): -beta log s(log odds(y_w) - log odds(y_l)), with
    odds(y) = P(y) / (1 - P(y)) and log P the mean log-prob per answer token (the caller passes means). trl 0.11.4's
    ORPOTrainer.odds_ratio_loss returns the same with the opposite sign (its loss is NLL - mean); here the whole
    ORPO objective is the chosen answers' NLL + the mean of these losses (beta is ORPO's lambda).

    Returns (losses (N,), chosen_rewards, rejected_rewards, log_odds (N,)): rewards beta * log P, detached.
    """
    log_odds = (policy_chosen_logps - policy_rejected_logps) - (
        torch.log1p(-torch.exp(policy_chosen_logps)) - torch.log1p(-torch.exp(policy_rejected_logps))
    )
    losses = -beta * F.logsigmoid(log_odds)
    return losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach(), log_odds.detach()


# ---------------------------------------------------------------- KTO: unpaired desirable / undesirable answers


def kto_kl(policy_kl_logps, reference_kl_logps):
    """KTO's reference point (Ethayarajh et al. 2024): the batch's mean log pi - log pi_ref over mismatched
    prompt/completion pairs, detached. trl 0.11.4 then averages it over processes and clamps it at 0 (the caller
    gathers; kto_loss clamps)."""
    return (policy_kl_logps - reference_kl_logps).mean().detach()


def kto_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    kl,
    beta,
    desirable_weight=1.0,
    undesirable_weight=1.0,
):
    """KTO (Ethayarajh et al. 2024, eq. 7), as trl 0.11.4's KTOTrainer.kto_loss computes it:
    desirable answers  w_D (1 - s(beta (c - z))),  undesirable ones  w_U (1 - s(beta (z - r))),
    with c, r = log pi - log pi_ref of each answer and z = max(kl, 0) the reference point (kto_kl).

    policy_chosen_logps, reference_chosen_logps: (D,) the batch's desirable answers; the rejected ones (U,); either
    may be empty. Returns (losses (D + U,), desirable first, each weighted; chosen_rewards (D,) and rejected_rewards
    (U,), beta * (log pi - log pi_ref), detached). The batch's loss is the plain mean of losses, as trl's.
    """
    z = kl.clamp(min=0)
    c = policy_chosen_logps - reference_chosen_logps
    r = policy_rejected_logps - reference_rejected_logps
    losses = torch.cat(
        (
            desirable_weight * (1 - torch.sigmoid(beta * (c - z))),
            undesirable_weight * (1 - torch.sigmoid(beta * (z - r))),
        )
    )
    return losses, beta * c.detach(), beta * r.detach()


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
