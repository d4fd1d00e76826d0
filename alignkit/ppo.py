"""RLHF with trl 0.11's PPOTrainer: rollouts from the policy, rewards from the named reward models.

The policy (any causal LM, with trl's value head) generates from prompts rendered
by alignkit.conversation (its chat template, if it has one); responses are decoded
to text and scored by every reward model (ensemble.RewardModels), each of which
re-tokenizes (conversation as text, answer) with its own BERT tokenizer; their
scores are combined as ppo.reward says (a weighted sum, or Llama 2's rule).

KL control in trl 0.11: the adaptive controller (adap_kl_ctrl) moves the KL
coefficient from init_kl_coef towards `target` (our ppo.kl_target) over
`horizon` (ppo.kl_horizon) samples. `target_kl` does NOT steer it: it is read
only by early stopping, which is off unless early_stopping=True, and then stops
a step's PPO epochs once the policy's KL to its rollout exceeds 1.5 x target_kl.
"""

import copy
import warnings

import numpy as np
import torch

from alignkit.batching import step_plan
from alignkit.conversation import Renderer
from alignkit.loop import TrainingRun
from alignkit.modeldir import language_model
from alignkit.policy import disable_dropout, max_prompt_tokens
from alignkit.training import PRECISIONS, check_precision, choose_optimizer, progress


def query_tensors(tokenizer, prompts, max_prompt_tokens):
    """Unpadded prompt ids per prompt (Messages), fitted to max_prompt_tokens (oldest turns dropped first)."""
    renderer = Renderer(tokenizer)
    return [torch.tensor(renderer.fit_prompt(m, max_prompt_tokens)[0]) for m in prompts]


def shaped_rewards(scores, baselines, clip):
    """r = clamp(score - baseline, -clip, clip), per sample."""
    return torch.clamp(scores - baselines, -clip, clip)


def generation_kwargs(cfg, tokenizer):
    """Sampling settings; generation stops at EOS or the chat template's end-of-turn."""
    return {
        "do_sample": True,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": cfg.top_k,
        "max_new_tokens": cfg.max_new_tokens,
        "pad_token_id": tokenizer.eos_token_id,
        "eos_token_id": Renderer(tokenizer).stop_ids,
    }


def value_head_model(model, frozen=False):
    """`model` (a causal LM, or one under a LoRA adapter) with trl's value head, dropout off everywhere
    (so the first PPO ratio is exactly 1)."""
    from trl import AutoModelForCausalLMWithValueHead

    model = AutoModelForCausalLMWithValueHead.from_pretrained(model, summary_dropout_prob=0.0)
    disable_dropout(model)
    if frozen:
        model.requires_grad_(False).eval()
    return model


def make_trainer(cfg, seed, policy, reference, tokenizer, total_steps):
    """trl's PPOTrainer configured from the `ppo` params section, with ppo.optimizer and the ppo.lr_scheduler
    schedule. reference: a frozen copy of the policy, or None when the policy has a LoRA adapter (trl then
    scores the reference with the adapter switched off)."""
    from transformers import get_scheduler
    from trl import PPOConfig, PPOTrainer

    check_precision(cfg.precision, "ppo.precision")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        config = PPOConfig(
            learning_rate=cfg.lr,
            batch_size=cfg.batch_size,
            mini_batch_size=cfg.mini_batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            ppo_epochs=cfg.ppo_epochs,
            init_kl_coef=cfg.init_kl_coef,
            adap_kl_ctrl=cfg.adap_kl_ctrl,
            target=cfg.kl_target,
            horizon=cfg.kl_horizon,
            target_kl=cfg.target_kl,
            early_stopping=cfg.early_stopping,
            cliprange=cfg.cliprange,
            cliprange_value=cfg.cliprange_value,
            vf_coef=cfg.vf_coef,
            max_grad_norm=cfg.max_grad_norm,
            seed=seed,
            optimize_device_cache=False,  # no torch.cuda.empty_cache() in the hot loop
            accelerator_kwargs={"mixed_precision": PRECISIONS[cfg.precision]},
            exp_name="ppo",
            log_with=None,
        )
    optimizer = choose_optimizer((p for p in policy.parameters() if p.requires_grad), cfg, "ppo.optimizer")
    scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps
    )
    with warnings.catch_warnings():
        # The legacy PPOTrainer is deprecated in favour of PPOv2Trainer, and we batch the prompts ourselves.
        warnings.filterwarnings("ignore", message=".*(deprecated|No dataset is provided).*")
        trainer = PPOTrainer(
            config=config,
            model=policy,
            ref_model=reference,
            tokenizer=tokenizer,
            optimizer=optimizer,
            lr_scheduler=scheduler,
        )
    # trl 0.11.4 keeps the parameters to clip as a one-shot `filter` iterator: it is used up by the
    # first clip_grad_norm_, so max_grad_norm would act on the first optimizer step only (and a
    # run resumed from a checkpoint would clip where the uninterrupted one did not). A list clips every step.
    trainer.model_params = [p for p in trainer.model.parameters() if p.requires_grad]
    return trainer


def respond(trainer, queries, cfg, tokenizer):
    """Batched sampling (left padding, unpadded queries in): (response id tensors, response texts)."""
    responses = trainer.generate(
        queries, batch_size=cfg.batch_size, return_prompt=False, **generation_kwargs(cfg, tokenizer)
    )
    return responses, [tokenizer.decode(r, skip_special_tokens=True).strip() for r in responses]


@torch.no_grad()
def mean_score(trainer, scorer, tokenizer, pairs, cfg, seed):
    """Mean combined reward of the policy's sampled answers to the prompts of `pairs` (seeded), and each
    reward model's mean raw score: (combined, {name: mean})."""
    torch.manual_seed(seed)
    questions = [p.prompt for p in pairs]
    queries = [q.to(trainer.accelerator.device) for q in query_tensors(tokenizer, questions, max_prompt(cfg, trainer))]
    texts = []  # trl generates in chunks of cfg.batch_size anyway: the same chunks, one at a time, for a bar
    for start in progress(range(0, len(queries), cfg.batch_size), "ppo: held-out answers"):
        texts += respond(trainer, queries[start : start + cfg.batch_size], cfg, tokenizer)[1]
    combined, raw = scorer.score(questions, texts, [p.unsafe for p in pairs], "ppo: held-out scores")
    return combined.mean().item(), {name: s.mean().item() for name, s in raw.items()}


def max_prompt(cfg, trainer):
    return max_prompt_tokens(
        language_model(trainer.accelerator.unwrap_model(trainer.model)).config,
        cfg.max_new_tokens,
        cfg.max_prompt_length,
        "ppo.max_new_tokens",
    )


STEP_CURVES = {  # dvclive name -> trl stats key
    "kl": "objective/kl",
    "kl_coef": "objective/kl_coef",
    "entropy": "objective/entropy",
    "loss": "ppo/loss/total",
    "clipfrac": "ppo/policy/clipfrac",
    "lr": "ppo/learning_rate",
}


def reward_baselines(scorer, pairs, cfg):
    """{(prompt, chosen): b} for reward_baseline=reference (b = the combined reward of the preferred answer),
    else {}. The baseline never changes, so it is scored once, in batches, not every step."""
    if cfg.reward_baseline != "reference":
        return {}
    combined, _ = scorer.score(
        [p.prompt for p in pairs], [p.chosen for p in pairs], [p.unsafe for p in pairs], "ppo: baseline rewards"
    )
    return dict(zip(((p.prompt, p.chosen) for p in pairs), combined.tolist()))


def ppo_iteration(trainer, scorer, tokenizer, batch, baseline, cfg, step_hook=None):
    """Generate, score, step for one batch of pairs: (queries, responses, scores, rewards, trl stats, raw).

    scores: the combined reward-model score (B,); raw: each reward model's scores {name: (B,)}.
    Generation is batched with left padding, each reward model scores the whole batch
    in one call, and nothing empties a cache or waits on the host in between.
    """
    device = trainer.accelerator.device
    questions = [p.prompt for p in batch]
    queries = [q.to(device) for q in query_tensors(tokenizer, questions, max_prompt(cfg, trainer))]
    responses, texts = respond(trainer, queries, cfg, tokenizer)
    scores, raw = scorer.score(questions, texts, [p.unsafe for p in batch])  # (B,), one batched call per model
    b = torch.tensor([baseline[(p.prompt, p.chosen)] for p in batch]) if baseline else torch.zeros(len(batch))
    rewards = shaped_rewards(scores, b, cfg.reward_clip)
    if step_hook is not None:
        step_hook(queries, responses, rewards)
    stats = trainer.step(queries, responses, [r.to(device) for r in rewards])
    return queries, responses, scores, rewards, stats, raw


def kl_state(value):
    """The KL controller's coefficient, saved with its exact type: trl's adaptive controller turns
    the Python float it starts from into a NumPy float32, and the two round differently."""
    if isinstance(value, np.generic):
        return {"numpy": torch.from_numpy(np.asarray(value).reshape(1).copy())}
    return {"python": float(value)}


def kl_value(state):
    return state["numpy"].numpy()[0] if "numpy" in state else state["python"]


def plan_epochs(pairs, cfg, seed):
    """PPO's step plan (batching.step_plan): per epoch, shuffled full batches of ppo.batch_size prompts."""
    return step_plan(pairs, cfg.batch_size, cfg.epochs, cfg.max_steps_per_epoch, seed, "ppo.batch_size")


def train_ppo(
    trainer, scorer, tokenizer, plan, baseline, val_pairs, cfg, seed, live_dir, checkpoint=None, step_hook=None
):
    """PPO over the batches of `plan` (plan_epochs), run in alignkit.loop.TrainingRun, with rewards measured
    against `baseline` (reward_baselines). Returns metrics for metrics/ppo.json.

    checkpoint: a Checkpointer or None; with one, a saved run resumes (policy and value head, optimizer,
    scheduler, KL controller, RNG states, position) and a checkpoint is written every checkpoint.every PPO
    steps. A non-finite loss or score stops with a TrainingError naming the step. step_hook(queries,
    responses, rewards), if given, sees what each PPOTrainer.step receives.
    """
    run = TrainingRun("ppo", sum(map(len, plan)), trainer.accelerator, live_dir, checkpoint)
    saved = run.resume(trainer.model)
    if saved:
        trainer.optimizer.load_state_dict(saved["optimizer"])
        trainer.lr_scheduler.load_state_dict(saved["scheduler"])
        trainer.kl_ctl.value = kl_value(saved["kl_coef"])
    # one sampled answer per validation row, scored before and after training
    before = saved["before"] if saved else mean_score(trainer, scorer, tokenizer, val_pairs, cfg, seed)
    sums = (
        saved["sums"]
        if saved
        else {
            "per_epoch": {},
            "epoch_scores": [],
            "lengths": [],
            "stats": {},
            "model_scores": {name: [] for name in scorer.names},
        }
    )
    run.start()
    for epoch in run.epochs(len(plan)):
        if not run.resuming:
            sums["epoch_scores"] = []
        for batch in run.batches(plan[epoch]):
            queries, responses, scores, rewards, stats, raw = ppo_iteration(
                trainer, scorer, tokenizer, batch, baseline, cfg, step_hook
            )
            sums["stats"] = {name: float(stats[key]) for name, key in STEP_CURVES.items()}
            sums["epoch_scores"].append(scores.mean().item())
            sums["lengths"].append(sum(len(r) for r in responses) / len(responses))
            for name, values in raw.items():
                sums["model_scores"][name].append(values.mean().item())
            run.stepped(
                {
                    "loss": float(stats["ppo/loss/total"]),
                    "score": scores.mean().item(),
                    **{f"score_{name}": s[-1] for name, s in sums["model_scores"].items()},
                    "reward": rewards.mean().item(),
                    **sums["stats"],
                    "response_length": sums["lengths"][-1],
                },
                score=f"{sums['epoch_scores'][-1]:.2f}",
                kl=f"{sums['stats']['kl']:.3f}",
            )
            run.save_if_due(
                trainer.model,
                lambda: {
                    "optimizer": trainer.optimizer.state_dict(),
                    "scheduler": trainer.lr_scheduler.state_dict(),
                    "kl_coef": kl_state(trainer.kl_ctl.value),
                    "before": before,
                    "sums": copy.deepcopy(sums),
                },
            )
        sums["per_epoch"][f"epoch_{epoch + 1}"] = sum(sums["epoch_scores"]) / len(sums["epoch_scores"])
        run.say(f"epoch {epoch}: mean combined reward-model score {sums['per_epoch'][f'epoch_{epoch + 1}']:.4f}")
    run.finish(trainer.model)
    after = mean_score(trainer, scorer, tokenizer, val_pairs, cfg, seed)
    (before, models_before), (after, models_after), last = before, after, sums["stats"]
    return {
        "score_per_epoch": sums["per_epoch"],
        # The combined reward (ppo.reward) of one sampled answer per validation prompt, before and after.
        "val_score_before": before,
        "val_score_after": after,
        # Each reward model's mean raw score on those answers, and over the training rollouts.
        "val_model_scores_before": models_before,
        "val_model_scores_after": models_after,
        "train_model_scores": {name: sum(v) / len(v) for name, v in sums["model_scores"].items()},
        "kl": last["kl"],
        "kl_coef": last["kl_coef"],
        "entropy": last["entropy"],
        "clipfrac": last["clipfrac"],
        "response_length": sum(sums["lengths"]) / len(sums["lengths"]),
    }
