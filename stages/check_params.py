"""check_params: the whole params.yaml checked against the params schema, at every change to it.

    python stages/check_params.py --params params.yaml

Reads every key of --params (dvc.yaml tracks the whole file), so `dvc repro` runs it after any edit, `dvc exp run
-S` included: a key that no other stage reads -- a misspelt top-level one such as `seeed: 43` -- is a one-line
error naming it, instead of passing silently. Writes nothing.
"""

from alignkit.params import load_params
from alignkit.stage import run_stage, stage_args


def main(argv=None):
    args = stage_args(__doc__, ("--params",), argv)
    params = load_params(args.params)
    print(
        f"check_params: {args.params} is valid ({len(params.data)} data set(s), "
        f"{len(params.reward_models)} reward model(s))"
    )


if __name__ == "__main__":
    run_stage(main)
