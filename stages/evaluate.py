"""evaluate: score one policy on the test split against the SFT policy and the preferred answers.

    python stages/evaluate.py --params params.yaml --name dpo --model models/dpo --sft models/sft \
        --data data/prepared --reward-weights models/reward_model.pth --reward-dir models/reward \
        --metrics metrics/eval/dpo.json --generations generations/dpo.jsonl --plot plots/eval/dpo.json

Reads params: seed, eval.*, and ppo.temperature/top_p/top_k/max_new_tokens for the
eval.* left null. Writes the metrics (one schema for every model), the
generations (question, reference, answer, reward) and a plot file for `dvc plots`.
"""

import json

from alignkit.data import read_splits
from alignkit.errors import run_stage, stage_args
from alignkit.evaluation import evaluate_policy
from alignkit.io import atomic_file, write_json
from alignkit.models import load_policy
from alignkit.params import load_params
from alignkit.policy import prepare_tokenizer
from alignkit.reward import RewardScorer
from alignkit.training import seed_everything

PLOTTED = ("reward_mean", "win_rate_vs_sft", "win_rate_vs_reference", "preference_accuracy", "rougeL", "bleu")


def main(argv=None):
    args = stage_args(__doc__, ("--params", "--name", "--model", "--sft", "--data", "--reward-weights", "--reward-dir", "--metrics", "--generations", "--plot"), argv)
    params = load_params(args.params)
    seed_everything(params.seed)

    (test,) = read_splits(args.data, "test")
    policy, tokenizer = load_policy(args.model, args.model)
    sft, _ = load_policy(args.sft, args.sft)
    prepare_tokenizer(tokenizer)
    scorer = RewardScorer(args.reward_weights, args.reward_dir, params.eval.batch_size)
    metrics, generations = evaluate_policy(args.name, policy, sft, tokenizer, scorer, test, params.eval,
                                           params.eval.generation(params.ppo), params.seed)

    with atomic_file(args.generations) as tmp:
        tmp.write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in generations), encoding="utf-8")
    write_json(args.plot, [{"model": args.name, "metric": k, "value": metrics[k]} for k in PLOTTED])
    write_json(args.metrics, metrics)
    print(f"evaluate {args.name}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


if __name__ == "__main__":
    run_stage(main)
