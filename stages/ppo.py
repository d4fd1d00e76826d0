"""ppo: RLHF of the SFT policy with trl 0.11's PPOTrainer, scored by the BERT reward model.

    python stages/ppo.py --params params.yaml --data data/prepared --sft models/sft \
        --reward-weights models/reward_model.pth --reward-dir models/reward \
        --out models/ppo --metrics metrics/ppo.json --live dvclive/ppo --checkpoints checkpoints/ppo

Reads params: seed, ppo.*. The policy (with a value head) and a frozen reference
start from --sft (an SFT adapter merged into its base); with ppo.lora the policy
trains an adapter and the reference is the policy with it switched off (trl's
peft support). Responses are decoded and scored as text by the reward model.
Writes --out (save_pretrained of the policy with its value head, safetensors,
tokenizer included; with ppo.lora the adapter, on --sft), --metrics, per-step curves under --live, and every
ppo.checkpoint_every steps a checkpoint to --checkpoints (a killed run resumes from it).
"""

import time

from alignkit.adapters import default_device, prepare, separate_reference
from alignkit.checkpoint import stage_checkpointer
from alignkit.models import load_policy
from alignkit.data import read_splits
from alignkit.errors import run_stage, stage_args
from alignkit.io import write_json
from alignkit.params import load_params
from alignkit.policy import prepare_tokenizer, save_policy
from alignkit.ppo import batches, make_trainer, train_ppo, value_head_model
from alignkit.reward import RewardScorer
from alignkit.training import seed_everything


def main(argv=None, step_hook=None):
    args = stage_args(__doc__, ("--params", "--data", "--sft", "--reward-weights", "--reward-dir", "--out", "--metrics", "--live", "--checkpoints"), argv)
    params = load_params(args.params)
    cfg = params.ppo
    seed_everything(params.seed)
    train, val = read_splits(args.data, "train", "validation")
    base, tokenizer = load_policy(args.sft, args.sft)  # an SFT adapter is merged into its base here
    prepare_tokenizer(tokenizer)
    policy = value_head_model(prepare(base, cfg, "ppo", default_device()))
    reference = separate_reference(policy, lambda: value_head_model(load_policy(args.sft, args.sft)[0], frozen=True))
    steps = cfg.epochs * len(batches(train, cfg.batch_size, 0)[: cfg.max_steps_per_epoch])
    trainer = make_trainer(cfg, params.seed, policy, reference, tokenizer, steps)
    device = "cpu" if cfg.reward_device == "cpu" else trainer.accelerator.device
    scorer = RewardScorer(args.reward_weights, args.reward_dir, cfg.reward_batch_size, device)
    checkpoint = stage_checkpointer(args.checkpoints, "ppo", params, trainer.accelerator,
                                    inputs=[__file__, args.data, args.sft, args.reward_weights, args.reward_dir])

    start = time.perf_counter()
    metrics = train_ppo(trainer, scorer, tokenizer, train, val, cfg, params.seed, args.live, checkpoint, step_hook)
    if trainer.accelerator.is_main_process:
        save_policy(trainer.accelerator.unwrap_model(trainer.model), tokenizer, args.out)
        write_json(args.metrics, metrics)
        print(f"ppo: held-out reward-model score {metrics['val_score_before']:.4f} -> {metrics['val_score_after']:.4f}, "
              f"KL {metrics['kl']:.4f} ({steps} steps, {time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    run_stage(main)
