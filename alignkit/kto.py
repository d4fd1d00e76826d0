"""KTO (Ethayarajh et al. 2024) on unpaired feedback: answers marked desirable or undesirable, no pairs, as trl
0.11.4's KTOTrainer trains on them. Preference pairs in dpo.data become two examples each (data.unpair).

Each example also has a mismatched one: its prompt with another example's completion (a seeded derangement,
never its own prompt's), whose log-probs under the policy (without gradient) and the reference estimate the KL
term, KTO's reference point. The reference's log-probs are computed once before training (or each step), as the
paired objectives' are (alignkit.dpo).
"""

import random
from collections import Counter

import torch

from alignkit.conversation import FITTED, Renderer
from alignkit.data import Feedback, feedback_pairs, unpair
from alignkit.dpo import (
    PairCollator,
    enable_checkpointing,
    encode_pairs,
    pair_lengths,
    preference_accuracy_parts,
    reference_logps,
    reference_source,
    summary,
)
from alignkit.loop import fit
from alignkit.losses import kto_kl, kto_loss
from alignkit.policy import answer_token_logps, collate, forward_logps
from alignkit.training import progress, seeded_loader


def as_feedback(items):
    """Feedback examples from a mix of Feedback and preference pairs (each pair two examples)."""
    out = []
    for item in items:
        out.extend([item] if isinstance(item, Feedback) else unpair([item]))
    return out


def mismatches(examples, seed):
    """For each example the index of another whose prompt differs: examples in a seeded order, each taking the
    completion of the next one along with another prompt (None where every other example shares its prompt)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    out = [None] * len(examples)
    for k, i in enumerate(order):
        for step in range(1, len(order)):
            j = order[(k + step) % len(order)]
            if examples[j].prompt != examples[i].prompt:
                out[i] = j
                break
    return out


def encode_feedback(tokenizer, examples, max_length, max_prompt_length, seed):
    """([(example, KL example, desirable)], Counter of FITTED): each example (ids, prompt_len); the KL example is
    its prompt with a mismatched completion. Examples whose question cannot be kept, or that have no mismatch, are
    left out (counted as question_dropped / no_mismatch)."""
    renderer, counts = Renderer(tokenizer), Counter(dict.fromkeys(FITTED, 0))
    other = mismatches(examples, seed)
    out = []
    for i, ex in enumerate(examples):
        if other[i] is None:
            counts["no_mismatch"] += 1
            continue
        own = renderer.encode(ex.prompt, ex.completion, max_length, max_prompt_length, counts)
        kl = renderer.encode(ex.prompt, examples[other[i]].completion, max_length, max_prompt_length)
        if own is not None and kl is not None:
            out.append((own, kl, ex.desirable))
    return out, counts


class FeedbackCollator:
    """N items (example, KL example, desirable, reference logps or None) -> a batch of the N examples, with
    `kl_*` keys for their KL examples, `desirable` (N,) and, when given, reference_logps and reference_kl_logps."""

    def __init__(self, pad_id):
        self.pad_id = pad_id

    def __call__(self, items):
        own, kl, desirable, ref = zip(*items)
        batch = collate(list(own), self.pad_id)
        batch.update({f"kl_{k}": v for k, v in collate(list(kl), self.pad_id).items()})
        batch["desirable"] = torch.tensor(desirable)
        if ref[0] is not None:
            batch["reference_logps"] = torch.tensor([a for a, _ in ref])
            batch["reference_kl_logps"] = torch.tensor([b for _, b in ref])
        return batch


def _kl_batch(batch):
    return {k.removeprefix("kl_"): v for k, v in batch.items() if k.startswith("kl_")}


class KTOObjective:
    """KTO's loss of one batch: (loss, per-example losses, desirable rewards, undesirable rewards, KL estimate).
    gather(tensor) -> every process's values: the KL estimate is the mean over processes, at least 0, as trl's."""

    needs_reference = True

    def __init__(self, cfg, gather=None):
        self.cfg = cfg
        self.gather = gather or (lambda t: t)

    def __call__(self, logps, kl_logps, desirable, reference, reference_kl):
        # The mean over processes, clamped at 0 (trl's): KTO's reference point, and what the curves show as kl.
        kl = self.gather(kto_kl(kl_logps, reference_kl).reshape(1)).mean().clamp(min=0)
        d, u = desirable, ~desirable
        losses, chosen, rejected = kto_loss(
            logps[d],
            logps[u],
            reference[d],
            reference[u],
            kl,
            self.cfg.beta,
            self.cfg.desirable_weight,
            self.cfg.undesirable_weight,
        )
        return losses.mean(), losses, chosen, rejected, kl

    def rewards(self, logps, reference):
        """The implicit reward of each example, in batch order: beta (log pi - log pi_ref), detached (kto_loss's
        chosen and rejected rewards, not split by kind)."""
        return self.cfg.beta * (logps - reference).detach()


def _both(model, batch, reference):
    """The policy's summed log-probs of the examples (with gradient) and of their KL examples (without), and the
    reference's of both (from the batch, or from running `reference`)."""
    logps = answer_token_logps(model, batch).sum(-1)
    with torch.no_grad():
        kl_logps = forward_logps(model, _kl_batch(batch))
        if "reference_logps" in batch:
            return logps, kl_logps, batch["reference_logps"], batch["reference_kl_logps"]
        with reference() as frozen:
            return logps, kl_logps, forward_logps(frozen, batch), forward_logps(frozen, _kl_batch(batch))


def example_rewards(objective, logps, ref, desirable, losses):
    """Per example, in batch order: the implicit reward beta (log pi - log pi_ref) and KTO's loss (kto_loss
    returns the desirable examples' first) -- tensors of one size on every process, as gathering needs."""
    rewards = objective.rewards(logps, ref)
    per_example = torch.empty_like(rewards)
    per_example[desirable] = losses[: int(desirable.sum())].detach()
    per_example[~desirable] = losses[int(desirable.sum()) :].detach()
    return rewards, per_example


def make_step(objective, reference=None):
    def step(model, batch):
        logps, kl_logps, ref, ref_kl = _both(model, batch, reference)
        desirable = batch["desirable"]
        loss, _, _, _, kl = objective(logps, kl_logps, desirable, ref, ref_kl)
        # The mean reward of each kind over every process's batch (a batch may hold one kind only), the same on all.
        d = desirable.float()
        rewards = objective.rewards(logps, ref)
        sums = objective.gather(
            torch.stack([(rewards * d).sum(), d.sum(), (rewards * (1 - d)).sum(), (1 - d).sum()])[None]
        )
        sums = sums.reshape(-1, 4).sum(0)
        return loss, {
            "kl": kl,
            "chosen_reward": sums[0] / sums[1].clamp(min=1),
            "rejected_reward": sums[2] / sums[3].clamp(min=1),
        }

    return step


def make_evaluate(objective, pairs_loader, accelerator):
    """Validation: KTO's loss, rewards and KL estimate on the validation feedback, and the preference accuracy on
    the validation pairs (feedback_pairs: a desirable and an undesirable answer to one prompt)."""

    @torch.no_grad()
    def evaluate(model, loader):
        model.eval()
        parts, kls = [], []
        for batch in progress(loader, "dpo: validation (kto)", accelerator.is_main_process):
            with accelerator.autocast():
                logps, kl_logps, ref, ref_kl = _both(model, batch, None)
            desirable = batch["desirable"]
            _, losses, _, _, kl = objective(logps, kl_logps, desirable, ref, ref_kl)
            rewards, per_example = example_rewards(objective, logps, ref, desirable, losses)
            parts.append(accelerator.gather_for_metrics((per_example, rewards, desirable)))
            kls.append(kl)
        losses, rewards, desirable = (torch.cat(p) for p in zip(*parts))
        chosen, rejected = rewards[desirable], rewards[~desirable]
        prefers = [
            accelerator.gather_for_metrics(preference_accuracy_parts(model, batch, accelerator)[1])
            for batch in progress(pairs_loader or [], "dpo: validation pairs", accelerator.is_main_process)
        ]
        # None where the validation feedback holds no prompt with both kinds of answer.
        accuracy = torch.cat(prefers).mean().item() if prefers else None
        chosen_mean = chosen.mean().item() if len(chosen) else None
        rejected_mean = rejected.mean().item() if len(rejected) else None
        out = {
            "loss": losses.mean().item(),
            # KTO ranks no pairs in training: its reward accuracy is the preference accuracy (the implicit
            # reward beta (log pi - log pi_ref) of the chosen answer above the rejected one's, i.e. the same gain).
            "preference_accuracy": accuracy,
            "reward_accuracy": accuracy,
            "chosen_reward": chosen_mean,
            "rejected_reward": rejected_mean,
            "margin": None if chosen_mean is None or rejected_mean is None else chosen_mean - rejected_mean,
            "kl": torch.stack(kls).mean().item(),
        }
        # A value there is none of (no pair, or no answer of a kind) is left out: no curve point, null in the metrics.
        return {k: v for k, v in out.items() if v is not None}

    return evaluate


def desirable_weight_advice(examples, cfg):
    """trl 0.11.4's check of the weights against the data: desirable_weight x #desirable over undesirable_weight x
    #undesirable should be in [1, 4/3]. None when it is, else one line saying what to set."""
    n_d = sum(e.desirable for e in examples)
    n_u = len(examples) - n_d
    if not n_d or not n_u:
        return f"dpo.data: {n_d} desirable and {n_u} undesirable examples; KTO learns from both kinds"
    ratio = cfg.desirable_weight * n_d / (cfg.undesirable_weight * n_u)
    if 1 <= ratio <= 4 / 3:
        return None
    low, high = n_u * cfg.undesirable_weight / n_d, n_u * cfg.undesirable_weight / n_d * 4 / 3
    return (
        f"dpo.desirable_weight: {n_d} desirable and {n_u} undesirable examples give desirable_weight x "
        f"{n_d} / (undesirable_weight x {n_u}) = {ratio:.2f}, outside trl's advised [1, 1.33]; "
        f"desirable_weight in [{low:.2f}, {high:.2f}] would be in it"
    )


def train_kto(
    policy, load_reference, tokenizer, train_items, val_items, cfg, seed, accelerator, live_dir, checkpoint=None
):
    """KTO of `policy` on the feedback (and unpaired pairs) of train_items. Returns (metrics, unwrapped policy)."""
    objective = KTOObjective(cfg, accelerator.gather)
    train_examples, val_examples = as_feedback(train_items), as_feedback(val_items)
    advice = desirable_weight_advice(train_examples, cfg)
    if advice and accelerator.is_main_process:
        print(f"dpo: warning: {advice}")
    fitted = Counter()
    encoded = {}
    for name, examples in (("train", train_examples), ("val", val_examples)):
        encoded[name], counts = encode_feedback(tokenizer, examples, cfg.max_length, cfg.max_prompt_length, seed)
        fitted.update(counts)
    val_pairs, counts = encode_pairs(tokenizer, feedback_pairs(val_items), cfg.max_length, cfg.max_prompt_length)
    source, reference = reference_source(policy, load_reference, cfg, True, accelerator.device)
    pad, size = tokenizer.pad_token_id, cfg.eval_batch_size
    with source() as model:
        logps = {}
        for name in ("train", "val") if reference == "precomputed" else ("val",):
            # Each example and its KL example as the two sides of a "pair": one pass, longest first.
            logps[name] = reference_logps(model, encoded[name], pad, size, accelerator, f"dpo: reference ({name})")
        start = (  # none where no validation prompt has both kinds of answer
            reference_logps(model, val_pairs, pad, size, accelerator, "dpo: start (val pairs)")
            if val_pairs
            else (torch.zeros(0), torch.zeros(0))
        )

    def items(name):
        ref = logps.get(name)
        return [
            (own, kl, desirable, None if ref is None else (ref[0][i].item(), ref[1][i].item()))
            for i, (own, kl, desirable) in enumerate(encoded[name])
        ]

    enable_checkpointing(policy, cfg)
    collator = FeedbackCollator(pad)
    train = items("train")
    train_loader = seeded_loader(
        train, cfg.batch_size, seed, collator, lengths=pair_lengths(train) if cfg.group_by_length else None
    )
    val = items("val")
    val_loader = seeded_loader(val, size, seed, collator, shuffle=False, lengths=pair_lengths(val))
    pairs = [(c, r, (a.item(), b.item())) for (c, r), a, b in zip(val_pairs, *start)]
    pairs_loader = pairs and accelerator.prepare(
        seeded_loader(pairs, size, seed, PairCollator(pad, "start_logps"), shuffle=False, lengths=pair_lengths(pairs))
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
        evaluate=make_evaluate(objective, pairs_loader, accelerator),
        grad_accum_steps=cfg.grad_accum_steps,
        checkpoint=checkpoint,
    )
    n_d = sum(e[2] for e in encoded["train"])
    return {
        **summary(cfg, reference, before, after),
        # The training examples KTO saw, by kind, and the validation pairs behind val_preference_accuracy.
        "examples": {"desirable": n_d, "undesirable": len(encoded["train"]) - n_d},
        "val_pairs": len(pairs),
        "fitted": dict(fitted),
    }, policy
