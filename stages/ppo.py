"""ppo: RLHF of the SFT policy with trl 0.11's PPOTrainer, scored by the named reward models.

    python stages/ppo.py --params params.yaml --data data/prepared --sft models/sft --rewards models/reward \
        --out models/ppo --metrics metrics/ppo.json --live dvclive/ppo --checkpoints checkpoints/ppo

Reads params: seed, ppo.* (ppo.data: the data sets under --data whose prompts it samples; ppo.reward:
how the scores combine), reward_models (their names: each is --rewards/<name>). The policy (with a value
head) and a frozen reference start from --sft (an SFT adapter merged into its base); with ppo.lora the policy
trains an adapter and the reference is the policy with it switched off (trl's
peft support). Responses are decoded and scored as text by every reward model.
Writes --out (save_pretrained of the policy with its value head, safetensors,
tokenizer included; with ppo.lora the adapter, on --sft), --metrics, per-step curves under --live, and every
ppo.checkpoint_every steps a checkpoint to --checkpoints (a killed run resumes from it).
"""

import time

from alignkit.adapters import prepare, separate_reference
from alignkit.checkpoint import stage_checkpointer
from alignkit.data import read_sets
from alignkit.ensemble import RewardModels
from alignkit.io import write_json
from alignkit.modeldir import load_policy, save_policy
from alignkit.params import load_params
from alignkit.policy import prepare_tokenizer
from alignkit.ppo import make_trainer, plan_epochs, reward_baselines, train_ppo, value_head_model
from alignkit.stage import run_stage, stage_args
from alignkit.training import default_device, seed_everything


def main(argv=None, step_hook=None):
    args = stage_args(
        __doc__, ("--params", "--data", "--sft", "--rewards", "--out", "--metrics", "--live", "--checkpoints"), argv
    )
    params = load_params(args.params)
    cfg = params.ppo
    seed_everything(params.seed)
    train, val = read_sets(args.data, cfg.data, "train", "validation", key="ppo.data")
    base, tokenizer = load_policy(args.sft, args.sft)  # an SFT adapter is merged into its base here
    prepare_tokenizer(tokenizer)
    policy = value_head_model(prepare(base, cfg, "ppo", default_device()))
    reference = separate_reference(policy, lambda: value_head_model(load_policy(args.sft, args.sft)[0], frozen=True))
    plan = plan_epochs(train, cfg, params.seed)  # the batches of prompts of every PPO step
    steps = sum(map(len, plan))
    trainer = make_trainer(cfg, params.seed, policy, reference, tokenizer, steps)
    device = "cpu" if cfg.reward_device == "cpu" else trainer.accelerator.device
    scorer = RewardModels(args.rewards, params.reward_models, cfg.reward, cfg.reward_batch_size, device)
    checkpoint = stage_checkpointer(
        args.checkpoints,
        "ppo",
        params,
        trainer.accelerator,
        inputs=[__file__, args.data, args.sft, args.rewards],
        extra=scorer.names,
    )

    start = time.perf_counter()
    baseline = reward_baselines(scorer, train, cfg)
    metrics = train_ppo(
        trainer, scorer, tokenizer, plan, baseline, val, cfg, params.seed, args.live, checkpoint, step_hook
    )
    if trainer.accelerator.is_main_process:
        save_policy(
            trainer.accelerator.unwrap_model(trainer.model), tokenizer, args.out, {"stage": "ppo", "objective": "ppo"}
        )
        write_json(args.metrics, metrics)
        each = ", ".join(
            f"{name} {metrics['val_model_scores_before'][name]:.3f} -> {after:.3f}"
            for name, after in metrics["val_model_scores_after"].items()
        )
        print(
            f"ppo: held-out combined reward {metrics['val_score_before']:.4f} -> {metrics['val_score_after']:.4f} "
            f"({each}), KL {metrics['kl']:.4f} ({steps} steps, {time.perf_counter() - start:.0f}s)"
        )
    checkpoint.complete()  # only now: until the outputs are written, a kill or a full disk loses nothing


if __name__ == "__main__":
    run_stage(main)
