"""prepare: one named raw preference data set -> validated, seeded train/validation/test splits.

    python stages/prepare.py --params params.yaml --name helpful --input data/sample/preferences.csv \
        --out-dir data/prepared/helpful --metrics metrics/data/helpful.json

Reads params: seed, data.<name> (path or hub, schema, columns, filter), prepare.*. Writes
<out-dir>/{train,validation,test,judge}.jsonl (fields prompt: a list of {role, content}
messages, chosen, rejected, row, unsafe; unpaired feedback: completion and label instead of
chosen and rejected, and an empty judge split) and the metrics JSON (rows filtered per condition,
dropped per reason, split sizes, lengths). Everything is validated before anything
is written, and each output appears whole or not at all.
"""

from pathlib import Path

from alignkit import data, hub
from alignkit.errors import DataError, ParamsError
from alignkit.io import atomic_dir, write_json
from alignkit.params import load_params
from alignkit.stage import run_stage, stage_args


def main(argv=None):
    args = stage_args(__doc__, ("--params", "--name", "--input", "--out-dir", "--metrics"), argv)
    params = load_params(args.params)
    cfg, key = params.prepare, f"data.{args.name}"
    if args.name not in params.data:
        raise ParamsError(f"{args.params}: data: no data set {args.name!r} (data: {', '.join(params.data)})")
    spec = params.data[args.name]
    if spec.hub is not None:  # dvc.yaml passes data.<name>.path, a Hub set's stand-in (data/hub)
        if Path(args.input).is_file():
            raise ParamsError(f"{args.params}: {key}: both path (a file) and hub are set; set one (path: data/hub)")
        source, columns, records, origin = hub.read_hub(spec.hub, key)
    else:
        if Path(args.input) == Path(spec.path) and not Path(args.input).is_file():
            raise DataError(f"{args.params}: {key}.path: file not found: '{args.input}'")
        source, (columns, records) = args.input, data.read_table(args.input)
        origin = {"path": args.input}

    schema, layout = data.resolve_columns(source, columns, spec.schema_, spec.columns.model_dump(), key, records)
    kept, filtered = data.apply_filters(source, columns, records, spec.filter, key)
    pairs, dropped = data.to_pairs(source, schema, layout, kept, cfg)
    sampled = data.sample_pairs(pairs, spec.max_rows, params.seed)
    # Judges train on pairs: unpaired feedback keeps no judge split.
    judge = 0.0 if schema == "unpaired" else cfg.judge_fraction
    splits = data.split_pairs(sampled, cfg.val_fraction, cfg.test_fraction, params.seed, source, judge)
    summary = {
        "source": origin,
        "schema": schema,
        **data.describe(len(records), filtered, sampled, dropped, splits, len(pairs) - len(sampled)),
    }

    with atomic_dir(args.out_dir) as tmp:
        for name, rows in splits.items():
            data.write_split(tmp / f"{name}.jsonl", rows)
    write_json(args.metrics, summary)

    def counts(counter):
        return f"{sum(counter.values())}" + (f" {dict(counter)}" if sum(counter.values()) else "")

    print(
        f"prepare@{args.name}: {source} ({schema} schema): {len(records)} rows in, "
        f"{counts(filtered)} filtered out, "
        f"{counts(dropped)} dropped, {len(sampled)} kept"
        + (f" (a sample of {len(pairs)})" if len(sampled) < len(pairs) else "")
        + f"; splits {summary['splits']}"
    )


if __name__ == "__main__":
    run_stage(main)
