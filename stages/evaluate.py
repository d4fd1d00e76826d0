"""evaluate: score one policy on the test split against the SFT policy and the preferred answers.

    python stages/evaluate.py --params params.yaml --name dpo --model models/merged/dpo --sft models/merged/sft \
        --data data/prepared --rewards models/reward --judges models/judge \
        --metrics metrics/eval/dpo.json --generations generations/dpo.jsonl --plot plots/eval/dpo.json

Reads params: seed, eval.* (eval.data: the data sets under --data whose test splits it reads),
ppo.temperature/top_p/top_k/max_new_tokens for the eval.* left null, reward_models (each is
--rewards/<name>), judges (each is --judges/<name>), ppo.reward (how scores combine, the safety model and
threshold) and rules (the verifiable rules: each one's pass rate on the prompts it applies to). Writes the
metrics (one schema for every model, each mean with its interval), the generations
(question, set, unsafe mark, reference, answer, the proxy and judge scores, violation, KL) and a plot file for
`dvc plots`. Every model runs on this process's GPU where there is one.
"""

import json
from pathlib import Path

from alignkit.data import read_sets
from alignkit.ensemble import RewardModels
from alignkit.evaluation import evaluate_policy
from alignkit.io import atomic_file, write_json
from alignkit.modeldir import load_policy, provenance
from alignkit.params import load_params
from alignkit.policy import prepare_tokenizer
from alignkit.stage import run_stage, stage_args
from alignkit.training import default_device, seed_everything
from alignkit.verifiable import Rules

PLOTTED = ("reward_mean", "judge_mean", "win_rate_vs_reference", "preference_accuracy", "rougeL", "bleu")


def main(argv=None):
    args = stage_args(
        __doc__,
        (
            "--params",
            "--name",
            "--model",
            "--sft",
            "--data",
            "--rewards",
            "--judges",
            "--metrics",
            "--generations",
            "--plot",
        ),
        argv,
    )
    params = load_params(args.params)
    seed_everything(params.seed)

    (test,) = read_sets(args.data, params.eval.data, "test", key="eval.data")
    # Every model on this process's GPU where there is one (generating and scoring are this stage's time).
    device = default_device()
    policy, tokenizer = load_policy(args.model, args.model)
    policy.to(device)
    same = Path(args.model).resolve() == Path(args.sft).resolve()  # evaluate@sft: SFT against itself
    sft = policy if same else load_policy(args.sft, args.sft)[0].to(device)
    prepare_tokenizer(tokenizer)
    batch = params.eval.batch_size
    scorer = RewardModels(args.rewards, params.reward_models, params.ppo.reward, batch, device)
    judges = RewardModels(args.judges, params.judges, params.ppo.reward, batch, device) if params.judges else None
    metrics, generations = evaluate_policy(
        args.name,
        policy,
        sft,
        tokenizer,
        scorer,
        judges,
        test,
        params.eval,
        params.eval.generation(params.ppo),
        params.seed,
        Rules(params.rules) if params.rules else None,
    )
    # How the model was tuned (alignment.json, carried by merge): dpo's objective, online's algorithm.
    metrics = {"objective": provenance(args.model).get("objective", args.name), **metrics}

    with atomic_file(args.generations) as tmp:
        tmp.write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in generations), encoding="utf-8")
    plotted = {
        **{k: metrics[k] for k in PLOTTED if k in metrics},
        **{f"reward_{m}": s["mean"] for m, s in metrics["reward_models"].items()},
        **{k: metrics[k] for k in ("safety_violation_rate",) if k in metrics},
        **{f"rule_{r}": m["pass_rate"] for r, m in metrics.get("rules", {}).items() if m["pass_rate"] is not None},
    }
    write_json(args.plot, [{"model": args.name, "metric": k, "value": v} for k, v in plotted.items()])
    write_json(args.metrics, metrics)
    shown = [k for k, v in metrics.items() if isinstance(v, (int, float)) and not k.startswith("n")]
    print(
        f"evaluate {args.name} (n={metrics['n']}): "
        + ", ".join(
            f"{k} {metrics[k]:.4f}"
            + (f" [{metrics[k + '_ci'][0]:.3f}, {metrics[k + '_ci'][1]:.3f}]" if metrics.get(k + "_ci") else "")
            for k in shown
        )
    )


if __name__ == "__main__":
    run_stage(main)
