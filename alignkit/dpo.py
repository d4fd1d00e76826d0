"""Preference tuning on pairs, with the objective dpo.loss_type names: trl 0.11.4's DPO loss family against a
frozen reference (its log-probs computed once before training, or run at every step), or the reference-free
SimPO, CPO and ORPO, which load no reference at all. KTO, on unpaired feedback, is alignkit.kto; both train in
alignkit.loop.fit, and alignkit.preference picks one.

Every objective reports the same validation preference accuracy: the share of validation pairs whose chosen
answer gained more log-probability than the rejected one since the start of training (the SFT policy, whose
log-probs on the validation pairs are taken once, before training, from the reference or -- reference-free --
from the policy itself).
"""

from collections import Counter
from contextlib import nullcontext

import torch

from alignkit.adapters import frozen_reference, live_reference
from alignkit.batching import in_order, sorted_batches
from alignkit.conversation import Renderer
from alignkit.errors import ParamsError
from alignkit.loop import fit
from alignkit.losses import (
    RUNNING_START,
    answer_nll,
    cpo_loss,
    dpo_loss,
    orpo_loss,
    running_moments,
    simpo_loss,
)
from alignkit.params import DPO_LOSS_TYPES
from alignkit.policy import answer_token_logps, collate, forward_logps
from alignkit.training import progress, seeded_loader

LENGTH_NORMALISED = ("simpo", "orpo")  # mean log-prob per answer token, not the sum


def encode_pairs(tokenizer, pairs, max_length, max_prompt_length):
    """([(chosen example, rejected example)], Counter of conversation.FITTED): each example (ids, prompt_len), both
    sharing one prompt; a pair whose question cannot be kept is left out (and counted)."""
    return Renderer(tokenizer).encode_pairs(pairs, max_length, max_prompt_length)


class PairCollator:
    """N items (chosen, rejected, logps) -> one batch of 2N sequences (chosen first); logps, a (chosen, rejected)
    pair of floats for every item or None for every item, become the batch's `key` tensor (2N,)."""

    def __init__(self, pad_id, key="reference_logps"):
        self.pad_id, self.key = pad_id, key

    def __call__(self, items):
        chosen, rejected, logps = zip(*items)
        batch = collate([*chosen, *rejected], self.pad_id)
        if logps[0] is not None:
            batch[self.key] = torch.tensor([c for c, _ in logps] + [r for _, r in logps])
        return batch


def pair_lengths(items):
    """Each pair's padded length in a batch, the longer of its two sequences; items: [(chosen, rejected, ...)],
    each side (ids, prompt_len)."""
    return [max(len(chosen[0]), len(rejected[0])) for chosen, rejected, *_ in items]


@torch.no_grad()
def reference_logps(reference, encoded, pad_id, batch_size, accelerator, desc="dpo: reference log-probs"):
    """Summed answer log-probs of a frozen model for every pair: (chosen (N,), rejected (N,)).

    Computed once, before training: the reference never changes, so a second
    model forward per training step would only repeat this.
    """
    reference.eval()
    batches = sorted_batches(pair_lengths(encoded), batch_size)  # longest first: little padding per batch
    chosen, rejected = [], []
    for index in progress(batches, desc, accelerator.is_main_process):
        part = [encoded[i] for i in index]
        batch = collate([c for c, *_ in part] + [r for _, r, *_ in part], pad_id)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            logps = forward_logps(reference, batch).cpu()
        chosen.append(logps[: len(part)])
        rejected.append(logps[len(part) :])
    return in_order(batches, chosen), in_order(batches, rejected)


def _split(logps):
    n = logps.shape[0] // 2
    return logps[:n], logps[n:]


class PairObjective:
    """A paired objective (dpo.loss_type) from one forward pass over 2N sequences, N chosen then N rejected.

    Calling it with the (2N, T-1) answer-token log-probs, the batch's loss_mask and (for the DPO family) the
    reference's summed log-probs (2N,) gives (loss, per-pair losses, chosen rewards, rejected rewards, logs).
    SimPO and ORPO take the mean log-prob per answer token, the others the sum; CPO adds cpo_alpha x and ORPO
    1 x the chosen answers' NLL per token (nll_weight). bco_pair's running mean of the implicit reward is state
    that checkpoints keep (state_dict); gather(tensor) collects a value from every process for it.
    """

    def __init__(self, cfg, gather=None):
        self.cfg, self.loss_type = cfg, cfg.loss_type
        self.needs_reference = cfg.loss_type in DPO_LOSS_TYPES
        self.average = cfg.loss_type in LENGTH_NORMALISED
        self.nll_weight = {"cpo": cfg.cpo_alpha, "orpo": 1.0}.get(cfg.loss_type, 0.0)
        self.gather = gather or (lambda t: t)
        self.running = dict(RUNNING_START)

    def state_dict(self):
        return {"running": dict(self.running)}

    def load_state_dict(self, state):
        self.running = dict(state["running"])

    def sequence_logps(self, token_logps, loss_mask):
        sums = token_logps.sum(-1)
        return sums / loss_mask[:, 1:].sum(-1).clamp(min=1) if self.average else sums

    def __call__(self, token_logps, loss_mask, reference=None, update=True):
        """update: False in validation, where bco_pair's running mean is read but not moved."""
        cfg, logs = self.cfg, {}
        chosen, rejected = _split(self.sequence_logps(token_logps, loss_mask))
        if self.needs_reference:
            ref_chosen, ref_rejected = _split(reference)
            if self.loss_type == "bco_pair" and update:
                rewards = cfg.beta * torch.cat((chosen - ref_chosen, rejected - ref_rejected))
                self.running = running_moments(self.running, self.gather(rewards.mean().detach().reshape(1)))
            losses, chosen_rewards, rejected_rewards = dpo_loss(
                chosen,
                rejected,
                ref_chosen,
                ref_rejected,
                cfg.beta,
                self.loss_type,
                cfg.label_smoothing,
                self.running["mean"],
            )
        elif self.loss_type == "simpo":
            losses, chosen_rewards, rejected_rewards = simpo_loss(
                chosen, rejected, cfg.beta, cfg.simpo_gamma, cfg.label_smoothing
            )
        elif self.loss_type == "cpo":
            losses, chosen_rewards, rejected_rewards = cpo_loss(chosen, rejected, cfg.beta, cfg.label_smoothing)
        else:
            losses, chosen_rewards, rejected_rewards, log_odds = orpo_loss(chosen, rejected, cfg.beta)
            logs["log_odds_ratio"] = log_odds.mean()
        loss = losses.mean()
        if self.nll_weight:
            n = chosen.shape[0]
            nll, _ = answer_nll(token_logps[:n], loss_mask[:n])
            loss = loss + self.nll_weight * nll
            logs["nll"] = nll.detach()
        return loss, losses, chosen_rewards, rejected_rewards, logs


def make_step(objective, reference=None):
    """One training micro-batch of a paired objective. The batch carries the reference's log-probs
    (reference_logps), or reference, a function giving a context manager that yields the reference model, runs
    it on the batch (precompute_ref_log_probs: false); reference-free objectives need neither."""

    def step(model, batch):
        token_logps = answer_token_logps(model, batch)  # one forward over 2N rows
        ref = batch.get("reference_logps")
        if objective.needs_reference and ref is None:
            with torch.no_grad(), reference() as frozen:
                ref = forward_logps(frozen, batch)
        loss, _, chosen, rejected, logs = objective(token_logps, batch["loss_mask"], ref)
        return loss, {
            "reward_accuracy": (chosen > rejected).float().mean(),
            "margin": (chosen - rejected).mean(),
            **logs,
        }

    return step


@torch.no_grad()
def preference_accuracy_parts(model, batch, accelerator):
    """(the batch's answer-token log-probs (2N, T-1), per pair 1.0 where the chosen answer gained more summed
    log-prob than the rejected one since the start, batch["start_logps"], else 0.0)."""
    with accelerator.autocast():
        token_logps = answer_token_logps(model, batch)
    gain_chosen, gain_rejected = _split(token_logps.sum(-1) - batch["start_logps"])
    return token_logps, (gain_chosen > gain_rejected).float()


def make_evaluate(objective, accelerator):
    @torch.no_grad()
    def evaluate(model, loader):
        model.eval()
        parts = []
        for batch in progress(loader, "dpo: validation", accelerator.is_main_process):
            token_logps, prefers = preference_accuracy_parts(model, batch, accelerator)
            _, losses, chosen, rejected, _ = objective(
                token_logps, batch["loss_mask"], batch["start_logps"], update=False
            )
            n = chosen.shape[0]
            mask = batch["loss_mask"][:n, 1:]
            nll = -(token_logps[:n] * mask).sum(-1)  # per chosen answer, then per token over the split
            parts.append(accelerator.gather_for_metrics((losses, chosen, rejected, prefers, nll, mask.sum(-1))))
        losses, chosen, rejected, prefers, nll, tokens = (torch.cat(p) for p in zip(*parts))
        out = {
            "loss": losses.mean().item(),
            "reward_accuracy": (chosen > rejected).float().mean().item(),
            "preference_accuracy": prefers.mean().item(),
            "chosen_reward": chosen.mean().item(),
            "rejected_reward": rejected.mean().item(),
            "margin": (chosen - rejected).mean().item(),
        }
        if objective.nll_weight:
            out["nll"] = (nll.sum() / tokens.sum().clamp(min=1)).item()
            out["loss"] += objective.nll_weight * out["nll"]
        return out

    return evaluate


def reference_source(policy, load_reference, cfg, needs_reference, device):
    """(a function giving a context manager that yields the model to take the start log-probs from, how the
    objective meets its reference: "precomputed", "each step" or "none").

    Reference-free, the start is the policy itself before its first step, and load_reference is never called.
    Otherwise the frozen reference (alignkit.adapters): used once and put away (precompute_ref_log_probs), or
    kept on the device for every step."""
    if not needs_reference:
        policy.to(device)
        return (lambda: nullcontext(policy)), "none"
    if cfg.precompute_ref_log_probs:
        return (lambda: frozen_reference(policy, load_reference, device)), "precomputed"
    return live_reference(policy, load_reference, device), "each step"


def enable_checkpointing(policy, cfg):
    if cfg.gradient_checkpointing:
        # Non-reentrant: gradients reach an adapter even though the frozen base's inputs need none.
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.config.use_cache = False


def only_pairs(items, cfg):
    """The items as preference pairs; ParamsError naming dpo.loss_type when dpo.data holds unpaired feedback."""
    unpaired = next((p for p in items if not hasattr(p, "chosen")), None)
    if unpaired is not None:
        raise ParamsError(
            f"dpo.loss_type: {cfg.loss_type!r} trains on preference pairs, but dpo.data's set "
            f"{unpaired.source!r} holds unpaired feedback (prompt, completion, label); use loss_type kto"
        )
    return items


def train_dpo(
    policy, load_reference, tokenizer, train_pairs, val_pairs, cfg, seed, accelerator, live_dir, checkpoint=None
):
    """Preference tuning of `policy` on pairs with a paired objective. cfg: the `dpo` params section.

    load_reference() -> a frozen copy of the starting policy; called (once) only when the objective needs a
    reference and the policy has no adapter to switch off. Returns (metrics for metrics/dpo.json, the unwrapped
    policy).
    """
    objective = PairObjective(cfg, accelerator.gather)
    encoded, fitted = {}, Counter()
    for name, pairs in (("train", only_pairs(train_pairs, cfg)), ("val", only_pairs(val_pairs, cfg))):
        encoded[name], counts = encode_pairs(tokenizer, pairs, cfg.max_length, cfg.max_prompt_length)
        fitted.update(counts)
    source, reference = reference_source(policy, load_reference, cfg, objective.needs_reference, accelerator.device)
    pad = tokenizer.pad_token_id
    with source() as model:
        val_start = reference_logps(model, encoded["val"], pad, cfg.eval_batch_size, accelerator, "dpo: start (val)")
        train_ref = None
        if reference == "precomputed":
            train_ref = reference_logps(
                model, encoded["train"], pad, cfg.eval_batch_size, accelerator, "dpo: reference log-probs (train)"
            )
    train = [
        (c, r, None if train_ref is None else (a.item(), b.item()))
        for (c, r), a, b in _with(encoded["train"], train_ref)
    ]
    val = [(c, r, (a.item(), b.item())) for (c, r), a, b in _with(encoded["val"], val_start)]
    enable_checkpointing(policy, cfg)
    train_loader = seeded_loader(
        train, cfg.batch_size, seed, PairCollator(pad), lengths=pair_lengths(train) if cfg.group_by_length else None
    )
    val_loader = seeded_loader(
        val, cfg.eval_batch_size, seed, PairCollator(pad, "start_logps"), shuffle=False, lengths=pair_lengths(val)
    )
    before, after, policy = fit(
        policy,
        train_loader,
        val_loader,
        cfg,
        accelerator,
        live_dir,
        desc="dpo",
        step=make_step(objective, source if reference == "each step" else None),
        evaluate=make_evaluate(objective, accelerator),
        grad_accum_steps=cfg.grad_accum_steps,
        checkpoint=checkpoint,
        state=objective,
    )
    return {
        **summary(cfg, reference, before, after),
        # Train and validation pairs fitted into max_length / max_prompt_length (conversation.FITTED).
        "fitted": dict(fitted),
    }, policy


def _with(encoded, logps):
    """[(item, chosen logp, rejected logp)] -- logps None: Nones."""
    if logps is None:
        return [(e, None, None) for e in encoded]
    return list(zip(encoded, *logps))


def summary(cfg, reference, before, after):
    """metrics/dpo.json's common part: the objective, how it met its reference, and the validation metrics."""
    extra = {f"val_{k}": after[k] for k in ("nll", "kl") if k in after}
    return {
        "objective": cfg.loss_type,
        "reference": reference,
        "train_loss": after["train_loss"],
        "val_loss": after["loss"],
        "val_loss_before": before["loss"],
        # null where there is nothing to measure it on (KTO: no validation prompt with both kinds of answer)
        **{f"val_{k}": after.get(k) for k in ("preference_accuracy", "reward_accuracy", "chosen_reward")},
        **{f"val_{k}": after.get(k) for k in ("rejected_reward", "margin")},
        **extra,
        "kept_epoch": after["kept_epoch"],
    }
