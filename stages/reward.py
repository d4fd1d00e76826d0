"""reward: train one named reward model (a BERT-family encoder) with the Bradley-Terry loss.

    python stages/reward.py --params params.yaml --name safety --data data/prepared/safety \
        --out models/reward/safety --metrics metrics/reward/safety.json --live dvclive/reward/safety \
        --checkpoints checkpoints/reward/safety

Reads params: seed, models.reward, the shared reward.* keys and <section>.<name> (its data set, its
encoder, the keys it sets itself). --section reward_models (the default): a reward model the policies
train on (stage reward@<name>), trained on the train split, its epoch kept on validation. --section
judges: a judge only evaluation reads (judge@<name>), trained on the judge split, which nothing else
trains on, its epoch kept on the test pairs. Writes to --out the whole model's state dict (encoder +
score_head) as reward_model.pth, loadable with torch.load(weights_only=True), and the tokenizer,
encoder config, encoding settings and score statistics (for whitening); held-out metrics to
--metrics; per-step curves under --live; every checkpoint_every steps a checkpoint to
--checkpoints, from which a killed run resumes. Runs under `accelerate launch`.
"""

import time

from alignkit.checkpoint import stage_checkpointer
from alignkit.conversation import as_text
from alignkit.data import pairs_only, read_splits
from alignkit.errors import ParamsError
from alignkit.io import atomic_dir, write_json
from alignkit.models import load_encoder
from alignkit.params import load_params
from alignkit.reward import WEIGHTS_NAME, RewardModel, save_reward_model, train_reward_model
from alignkit.stage import run_stage, stage_args
from alignkit.training import make_accelerator, seed_everything

# Each kind's (training split, split its epoch is kept on) and its stage's name.
SPLITS = {"reward_models": ("train", "validation"), "judges": ("judge", "test")}
STAGE = {"reward_models": "reward", "judges": "judge"}
HELD_OUT = {"reward_models": "val", "judges": "test"}  # what its printed accuracy is measured on


def main(argv=None):
    flags = ("--params", "--name", "--data", "--out", "--metrics", "--live", "--checkpoints")
    args = stage_args(__doc__, flags, argv, optional={"--section": "reward_models"})
    params = load_params(args.params)
    if args.section not in SPLITS:
        raise ParamsError(f"--section: expected one of {', '.join(SPLITS)}, got {args.section!r}")
    named = getattr(params, args.section)
    if args.name not in named:
        raise ParamsError(
            f"{args.params}: {args.section}: no reward model {args.name!r} ({args.section}: {', '.join(named)})"
        )
    entry, cfg = named[args.name], params.reward_model(args.name, args.section)
    stage = f"{STAGE[args.section]}@{args.name}"

    accelerator = make_accelerator(cfg.precision, "reward.precision")
    seed_everything(params.seed)
    train, val = pairs_only(
        read_splits(args.data, *SPLITS[args.section]), f"{args.section}.{args.name}.data", entry.data
    )
    texts = [t for p in train for t in (as_text(p.prompt), p.chosen, p.rejected)]  # for a preset's tokenizer
    if entry.encoder:  # its own encoder, else the shared models.reward
        encoder, tokenizer = load_encoder(entry.encoder, f"{args.section}.{args.name}.encoder", texts, params.seed)
    else:
        encoder, tokenizer = load_encoder(params.models.reward, "models.reward", texts, params.seed)

    checkpoint = stage_checkpointer(
        args.checkpoints,
        stage,
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
            f"{stage}: {HELD_OUT[args.section]} accuracy {metrics['val_accuracy']:.4f}, {HELD_OUT[args.section]} loss "
            f"{metrics['val_loss']:.4f} ({len(train)} training pairs, {time.perf_counter() - start:.0f}s)"
        )
    checkpoint.complete()  # only now: until the outputs are written, a kill or a full disk loses nothing


if __name__ == "__main__":
    run_stage(main)
