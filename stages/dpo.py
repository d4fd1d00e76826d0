"""dpo: preference tuning of the SFT policy with the objective dpo.loss_type names -- DPO and its loss family
against a frozen copy, reference-free SimPO, CPO and ORPO, or KTO on unpaired feedback.

    python stages/dpo.py --params params.yaml --data data/prepared --sft models/sft \
        --out models/dpo --metrics metrics/dpo.json --live dvclive/dpo --checkpoints checkpoints/dpo

Reads params: seed, dpo.* (dpo.data: which data sets under --data, as one). The
policy starts from --sft (an SFT adapter merged into its base); the reference, for the objectives that have one,
is the same weights, frozen (a copy in eval mode, or with dpo.lora the policy with its adapter switched off), its
log-probs computed once before training (or at every step: dpo.precompute_ref_log_probs); reference-free
objectives load none. Writes --out (save_pretrained, safetensors, tokenizer included; with dpo.lora the adapter,
on --sft; alignment.json names the objective), validation loss, preference and reward accuracy and implicit
rewards to --metrics, curves under --live, and every dpo.checkpoint_every steps a checkpoint to --checkpoints.
Runs under `accelerate launch`.
"""

import time

from alignkit.adapters import prepare
from alignkit.checkpoint import stage_checkpointer
from alignkit.data import read_sets
from alignkit.io import write_json
from alignkit.modeldir import load_policy, save_policy
from alignkit.params import load_params
from alignkit.policy import disable_dropout, prepare_tokenizer
from alignkit.preference import train_preferences
from alignkit.stage import run_stage, stage_args
from alignkit.training import make_accelerator, seed_everything


def main(argv=None):
    args = stage_args(__doc__, ("--params", "--data", "--sft", "--out", "--metrics", "--live", "--checkpoints"), argv)
    params = load_params(args.params)
    cfg = params.dpo

    accelerator = make_accelerator(cfg.precision, "dpo.precision", cfg.grad_accum_steps)
    seed_everything(params.seed)
    train, val = read_sets(args.data, cfg.data, "train", "validation", key="dpo.data", unpaired=True)
    policy, tokenizer = load_policy(args.sft, args.sft)  # an SFT adapter is merged into its base here
    prepare_tokenizer(tokenizer)
    # Dropout off everywhere, adapter included (as trl's DPOTrainer does): policy and reference agree at step 0.
    policy = disable_dropout(prepare(policy, cfg, "dpo", accelerator.device))

    checkpoint = stage_checkpointer(
        args.checkpoints, "dpo", params, accelerator, inputs=[__file__, args.data, args.sft]
    )
    start = time.perf_counter()
    metrics, policy = train_preferences(
        policy,
        lambda: load_policy(args.sft, args.sft)[0],  # the reference: loaded only if the objective has one
        tokenizer,
        train,
        val,
        cfg,
        params.seed,
        accelerator,
        args.live,
        checkpoint,
    )
    if accelerator.is_main_process:
        save_policy(policy, tokenizer, args.out, {"stage": "dpo", "objective": cfg.loss_type})
        write_json(args.metrics, metrics)
        print(
            f"dpo: val preference accuracy {_rate(metrics['val_preference_accuracy'])}, val loss "
            f"{metrics['val_loss_before']:.4f} -> {metrics['val_loss']:.4f} ({cfg.loss_type}, reference "
            f"{metrics['reference']}; {time.perf_counter() - start:.0f}s)"
        )
    checkpoint.complete()  # only now: until the outputs are written, a kill or a full disk loses nothing


def _rate(value):
    return "n/a (no validation pairs)" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    run_stage(main)
