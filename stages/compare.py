"""compare: every evaluated model against SFT and against each other, and the verdict of which one to ship.

    python stages/compare.py --params params.yaml --evals metrics/eval --generations generations \
        --out metrics/compare.json

Reads params: seed, eval.confidence, eval.bootstrap_samples, report.kl_warn. Reads every model's metrics under
--evals and its generations under --generations (the same test prompts, in one order). Writes --out: each
model's win rates and score gains against SFT with intervals, a paired test of every pair of models on the
judge score (the proxy reward, where there are no judges), and the verdict (alignkit.verdict).
"""

from alignkit.io import write_json
from alignkit.params import load_params
from alignkit.report import ordered_models, read_generations, read_json_dir
from alignkit.stage import run_stage, stage_args
from alignkit.verdict import compare


def main(argv=None):
    args = stage_args(__doc__, ("--params", "--evals", "--generations", "--out"), argv)
    params = load_params(args.params)
    evals = read_json_dir(args.evals)
    models = ordered_models(evals)
    result = compare(
        read_generations(args.generations, models),
        evals,
        params.eval.confidence,
        params.eval.bootstrap_samples,
        params.seed,
        params.report.kl_warn,
    )
    write_json(args.out, result)
    print(f"compare ({result['n']} test prompts, by {result['score']} score): {result['verdict']['text']}")


if __name__ == "__main__":
    run_stage(main)
