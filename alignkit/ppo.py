"""RLHF with trl 0.11's PPOTrainer: rollouts from the policy, rewards from the BERT reward model.

The policy (GPT-2 family, with trl's value head) generates with its own
tokenizer; responses are decoded to text and scored by the reward model through
RewardScorer, which re-tokenizes (question, answer) with the BERT tokenizer.

KL control in trl 0.11: the adaptive controller (adap_kl_ctrl) moves the KL
coefficient from init_kl_coef towards `target` (our ppo.kl_target) over
`horizon` (ppo.kl_horizon) samples. `target_kl` does NOT steer it: it is read
only by early stopping, which is off unless early_stopping=True, and then stops
a step's PPO epochs once the policy's KL to its rollout exceeds 1.5 x target_kl.
"""

import random
import warnings

import torch
from tqdm.auto import tqdm

from alignkit.policy import disable_dropout, max_prompt_tokens
from alignkit.prompts import format_prompt
from alignkit.training import PRECISIONS


def batches(items, batch_size, seed):
    """Shuffled full batches: every batch has exactly batch_size items; a partial last one is dropped."""
    order = list(items)
    random.Random(seed).shuffle(order)
    return [order[i: i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


def query_tensors(tokenizer, questions, max_prompt_tokens):
    """Unpadded prompt ids per question, cut from the left to fit max_prompt_tokens."""
    ids = tokenizer([format_prompt(q) for q in questions], add_special_tokens=False)["input_ids"]
    return [torch.tensor(x[-max_prompt_tokens:]) for x in ids]


def shaped_rewards(scores, baselines, clip):
    """r = clamp(score - baseline, -clip, clip), per sample."""
    return torch.clamp(scores - baselines, -clip, clip)


def generation_kwargs(cfg, tokenizer):
    return {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
            "max_new_tokens": cfg.max_new_tokens, "pad_token_id": tokenizer.eos_token_id,
            "eos_token_id": tokenizer.eos_token_id}


def load_value_head_model(path, frozen=False):
    """A policy with trl's value head, dropout off everywhere (so the first PPO ratio is exactly 1)."""
    from trl import AutoModelForCausalLMWithValueHead

    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(path), local_files_only=True,
                                                              summary_dropout_prob=0.0)
    disable_dropout(model)
    if frozen:
        model.requires_grad_(False).eval()
    return model


def make_trainer(cfg, seed, policy, reference, tokenizer, total_steps):
    """trl's PPOTrainer configured from the `ppo` params section, with AdamW and linear warmup."""
    from transformers import get_linear_schedule_with_warmup
    from trl import PPOConfig, PPOTrainer

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        config = PPOConfig(
            learning_rate=cfg.lr, batch_size=cfg.batch_size, mini_batch_size=cfg.mini_batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps, ppo_epochs=cfg.ppo_epochs,
            init_kl_coef=cfg.init_kl_coef, adap_kl_ctrl=cfg.adap_kl_ctrl, target=cfg.kl_target,
            horizon=cfg.kl_horizon, target_kl=cfg.target_kl, early_stopping=cfg.early_stopping,
            cliprange=cfg.cliprange, cliprange_value=cfg.cliprange_value, vf_coef=cfg.vf_coef,
            max_grad_norm=cfg.max_grad_norm, seed=seed,
            optimize_device_cache=False,  # no torch.cuda.empty_cache() in the hot loop
            accelerator_kwargs={"mixed_precision": PRECISIONS[cfg.precision]},
            exp_name="ppo", log_with=None,
        )
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, total_steps)
    with warnings.catch_warnings():
        # The legacy PPOTrainer is deprecated in favour of PPOv2Trainer, and we batch the prompts ourselves.
        warnings.filterwarnings("ignore", message=".*(deprecated|No dataset is provided).*")
        return PPOTrainer(config=config, model=policy, ref_model=reference, tokenizer=tokenizer,
                          optimizer=optimizer, lr_scheduler=scheduler)


def respond(trainer, queries, cfg, tokenizer):
    """Batched sampling (left padding, unpadded queries in): (response id tensors, response texts)."""
    responses = trainer.generate(queries, batch_size=cfg.batch_size, return_prompt=False,
                                 **generation_kwargs(cfg, tokenizer))
    return responses, [tokenizer.decode(r, skip_special_tokens=True).strip() for r in responses]


@torch.no_grad()
def mean_score(trainer, scorer, tokenizer, questions, cfg, seed):
    """Mean reward-model score of the policy's sampled answers to `questions` (seeded)."""
    torch.manual_seed(seed)
    queries = [q.to(trainer.accelerator.device) for q in query_tensors(tokenizer, questions, max_prompt(cfg, trainer))]
    _, texts = respond(trainer, queries, cfg, tokenizer)
    return scorer.score(questions, texts).mean().item()


def max_prompt(cfg, trainer):
    return max_prompt_tokens(trainer.accelerator.unwrap_model(trainer.model).pretrained_model.config,
                             cfg.max_new_tokens)


STEP_CURVES = {  # dvclive name -> trl stats key
    "kl": "objective/kl", "kl_coef": "objective/kl_coef", "entropy": "objective/entropy",
    "loss": "ppo/loss/total", "clipfrac": "ppo/policy/clipfrac", "lr": "ppo/learning_rate",
}


def reward_baselines(scorer, pairs, cfg):
    """{(prompt, chosen): b} for reward_baseline=reference (b = RM(question, preferred answer)), else {}.

    The baseline never changes, so it is scored once, in batches, not every step."""
    if cfg.reward_baseline != "reference":
        return {}
    scores = scorer.score([p.prompt for p in pairs], [p.chosen for p in pairs])
    return dict(zip(((p.prompt, p.chosen) for p in pairs), scores.tolist()))


def ppo_iteration(trainer, scorer, tokenizer, batch, baseline, cfg, step_hook=None):
    """Generate, score, step for one batch of pairs: (queries, responses, scores, rewards, trl stats).

    Generation is batched with left padding, the reward model scores the whole batch
    in one call, and nothing empties a cache or waits on the host in between.
    """
    device = trainer.accelerator.device
    questions = [p.prompt for p in batch]
    queries = [q.to(device) for q in query_tensors(tokenizer, questions, max_prompt(cfg, trainer))]
    responses, texts = respond(trainer, queries, cfg, tokenizer)
    scores = scorer.score(questions, texts)  # (B,), one batched call
    b = torch.tensor([baseline[(p.prompt, p.chosen)] for p in batch]) if baseline else torch.zeros(len(batch))
    rewards = shaped_rewards(scores, b, cfg.reward_clip)
    if step_hook is not None:
        step_hook(queries, responses, rewards)
    stats = trainer.step(queries, responses, [r.to(device) for r in rewards])
    return queries, responses, scores, rewards, stats


def train_ppo(trainer, scorer, tokenizer, train_pairs, val_pairs, cfg, seed, live, step_hook=None):
    """PPO epochs over the training prompts. Returns metrics for metrics/ppo.json.

    step_hook(queries, responses, rewards), if given, sees what each PPOTrainer.step receives.
    """
    held_out = [p.prompt for p in val_pairs]  # one sampled answer per validation row
    before = mean_score(trainer, scorer, tokenizer, held_out, cfg, seed)

    baseline = reward_baselines(scorer, train_pairs, cfg)

    per_epoch, stats, lengths = {}, {}, []
    plan = [batches(train_pairs, cfg.batch_size, seed + epoch)[: cfg.max_steps_per_epoch] for epoch in range(cfg.epochs)]
    bar = tqdm(total=sum(map(len, plan)), desc="ppo", disable=None)
    for epoch, epoch_batches in enumerate(plan):
        epoch_scores = []
        for batch in epoch_batches:
            queries, responses, scores, rewards, stats = ppo_iteration(trainer, scorer, tokenizer, batch, baseline,
                                                                       cfg, step_hook)

            epoch_scores.append(scores.mean().item())
            lengths.append(sum(len(r) for r in responses) / len(responses))
            live.log_metric("train/score", scores.mean().item())
            live.log_metric("train/reward", rewards.mean().item())
            for name, key in STEP_CURVES.items():
                live.log_metric(f"train/{name}", float(stats[key]))
            live.log_metric("train/response_length", lengths[-1])
            live.next_step()
            bar.update()
            bar.set_postfix(epoch=epoch, score=f"{epoch_scores[-1]:.2f}", kl=f"{float(stats['objective/kl']):.3f}")
        per_epoch[f"epoch_{epoch + 1}"] = sum(epoch_scores) / len(epoch_scores)
        bar.write(f"epoch {epoch}: mean reward-model score {per_epoch[f'epoch_{epoch + 1}']:.4f}")
    bar.close()
    after = mean_score(trainer, scorer, tokenizer, held_out, cfg, seed)
    return {
        "score_per_epoch": per_epoch,
        "val_score_before": before, "val_score_after": after,
        "kl": float(stats["objective/kl"]), "kl_coef": float(stats["objective/kl_coef"]),
        "entropy": float(stats["objective/entropy"]), "clipfrac": float(stats["ppo/policy/clipfrac"]),
        "response_length": sum(lengths) / len(lengths),
    }
