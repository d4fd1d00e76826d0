"""merge: one tuned model as a plain model, for evaluation and shipping.

    python stages/merge.py --model models/dpo --out models/merged/dpo

Reads no params. A LoRA adapter directory (adapter_config.json) is loaded onto its
base -- a DPO or PPO adapter's base is models/sft, itself an SFT adapter merged
into its own base first -- and each adapter is merged in turn (peft's
merge_and_unload), as the book example does. A whole model (trained without LoRA)
goes through as the causal LM alone: PPO's value head is left behind; alignment.json (the objective) goes along.
Writes --out
with save_pretrained (safetensors; tokenizer and chat template included), which
`evaluate` reads and `dvc push` ships.
"""

from alignkit.modeldir import load_policy, provenance, save_policy
from alignkit.policy import prepare_tokenizer
from alignkit.stage import run_stage, stage_args


def main(argv=None):
    args = stage_args(__doc__, ("--model", "--out"), argv)
    model, tokenizer = load_policy(args.model, args.model)
    save_policy(model, prepare_tokenizer(tokenizer), args.out, provenance(args.model))  # alignment.json goes along
    print(
        f"merge: {args.model} -> {args.out} ({type(model).__name__}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters)"
    )


if __name__ == "__main__":
    run_stage(main)
