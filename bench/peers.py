"""The tools a user would otherwise pick, driven on the same models and batches as ours.

- trl 0.11.4's RewardTrainer and DPOTrainer, stepped exactly as transformers'
  Trainer loop steps them (training_step, clip, optimizer and scheduler step,
  zero_grad), on batches built from our tokenized pairs, so both sides see the
  same token ids; data loading is outside the timed step on both sides.
- The PPO loop of the reference notebooks: one query at a time through
  PPOTrainer.generate, each reward scored alone on the CPU, caches emptied every step.
- Generation one prompt at a time.
"""

import copy
import gc
import warnings

import torch
from torch import nn

from alignkit.conversation import as_text, plain_prompt
from alignkit.reward import encode_pairs


class TrainerStepper:
    """One optimizer step of a transformers Trainer, as its inner training loop runs it."""

    def __init__(self, trainer, total_steps):
        self.trainer = trainer
        trainer.create_optimizer_and_scheduler(num_training_steps=total_steps)
        # What Trainer._inner_training_loop does before its first step.
        self.model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
        trainer.model_wrapped = self.model

    def __call__(self, batch):
        trainer = self.trainer
        loss = trainer.training_step(self.model, batch)
        trainer.accelerator.clip_grad_norm_(self.model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        self.model.zero_grad()
        return loss


# ---------------------------------------------------------------- reward model


class SequenceClassifier(nn.Module):
    """Our RewardModel behind the interface RewardTrainer calls: model(input_ids, attention_mask)["logits"].

    RewardTrainer passes no token_type_ids, so they are rebuilt from the first [SEP]
    (0 up to and including it, 1 after), making the peer compute what ours computes.
    """

    def __init__(self, reward_model, sep_token_id):
        super().__init__()
        self.reward_model, self.sep_token_id = reward_model, sep_token_id

    def forward(self, input_ids, attention_mask, return_dict=True):
        sep = (input_ids == self.sep_token_id).long()
        token_type_ids = ((sep.cumsum(-1) - sep).clamp(max=1)) * attention_mask
        return {"logits": self.reward_model(input_ids, attention_mask, token_type_ids).unsqueeze(-1)}


def full_reward_model(model):
    """A copy of our RewardModel whose encoder runs as transformers wrote it (the last layer on every position)."""
    full = copy.deepcopy(model)
    if full.cls_only:
        del full.encoder.encoder.layer[-1].forward  # the instance's [CLS]-only forward: back to the class's own
        full.cls_only = False
    return full


def reward_trainer(reward_model, tokenizer, batch_size, cfg, precision, out_dir):
    """trl's RewardTrainer on a copy of reward_model, with the reward stage's optimizer settings."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=batch_size,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        warmup_ratio=cfg.warmup_ratio,
        max_length=cfg.max_length,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        report_to=[],
        remove_unused_columns=False,
        seed=0,
        use_cpu=not torch.cuda.is_available(),
    )
    dummy = Dataset.from_dict(
        {
            k: [[0]]
            for k in ("input_ids_chosen", "attention_mask_chosen", "input_ids_rejected", "attention_mask_rejected")
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RewardTrainer(
            model=SequenceClassifier(reward_model, tokenizer.sep_token_id),
            args=args,
            tokenizer=tokenizer,
            train_dataset=dummy,
        )


def reward_batch(trainer, pairs):
    """RewardTrainer's own collator over our encoded pairs [(chosen, rejected)]: each side padded separately."""
    return trainer.data_collator(
        [
            {
                "input_ids_chosen": c["input_ids"],
                "attention_mask_chosen": c["attention_mask"],
                "input_ids_rejected": r["input_ids"],
                "attention_mask_rejected": r["attention_mask"],
            }
            for c, r in pairs
        ]
    )


# ---------------------------------------------------------------- DPO


def plain_policy(path, dropout=False):
    """A saved causal LM as transformers loads it (its own modules: GPT-2's gelu_new as five elementwise ops),
    as a user of trl or a notebook loads it; dropout off unless dropout=True (as ours is in each comparison)."""
    from transformers import AutoModelForCausalLM

    from alignkit.policy import disable_dropout

    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    return model if dropout else disable_dropout(model)


def dpo_trainer(policy, reference, tokenizer, batch_size, cfg, precision, out_dir, precompute):
    """trl's DPOTrainer (sigmoid loss, the dpo stage's beta and optimizer settings)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=batch_size,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        warmup_ratio=cfg.warmup_ratio,
        beta=cfg.beta,
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_length // 2,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        report_to=[],
        seed=0,
        precompute_ref_log_probs=precompute,
        gradient_checkpointing=cfg.gradient_checkpointing,
        use_cpu=not torch.cuda.is_available(),
    )
    dummy = Dataset.from_dict({"prompt": ["Question: ?\nAnswer:"], "chosen": [" yes"], "rejected": [" no"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPOTrainer(model=policy, ref_model=reference, args=args, tokenizer=tokenizer, train_dataset=dummy)


def dpo_batch(examples, pad_id, device):
    """DPOTrainer's batch format from our [(chosen (ids, prompt_len), rejected (ids, prompt_len))]:
    labels are the ids with the prompt and padding set to -100."""
    batch = {}
    for side, part in (("chosen", [c for c, _ in examples]), ("rejected", [r for _, r in examples])):
        longest = max(len(ids) for ids, _ in part)
        ids = torch.full((len(part), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(part), longest), dtype=torch.long)
        labels = torch.full((len(part), longest), -100, dtype=torch.long)
        for i, (seq, prompt_len) in enumerate(part):
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            labels[i, prompt_len : len(seq)] = torch.tensor(seq[prompt_len:])
        batch.update(
            {
                f"{side}_input_ids": ids.to(device),
                f"{side}_attention_mask": mask.to(device),
                f"{side}_labels": labels.to(device),
            }
        )
    return batch


# ---------------------------------------------------------------- PPO


def notebook_ppo_iteration(trainer, reward_model, reward_tokenizer, max_length, tokenizer, batch, cfg, queries):
    """One PPO iteration as the reference notebooks ran it: each query generated alone, each
    reward scored alone on the CPU, then PPOTrainer.step, then caches emptied."""
    from alignkit.ppo import generation_kwargs, shaped_rewards

    gen = generation_kwargs(cfg, tokenizer)
    responses = [trainer.generate(q, return_prompt=False, **gen).squeeze(0) for q in queries]
    rewards = []
    for pair, response in zip(batch, responses):
        text = tokenizer.decode(response, skip_special_tokens=True).strip()
        with torch.no_grad():
            score = _score_one(reward_model, reward_tokenizer, as_text(pair.prompt), text, max_length)
            baseline = _score_one(reward_model, reward_tokenizer, as_text(pair.prompt), pair.chosen, max_length)
        rewards.append(shaped_rewards(score, baseline, cfg.reward_clip).to(trainer.accelerator.device))
    stats = trainer.step(queries, responses, rewards)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return stats


def _score_one(reward_model, tokenizer, question, answer, max_length):
    feature = encode_pairs(tokenizer, [question], [answer], max_length)[0]
    inputs = {k: torch.tensor([v]) for k, v in feature.items()}
    return reward_model(**inputs)[0]


def score_one_at_a_time(reward_model, tokenizer, questions, answers, max_length):
    with torch.no_grad():
        return torch.stack(
            [_score_one(reward_model, tokenizer, as_text(q), a, max_length) for q, a in zip(questions, answers)]
        )


# ---------------------------------------------------------------- generation


@torch.no_grad()
def generate_one_at_a_time(model, tokenizer, questions, gen, max_prompt):
    """model.generate per prompt: no padding, batch size 1. Returns the answer texts."""
    model.eval()
    texts = []
    for q in questions:
        ids = tokenizer(plain_prompt(q), return_tensors="pt", add_special_tokens=False)["input_ids"][:, -max_prompt:]
        out = model.generate(
            ids.to(model.device),
            attention_mask=torch.ones_like(ids).to(model.device),
            pad_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **{"do_sample": True, **gen},
        )
        texts.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return texts


# ---------------------------------------------------------------- trl 0.11.4's RLOOTrainer, transcribed

# The lines of RLOOTrainer.train that these two functions transcribe, as trl 0.11.4 ships them (compared as text
# with trl's source by trl_rloo_source_matches, never executed).
TRL_RLOO_ADVANTAGES = (
    "kl = logprobs - ref_logprobs",
    "non_score_reward = (-args.kl_coef * kl).sum(1)",
    "rlhf_reward = scores + non_score_reward",
    "rlhf_reward = rlhf_reward.reshape(args.rloo_k, -1)",
    "baseline = (rlhf_reward.sum(0) - rlhf_reward) / (args.rloo_k - 1)",
    "advantages = rlhf_reward - baseline",
    "advantages = advantages.flatten()",
)
TRL_RLOO_PG_LOSS = (
    "new_logprobs = new_logprobs.sum(1)",
    "mb_logprobs = mb_logprobs.sum(1)",
    "logprobs_diff = new_logprobs - mb_logprobs",
    "ratio = torch.exp(logprobs_diff)",
    "pg_losses = -mb_advantage * ratio",
    "pg_losses2 = -mb_advantage * torch.clamp(ratio, 1.0 - args.cliprange, 1.0 + args.cliprange)",
    "pg_loss_max = torch.max(pg_losses, pg_losses2)",
    "pg_loss = pg_loss_max.mean()",
)


def trl_rloo_source_matches():
    """Whether trl's installed RLOOTrainer.train still holds the transcribed lines, each block in order (comments and
    blank lines between them aside)."""
    import inspect

    from trl import RLOOTrainer

    code = [line.strip() for line in inspect.getsource(RLOOTrainer.train).splitlines()]
    code = [line for line in code if line and not line.startswith("#")]

    def holds(block):
        return any(code[i : i + len(block)] == list(block) for i in range(len(code)))

    return holds(TRL_RLOO_ADVANTAGES) and holds(TRL_RLOO_PG_LOSS)


def trl_rloo_advantages(logprobs, ref_logprobs, scores, kl_coef, rloo_k):
    """TRL_RLOO_ADVANTAGES: rows in trl's order (answer j of prompt p at row j * B + p); (N, T) log-probs, (N,)
    scores -> (N,) advantages."""
    kl = logprobs - ref_logprobs
    non_score_reward = (-kl_coef * kl).sum(1)
    rlhf_reward = scores + non_score_reward
    rlhf_reward = rlhf_reward.reshape(rloo_k, -1)
    baseline = (rlhf_reward.sum(0) - rlhf_reward) / (rloo_k - 1)
    advantages = rlhf_reward - baseline
    return advantages.flatten()


def trl_rloo_pg_loss(new_logprobs, mb_logprobs, mb_advantage, cliprange):
    """TRL_RLOO_PG_LOSS: a micro-batch's policy loss from (n, T) per-token log-probs (padding filled with trl's
    INVALID_LOGPROB) and (n,) advantages, with the sequence-level ratio trl takes."""
    new_logprobs = new_logprobs.sum(1)
    mb_logprobs = mb_logprobs.sum(1)
    logprobs_diff = new_logprobs - mb_logprobs
    ratio = torch.exp(logprobs_diff)
    pg_losses = -mb_advantage * ratio
    pg_losses2 = -mb_advantage * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss_max = torch.max(pg_losses, pg_losses2)
    return pg_loss_max.mean()
