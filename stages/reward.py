"""reward: train one named reward model (a BERT-family encoder) with the Bradley-Terry loss.

    python stages/reward.py --params params.yaml --name safety --data data/prepared/safety \
        --out models/reward/safety --metrics metrics/reward/safety.json --live dvclive/reward/safety \
        --checkpoints checkpoints/reward/safety

Reads params: seed, models.reward, the shared reward.* keys and reward_models.<name> (its data set,
its encoder, the keys it sets itself). Writes to --out the whole model's state dict (encoder +
score_head) as reward_model.pth, loadable with torch.load(weights_only=True), and the tokenizer,
encoder config, encoding settings and score statistics (for whitening); validation metrics to
--metrics; per-step curves under --live; every checkpoint_every steps a checkpoint to
--checkpoints, from which a killed run resumes. Runs under `accelerate launch`.
"""

import time

from alignkit.checkpoint import stage_checkpointer
from alignkit.conversation import as_text
from alignkit.data import read_splits
from alignkit.errors import ParamsError
from alignkit.io import atomic_dir, write_json
from alignkit.models import load_encoder
from alignkit.params import load_params
from alignkit.reward import WEIGHTS_NAME, RewardModel, save_reward_model, train_reward_model
from alignkit.stage import run_stage, stage_args
from alignkit.training import make_accelerator, seed_everything


def main(argv=None):
    args = stage_args(__doc__, ("--params", "--name", "--data", "--out", "--metrics", "--live", "--checkpoints"), argv)
    params = load_params(args.params)
    if args.name not in params.reward_models:
        raise ParamsError(
            f"{args.params}: reward_models: no reward model {args.name!r} "
            f"(reward_models: {', '.join(params.reward_models)})"
        )
    entry, cfg = params.reward_models[args.name], params.reward_model(args.name)

    accelerator = make_accelerator(cfg.precision, "reward.precision")
    seed_everything(params.seed)
    train, val = read_splits(args.data, "train", "validation")
    texts = [t for p in train for t in (as_text(p.prompt), p.chosen, p.rejected)]  # for a preset's tokenizer
    if entry.encoder:  # its own encoder, else the shared models.reward
        encoder, tokenizer = load_encoder(entry.encoder, f"reward_models.{args.name}.encoder", texts, params.seed)
    else:
        encoder, tokenizer = load_encoder(params.models.reward, "models.reward", texts, params.seed)

    checkpoint = stage_checkpointer(
        args.checkpoints,
        f"reward@{args.name}",
        params,
        accelerator,
        inputs=[__file__, args.data],
        cfg=cfg,
        extra=entry.model_dump(),
    )
    start = time.perf_counter()
    metrics, model = train_reward_model(
        RewardModel(encoder), tokenizer, train, val, cfg, params.seed, accelerator, args.live, checkpoint
    )
    if accelerator.is_main_process:
        stats = {k: metrics[k] for k in ("score_mean", "score_std")}
        with atomic_dir(args.out) as tmp:
            save_reward_model(model, tokenizer, cfg.max_length, tmp / WEIGHTS_NAME, tmp, stats)
        write_json(args.metrics, metrics)
        print(
            f"reward@{args.name}: val accuracy {metrics['val_accuracy']:.4f}, val loss {metrics['val_loss']:.4f} "
            f"({len(train)} training pairs, {time.perf_counter() - start:.0f}s)"
        )
    checkpoint.complete()  # only now: until the outputs are written, a kill or a full disk loses nothing


if __name__ == "__main__":
    run_stage(main)
