"""reward: train the BERT-family reward model with the Bradley-Terry loss.

    python stages/reward.py --params params.yaml --data data/prepared \
        --weights models/reward_model.pth --model-dir models/reward \
        --metrics metrics/reward.json --live dvclive/reward --checkpoints checkpoints/reward

Reads params: seed, models.reward, reward.*. Writes the whole model's state dict
(encoder + score_head) to --weights, loadable with torch.load(weights_only=True);
the tokenizer, encoder config and encoding settings to --model-dir; validation
metrics to --metrics; per-step curves under --live; every reward.checkpoint_every steps
a checkpoint to --checkpoints, from which a killed run resumes. Runs under `accelerate launch`.
"""

import time

from alignkit.checkpoint import stage_checkpointer
from alignkit.conversation import as_text
from alignkit.data import read_splits
from alignkit.errors import run_stage, stage_args
from alignkit.io import atomic_dir, atomic_file, write_json
from alignkit.models import load_encoder
from alignkit.params import load_params
from alignkit.reward import RewardModel, save_reward_model, train_reward_model
from alignkit.training import make_accelerator, seed_everything


def main(argv=None):
    args = stage_args(__doc__, ("--params", "--data", "--weights", "--model-dir", "--metrics", "--live", "--checkpoints"), argv)
    params = load_params(args.params)
    cfg = params.reward

    accelerator = make_accelerator(cfg.precision, "reward.precision")
    seed_everything(params.seed)
    train, val = read_splits(args.data, "train", "validation")
    texts = [t for p in train for t in (as_text(p.prompt), p.chosen, p.rejected)]  # for a preset's tokenizer
    encoder, tokenizer = load_encoder(params.models.reward, "models.reward", texts, params.seed)

    checkpoint = stage_checkpointer(args.checkpoints, "reward", params, accelerator, inputs=[__file__, args.data])
    start = time.perf_counter()
    metrics, model = train_reward_model(RewardModel(encoder), tokenizer, train, val, cfg, params.seed,
                                        accelerator, args.live, checkpoint)
    if accelerator.is_main_process:
        with atomic_dir(args.model_dir) as tmp_dir, atomic_file(args.weights) as tmp_weights:
            save_reward_model(model, tokenizer, cfg.max_length, tmp_weights, tmp_dir)
        write_json(args.metrics, metrics)
        print(f"reward: val accuracy {metrics['val_accuracy']:.4f}, val loss {metrics['val_loss']:.4f} "
              f"({len(train)} training pairs, {time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    run_stage(main)
