"""online: value-free online RL of the SFT policy (GRPO or RLOO) on learned and verifiable rewards.

    python stages/online.py --params params.yaml --data data/prepared --sft models/sft --rewards models/reward \
        --out models/online --metrics metrics/online.json --live dvclive/online --checkpoints checkpoints/online

Reads params: seed, online.* (online.data: the data sets under --data whose prompts it samples; online.reward: the
weight of the reward models' score and of each rule), rules (the verifiable rules), reward_models (each is
--rewards/<name>) and ppo.reward (how their scores combine, as for PPO). The policy starts from --sft (an SFT
adapter merged into its base); with online.lora it trains an adapter and the reference is the policy with it
switched off; with online.beta 0 there is no reference. Writes --out (save_pretrained, tokenizer included; with
online.lora the adapter, on --sft), --metrics, per-step curves under --live, and every online.checkpoint_every
steps a checkpoint to --checkpoints (a killed run resumes from it). Runs under `accelerate launch`.
"""

import time

from alignkit.adapters import live_reference, prepare
from alignkit.batching import step_plan
from alignkit.checkpoint import stage_checkpointer
from alignkit.data import read_sets
from alignkit.ensemble import RewardModels
from alignkit.io import write_json
from alignkit.modeldir import load_policy, save_policy
from alignkit.online import Rewards, build, train_online
from alignkit.params import load_params
from alignkit.policy import disable_dropout, prepare_tokenizer
from alignkit.stage import run_stage, stage_args
from alignkit.training import make_accelerator, seed_everything
from alignkit.verifiable import Rules


def main(argv=None, step_hook=None):
    args = stage_args(
        __doc__, ("--params", "--data", "--sft", "--rewards", "--out", "--metrics", "--live", "--checkpoints"), argv
    )
    params = load_params(args.params)
    cfg = params.online
    accelerator = make_accelerator(cfg.precision, "online.precision")
    seed_everything(params.seed)
    train, val = read_sets(args.data, cfg.data, "train", "validation", key="online.data")
    plan = step_plan(
        train, cfg.prompts_per_step, cfg.epochs, cfg.max_steps_per_epoch, params.seed, "online.prompts_per_step"
    )
    policy, tokenizer = load_policy(args.sft, args.sft)  # an SFT adapter is merged into its base here
    prepare_tokenizer(tokenizer)
    policy = disable_dropout(prepare(policy, cfg, "online", accelerator.device))
    load_copy = lambda: load_policy(args.sft, args.sft)[0]  # noqa: E731
    reference = live_reference(policy, load_copy, accelerator.device) if cfg.beta else None
    device = "cpu" if cfg.reward_device == "cpu" else accelerator.device
    scorer = (
        RewardModels(args.rewards, params.reward_models, params.ppo.reward, cfg.reward_batch_size, device)
        if cfg.reward.reward_models
        else None
    )
    rewards = Rewards(scorer, Rules(params.rules), cfg.reward)
    steps = sum(map(len, plan))
    trainer = build(policy, tokenizer, reference, rewards, cfg, params.seed, accelerator, steps)
    checkpoint = stage_checkpointer(
        args.checkpoints,
        "online",
        params,
        accelerator,
        inputs=[__file__, args.data, args.sft, args.rewards],
        extra=[
            list(params.reward_models),
            params.ppo.reward.model_dump(),
            {name: rule.model_dump() for name, rule in params.rules.items()},
        ],
    )

    start = time.perf_counter()
    metrics = train_online(trainer, plan, val, cfg, args.live, checkpoint, step_hook)
    if accelerator.is_main_process:
        save_policy(
            accelerator.unwrap_model(trainer.model),
            tokenizer,
            args.out,
            {"stage": "online", "objective": cfg.algorithm},
        )
        write_json(args.metrics, metrics)
        rules = ", ".join(
            f"{name} {metrics['val_before'][f'rule_{name}']:.3f} -> {metrics['val_after'][f'rule_{name}']:.3f}"
            for name in params.rules
            if metrics["val_before"].get(f"rule_{name}") is not None
        )
        print(
            f"online ({cfg.algorithm}): held-out reward {metrics['val_reward_before']:.4f} -> "
            f"{metrics['val_reward_after']:.4f}"
            + (f" (rules passed: {rules})" if rules else "")
            + f", {steps} steps, {metrics['answers_generated']} answers, {time.perf_counter() - start:.0f}s"
        )
    checkpoint.complete()  # only now: until the outputs are written, a kill or a full disk loses nothing


if __name__ == "__main__":
    run_stage(main)
