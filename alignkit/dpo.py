"""Direct Preference Optimization against a frozen reference whose log-probs are computed once."""

from collections import Counter

import torch

from alignkit.batching import in_order, sorted_batches
from alignkit.conversation import Renderer
from alignkit.loop import fit
from alignkit.losses import dpo_loss
from alignkit.policy import collate, forward_logps
from alignkit.training import progress, seeded_loader


def encode_pairs(tokenizer, pairs, max_length, max_prompt_length):
    """([(chosen example, rejected example)], Counter of conversation.FITTED): each example (ids, prompt_len), both
    sharing one prompt; a pair whose question cannot be kept is left out (and counted)."""
    return Renderer(tokenizer).encode_pairs(pairs, max_length, max_prompt_length)


class PairCollator:
    """N pairs -> one batch of 2N sequences (chosen first), with their reference log-probs."""

    def __init__(self, pad_id):
        self.pad_id = pad_id

    def __call__(self, items):
        chosen, rejected, ref_chosen, ref_rejected = zip(*items)
        batch = collate([*chosen, *rejected], self.pad_id)
        batch["reference_logps"] = torch.tensor([*ref_chosen, *ref_rejected])  # (2N,)
        return batch


def pair_lengths(items):
    """Each pair's padded length in a batch, the longer of its two sequences; items: [(chosen, rejected, ...)],
    each side (ids, prompt_len)."""
    return [max(len(chosen[0]), len(rejected[0])) for chosen, rejected, *_ in items]


@torch.no_grad()
def reference_logps(reference, encoded, pad_id, batch_size, accelerator, desc="dpo: reference log-probs"):
    """Summed answer log-probs of the frozen reference for every pair: (chosen (N,), rejected (N,)).

    Computed once, before training: the reference never changes, so a second
    model forward per training step would only repeat this.
    """
    reference.eval()
    batches = sorted_batches(pair_lengths(encoded), batch_size)  # longest first: little padding per batch
    chosen, rejected = [], []
    for index in progress(batches, desc, accelerator.is_main_process):
        part = [encoded[i] for i in index]
        batch = collate([c for c, _ in part] + [r for _, r in part], pad_id)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            logps = forward_logps(reference, batch).cpu()
        chosen.append(logps[: len(part)])
        rejected.append(logps[len(part) :])
    return in_order(batches, chosen), in_order(batches, rejected)


def _split(logps):
    n = logps.shape[0] // 2
    return logps[:n], logps[n:]


def make_step(beta, loss_type, label_smoothing):
    def step(model, batch):
        policy_chosen_logps, policy_rejected_logps = _split(forward_logps(model, batch))  # one forward, 2N rows
        reference_chosen_logps, reference_rejected_logps = _split(batch["reference_logps"])
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            policy_chosen_logps,
            policy_rejected_logps,
            reference_chosen_logps,
            reference_rejected_logps,
            beta,
            loss_type,
            label_smoothing,
        )
        return losses.mean(), {
            "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "margin": (chosen_rewards - rejected_rewards).mean(),
        }

    return step


def make_evaluate(beta, loss_type, label_smoothing, accelerator):
    @torch.no_grad()
    def evaluate(model, loader):
        model.eval()
        parts = []
        for batch in progress(loader, "dpo: validation", accelerator.is_main_process):
            with accelerator.autocast():
                policy = _split(forward_logps(model, batch))
            losses, chosen, rejected = dpo_loss(
                *policy, *_split(batch["reference_logps"]), beta, loss_type, label_smoothing
            )
            parts.append(accelerator.gather_for_metrics((losses, chosen, rejected)))
        losses, chosen, rejected = (torch.cat(p) for p in zip(*parts))
        return {
            "loss": losses.mean().item(),
            "reward_accuracy": (chosen > rejected).float().mean().item(),
            "chosen_reward": chosen.mean().item(),
            "rejected_reward": rejected.mean().item(),
            "margin": (chosen - rejected).mean().item(),
        }

    return evaluate


def train_dpo(policy, reference, tokenizer, train_pairs, val_pairs, cfg, seed, accelerator, live_dir, checkpoint=None):
    """DPO of `policy` against the frozen reference. cfg: the `dpo` params section.

    reference: a context manager giving the reference model on the device (alignkit.adapters.frozen_reference):
    used once, before training, for the log-probs of every pair.
    Returns (metrics for metrics/dpo.json, the unwrapped policy).
    """
    datasets, fitted = {}, Counter()
    with reference as model:
        for name, pairs in (("train", train_pairs), ("val", val_pairs)):
            encoded, counts = encode_pairs(tokenizer, pairs, cfg.max_length, cfg.max_prompt_length)
            fitted.update(counts)
            ref = reference_logps(
                model,
                encoded,
                tokenizer.pad_token_id,
                cfg.eval_batch_size,
                accelerator,
                f"dpo: reference log-probs ({name})",
            )
            datasets[name] = [(c, r, rc.item(), rr.item()) for (c, r), rc, rr in zip(encoded, *ref)]
    if cfg.gradient_checkpointing:
        # Non-reentrant: gradients reach an adapter even though the frozen base's inputs need none.
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.config.use_cache = False

    collator = PairCollator(tokenizer.pad_token_id)
    train_loader = seeded_loader(
        datasets["train"],
        cfg.batch_size,
        seed,
        collator,
        lengths=pair_lengths(datasets["train"]) if cfg.group_by_length else None,
    )
    val_loader = seeded_loader(
        datasets["val"], cfg.eval_batch_size, seed, collator, shuffle=False, lengths=pair_lengths(datasets["val"])
    )
    before, after, policy = fit(
        policy,
        train_loader,
        val_loader,
        cfg,
        accelerator,
        live_dir,
        desc="dpo",
        step=make_step(cfg.beta, cfg.loss_type, cfg.label_smoothing),
        evaluate=make_evaluate(cfg.beta, cfg.loss_type, cfg.label_smoothing, accelerator),
        grad_accum_steps=cfg.grad_accum_steps,
        checkpoint=checkpoint,
    )
    return {
        "train_loss": after["train_loss"],
        "val_loss": after["loss"],
        "val_loss_before": before["loss"],
        "val_reward_accuracy": after["reward_accuracy"],
        "val_chosen_reward": after["chosen_reward"],
        "val_rejected_reward": after["rejected_reward"],
        "val_margin": after["margin"],
        "kept_epoch": after["kept_epoch"],
        # Train and validation pairs fitted into max_length / max_prompt_length (conversation.FITTED).
        "fitted": dict(fitted),
    }, policy
