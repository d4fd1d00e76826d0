"""Online RL without a value model: GRPO and RLOO on learned and verifiable rewards, run in alignkit.loop.TrainingRun.

Each step (one rollout): num_generations answers are sampled to each of prompts_per_step prompts; each answer's
reward is the reward models' combined score (alignkit.ensemble, as ppo.reward combines it) times
online.reward.reward_models, plus the weight of each verifiable rule (alignkit.verifiable) it passes; the rewards of
each prompt's group become advantages (alignkit.losses: group_advantages for grpo, rloo_advantages for rloo); then
num_iterations optimizer steps on the rollout minimise the clipped-ratio loss (clipped_objective), with grpo's k3 KL
penalty to the reference, aggregated as online.loss_aggregation says (aggregate).

Log-probs are those of logits / temperature, the distribution the answers were sampled from. With beta: 0 no
reference is loaded or run (metrics' reference_forwards counts its forward passes). Under `accelerate launch`
each process samples and scores whole groups of its share of the step's prompts, and the loss is normalised
over the whole rollout (every process's answers and tokens), so P processes take the step one process would.
Each answer is sampled from a generator of its own, seeded by the step and its place in it (evaluation.RowNoise),
so it does not depend on which process samples it or on what shares its batch.
"""

import copy
from contextlib import nullcontext

import torch

from alignkit.conversation import Renderer
from alignkit.evaluation import ended_turn, generate
from alignkit.loop import TrainingRun
from alignkit.losses import aggregate, clipped_objective, group_advantages, k3_kl, rloo_advantages
from alignkit.policy import answer_token_logps, collate, max_prompt_tokens
from alignkit.training import make_optimizer
from alignkit.verifiable import Rules


class Rewards:
    """An answer's reward: weights.reward_models x the reward models' combined score (scorer: ensemble.RewardModels,
    or None when that weight is 0) + the weight of each rule (weights.rules) it passes."""

    def __init__(self, scorer, rules, weights):
        self.scorer, self.rules, self.weights = scorer, rules, weights

    def __call__(self, pairs, answers, ended, desc=None):
        """(rewards (N,), {curve name: (N,) tensor or list}) for the answers to pairs (each a data.Pair)."""
        parts = {}
        total = torch.zeros(len(answers))
        if self.scorer is not None:
            combined, raw = self.scorer.score([p.prompt for p in pairs], answers, [p.unsafe for p in pairs], desc)
            total = total + self.weights.reward_models * combined
            parts = {"score": combined, **{f"score_{name}": s for name, s in raw.items()}}
        passed = self.rules.check(answers, [p.answer for p in pairs], ended)
        total = total + Rules.reward(passed, self.weights.rules, len(answers))
        return total, {**parts, **{f"rule_{name}": values for name, values in passed.items()}}


def generation(cfg):
    """The sampling settings of the online params section."""
    return {k: getattr(cfg, k) for k in ("temperature", "top_p", "top_k", "max_new_tokens")}


def sample_groups(model, tokenizer, pairs, seeds, cfg, budget):
    """num_generations answers to each of `pairs`, in one batch, grouped (answer j of pair i at row i * G + j), each
    answer sampled from its own generator (seeds: one per pair; answer j's is seed * G + j), so it does not depend
    on the rest of the batch: ([text], [answer ids], [ended its turn], [prompt ids])."""
    group = cfg.num_generations
    prompts = [p.prompt for p in pairs for _ in range(group)]
    row_seeds = [seed * group + j for seed in seeds for j in range(group)]
    texts, ids = generate(
        model, tokenizer, prompts, generation(cfg), len(prompts), 0, None, cfg.max_prompt_length, row_seeds
    )
    renderer = Renderer(tokenizer)
    prompt_ids = [renderer.fit_prompt(p.prompt, budget)[0] for p in pairs for _ in range(group)]
    return texts, ids, ended_turn(ids, renderer.stop_ids), prompt_ids


def chunks(n, size):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def summarise(values):
    """Mean of a list that may hold None (a rule that does not apply): None when nothing counts."""
    counted = [float(v) for v in values if v is not None]
    return sum(counted) / len(counted) if counted else None


class OnlineTrainer:
    """GRPO or RLOO of `model` (prepared by accelerate with its optimizer and schedule) on `plan` (batching.step_plan).

    reference: None (beta 0), or a function giving a context manager that yields the reference model
    (adapters.live_reference). rewards: a Rewards."""

    def __init__(self, model, optimizer, scheduler, reference, tokenizer, rewards, cfg, seed, accelerator):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.reference, self.tokenizer, self.rewards = reference, tokenizer, rewards
        self.cfg, self.seed, self.accelerator = cfg, seed, accelerator
        self.reference_forwards = 0
        unwrapped = accelerator.unwrap_model(model)
        self.budget = max_prompt_tokens(
            unwrapped.config, cfg.max_new_tokens, cfg.max_prompt_length, "online.max_new_tokens"
        )

    def _logps(self, model, batches):
        return [answer_token_logps(model, b, self.cfg.temperature) for b in batches]

    @torch.no_grad()
    def _frozen_logps(self, batches, reference):
        if reference:
            self.reference_forwards += len(batches)
            with self.reference() as model:
                return self._logps(model, batches)
        model = self.accelerator.unwrap_model(self.model)
        was = model.training
        model.eval()
        out = self._logps(model, batches)
        model.train(was)
        return out

    def rollout(self, pairs, step):
        """Sample, score and compute advantages for this process's share of a step's prompts."""
        cfg, acc = self.cfg, self.accelerator
        mine = list(range(acc.process_index, len(pairs), acc.num_processes))
        model = acc.unwrap_model(self.model)
        # each answer seeded by the step and its prompt's place in it, on whichever process samples it
        texts, ids, ended, prompts = sample_groups(
            model, self.tokenizer, [pairs[i] for i in mine], [self._seed(step, i) for i in mine], cfg, self.budget
        )
        model.train()
        group = [pairs[i] for i in mine for _ in range(cfg.num_generations)]
        rewards, parts = self.rewards(group, texts, ended)
        examples = [(p + a, len(p)) for p, a in zip(prompts, ids)]
        batches = [
            collate(examples[s], self.tokenizer.pad_token_id) for s in chunks(len(examples), cfg.mini_batch_size)
        ]
        batches = [{k: v.to(acc.device) for k, v in b.items()} for b in batches]
        need_old = cfg.num_iterations > 1 or (cfg.algorithm == "rloo" and cfg.beta)
        old = self._frozen_logps(batches, reference=False) if need_old else None
        ref = self._frozen_logps(batches, reference=True) if cfg.beta else None
        if cfg.algorithm == "rloo":
            seq_kl = (
                torch.cat([(o - r).sum(1) for o, r in zip(old, ref)]).cpu() if cfg.beta else torch.zeros(len(texts))
            )
            advantages = rloo_advantages(rewards, seq_kl, cfg.beta, cfg.num_generations)
        else:
            advantages = group_advantages(rewards, cfg.num_generations, cfg.scale_rewards)
        stds = rewards.view(-1, cfg.num_generations).std(1)
        return {
            "batches": batches,
            "old": old,
            "ref": ref,
            "advantages": advantages.to(acc.device),
            "rewards": rewards,
            "group_std": stds,
            "parts": parts,
            "lengths": [len(a) for a in ids],
            "texts": texts,
        }

    def _seed(self, step, index):
        return self.seed * 1_000_003 + step * 1009 + index

    def optimise(self, roll):
        """num_iterations optimizer steps on one rollout: {loss, kl, clipfrac} averaged over them."""
        cfg, acc = self.cfg, self.accelerator
        masks = [b["loss_mask"][:, 1:] for b in roll["batches"]]
        totals = acc.reduce(
            torch.tensor([float(sum(len(m) for m in masks)), float(sum(m.sum() for m in masks))], device=acc.device),
            "sum",
        )
        sequences, tokens = totals[0], totals[1]
        logs = {"loss": [], "kl": [], "clipfrac": []}
        self.model.train()
        for _ in range(cfg.num_iterations):
            start = 0
            loss_sum = kl_sum = clipped_sum = torch.zeros((), device=acc.device)
            for k, (batch, mask) in enumerate(zip(roll["batches"], masks)):
                n = mask.shape[0]
                advantages = roll["advantages"][start : start + n]
                start += n
                last = k == len(masks) - 1
                with acc.no_sync(self.model) if not last else nullcontext():
                    with acc.autocast():
                        logps = answer_token_logps(self.model, batch, cfg.temperature)
                    old = roll["old"][k] if roll["old"] is not None else logps.detach()
                    losses, clipped = clipped_objective(logps, old, advantages, cfg.epsilon, cfg.epsilon_high)
                    if cfg.beta and cfg.algorithm == "grpo":
                        kl = k3_kl(logps, roll["ref"][k])
                        losses = losses + cfg.beta * kl
                        kl_sum = kl_sum + (kl.detach() * mask).sum()
                    elif cfg.beta:  # rloo: the KL is in the reward; measured here, as k3, for the curves
                        kl_sum = kl_sum + (k3_kl(logps.detach(), roll["ref"][k]) * mask).sum()
                    # The rollout's loss over every process: DDP averages gradients, so each scales its part by P.
                    loss = aggregate(losses, mask, cfg.loss_aggregation, cfg.max_new_tokens, sequences, tokens)
                    acc.backward(loss * acc.num_processes)
                loss_sum = loss_sum + loss.detach()
                clipped_sum = clipped_sum + (clipped & mask).sum()
            acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
            reduced = acc.reduce(torch.stack([loss_sum, kl_sum, clipped_sum.float()]), "sum")
            logs["loss"].append(reduced[0].item())
            logs["kl"].append((reduced[1] / tokens).item() if cfg.beta else None)
            logs["clipfrac"].append((reduced[2] / tokens).item())
        return {**{k: summarise(v) for k, v in logs.items()}, "lr": self.scheduler.get_last_lr()[0]}

    @torch.no_grad()
    def held_out(self, pairs, seed, desc):
        """One sampled answer per held-out prompt (seeded), on every process: the mean reward, the reward models'
        combined score and each rule's pass rate: {name: float or None}."""
        model = self.accelerator.unwrap_model(self.model)
        prompts = [p.prompt for p in pairs]
        texts, ids = generate(
            model, self.tokenizer, prompts, generation(self.cfg), 64, seed, desc, self.cfg.max_prompt_length
        )
        model.train()
        rewards, parts = self.rewards(pairs, texts, ended_turn(ids, Renderer(self.tokenizer).stop_ids), desc)
        return {
            "reward": rewards.mean().item(),
            **{name: summarise(v.tolist() if torch.is_tensor(v) else v) for name, v in parts.items()},
        }


def train_online(trainer, plan, val, cfg, live_dir, checkpoint=None, step_hook=None):
    """GRPO or RLOO over the batches of `plan`, in alignkit.loop.TrainingRun: one step per rollout (its
    num_iterations optimizer steps inside). Returns the metrics of metrics/online.json.

    checkpoint: a Checkpointer or None; a saved run resumes (weights, optimizer, scheduler, RNG, position, sums) and
    continues as the uninterrupted one would have. step_hook(step, rollout), if given, sees each rollout."""
    acc = trainer.accelerator
    run = TrainingRun("online", sum(map(len, plan)), acc, live_dir, checkpoint)
    saved = run.resume(trainer.model)
    if saved:
        trainer.optimizer.load_state_dict(saved["optimizer"])
        trainer.scheduler.load_state_dict(saved["scheduler"])
        trainer.reference_forwards = saved["reference_forwards"]
    before = saved["before"] if saved else trainer.held_out(val, trainer.seed, "online: held-out answers")
    sums = saved["sums"] if saved else {"curves": [], "per_epoch": {}}
    run.start()
    for epoch in run.epochs(len(plan)):
        epoch_rewards = [] if not run.resuming else sums.get("epoch_rewards", [])
        for batch in run.batches(plan[epoch]):
            roll = trainer.rollout(batch, run.step)
            if step_hook is not None:
                step_hook(run.step, roll)
            losses = trainer.optimise(roll)
            curves = step_curves(roll, losses, acc)
            sums["curves"].append(curves)
            epoch_rewards.append(curves["reward"])
            sums["epoch_rewards"] = epoch_rewards
            run.stepped(curves, reward=f"{curves['reward']:.2f}", kl=f"{curves.get('kl', float('nan')):.3f}")
            run.save_if_due(
                trainer.model,
                lambda: {
                    "optimizer": trainer.optimizer.state_dict(),
                    "scheduler": trainer.scheduler.state_dict(),
                    "reference_forwards": trainer.reference_forwards,
                    "before": before,
                    "sums": copy.deepcopy(sums),
                },
            )
        sums["per_epoch"][f"epoch_{epoch + 1}"] = sum(epoch_rewards) / len(epoch_rewards)
        run.say(f"epoch {epoch}: mean training reward {sums['per_epoch'][f'epoch_{epoch + 1}']:.4f}")
    run.finish(trainer.model)
    after = trainer.held_out(val, trainer.seed, "online: held-out answers")
    curves = sums["curves"]

    def over_run(name):
        return summarise([c.get(name) for c in curves])

    return {
        "algorithm": cfg.algorithm,
        "steps": len(curves),
        "answers_generated": len(curves) * cfg.prompts_per_step * cfg.num_generations,
        "reward_per_epoch": sums["per_epoch"],
        # One sampled answer per validation prompt, before and after: the reward, its parts, each rule's pass rate.
        "val_before": before,
        "val_after": after,
        "val_reward_before": before["reward"],
        "val_reward_after": after["reward"],
        # Over the training rollouts: the group reward's mean and std, the share of groups that gave no gradient.
        "train_reward": over_run("reward"),
        "group_reward_std": over_run("group_reward_std"),
        "zero_variance_share": over_run("zero_variance_share"),
        "kl": curves[-1].get("kl"),  # of the last step; null with beta 0
        "clipfrac": over_run("clipfrac"),
        "response_length": over_run("response_length"),
        # each rule's pass rate over the steps with prompts it applies to
        "train_rules": {
            k[len("rule_") :]: over_run(k) for k in sorted({k for c in curves for k in c}) if k.startswith("rule_")
        },
        # Forward passes of the reference model (0 with beta: 0: none is loaded).
        "reference_forwards": trainer.reference_forwards,
    }


def step_curves(roll, losses, accelerator):
    """The numbers of one step, reduced over processes: {name: float}; a rule that applied to no answer of the step
    is left out."""
    parts = roll["parts"]
    local = {
        "reward": roll["rewards"].mean(),
        "group_reward_std": roll["group_std"].mean(),
        "zero_variance_share": (roll["group_std"] == 0).float().mean(),
        "response_length": torch.tensor(roll["lengths"], dtype=torch.float32).mean(),
        **{k: v.mean() for k, v in parts.items() if torch.is_tensor(v)},
    }
    device = accelerator.device
    means = accelerator.reduce({k: v.float().to(device) for k, v in local.items()}, "mean")
    # kl: the k3 estimate of KL(policy || reference) per answer token; not measured with beta 0 (no reference)
    out = {"loss": losses["loss"], **{k: v.item() for k, v in means.items()}, "clipfrac": losses["clipfrac"]}
    out["lr"] = losses["lr"]
    if losses["kl"] is not None:
        out["kl"] = losses["kl"]
    for name, values in parts.items():
        if not torch.is_tensor(values):  # a rule: pass counts over the answers it applies to, on every process
            counted = accelerator.reduce(
                torch.tensor(
                    [float(sum(bool(v) for v in values if v is not None)), float(sum(v is not None for v in values))],
                    device=device,
                ),
                "sum",
            )
            if counted[1] > 0:
                out[name] = (counted[0] / counted[1]).item()
    return out


def build(model, tokenizer, reference, rewards, cfg, seed, accelerator, steps):
    """An OnlineTrainer with the model, optimizer and schedule (warmup over online.warmup_ratio of the optimizer
    steps) prepared by accelerate."""
    optimizer, scheduler = make_optimizer(model, cfg, steps * cfg.num_iterations * accelerator.num_processes, "online")
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return OnlineTrainer(model, optimizer, scheduler, reference, tokenizer, rewards, cfg, seed, accelerator)
