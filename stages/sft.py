"""sft: supervised fine-tuning of the policy on prompt + preferred answer.

    python stages/sft.py --params params.yaml --data data/prepared \
        --out models/sft --metrics metrics/sft.json --live dvclive/sft --checkpoints checkpoints/sft

Reads params: seed, models.policy, sft.* (sft.data: which data sets under --data,
as one). The loss covers answer tokens only (prompt and padding masked). For a preset, the tokenizer is
trained here on the training text and saved with the model. sft.epochs: 0 saves the base model
unchanged. Writes --out (save_pretrained, safetensors, tokenizer included; with
sft.lora the adapter, and a preset's base under base/), the
validation loss and perplexity on preferred answers to --metrics, curves under
--live, and every sft.checkpoint_every steps a checkpoint to --checkpoints.
"""

import time

from alignkit.adapters import prepare
from alignkit.checkpoint import stage_checkpointer
from alignkit.conversation import plain_answer, plain_prompt
from alignkit.data import read_sets
from alignkit.io import write_json
from alignkit.modeldir import load_policy, save_policy
from alignkit.params import load_params
from alignkit.policy import prepare_tokenizer
from alignkit.sft import train_sft
from alignkit.stage import run_stage, stage_args
from alignkit.training import make_accelerator, seed_everything


def main(argv=None):
    args = stage_args(__doc__, ("--params", "--data", "--out", "--metrics", "--live", "--checkpoints"), argv)
    params = load_params(args.params)
    cfg = params.sft

    accelerator = make_accelerator(cfg.precision, "sft.precision")
    seed_everything(params.seed)
    train, val = read_sets(args.data, params.sft.data, "train", "validation", key="sft.data")
    # A preset's tokenizer learns its vocabulary from the training text (a chat preset adds its tags).
    texts = [t for p in train for t in (plain_prompt(p.prompt), plain_answer(p.chosen), plain_answer(p.rejected))]
    model, tokenizer = load_policy(params.models.policy, "models.policy", texts, params.seed)
    prepare_tokenizer(tokenizer)
    model = prepare(model, cfg, "sft", accelerator.device)  # whole model, or LoRA adapter (4-bit base with nf4)

    checkpoint = stage_checkpointer(args.checkpoints, "sft", params, accelerator, inputs=[__file__, args.data])
    start = time.perf_counter()
    metrics, model = train_sft(model, tokenizer, train, val, cfg, params.seed, accelerator, args.live, checkpoint)
    if accelerator.is_main_process:
        save_policy(model, tokenizer, args.out, {"stage": "sft", "objective": "sft"})
        write_json(args.metrics, metrics)
        print(
            f"sft: val loss {metrics['val_loss_before']:.4f} -> {metrics['val_loss']:.4f} "
            f"(perplexity {metrics['val_perplexity']:.2f}; {time.perf_counter() - start:.0f}s)"
        )
    checkpoint.complete()  # only now: until the outputs are written, a kill or a full disk loses nothing


if __name__ == "__main__":
    run_stage(main)
