"""The objectives table of docs/objectives.md: one row per experiment, from what `dvc exp show --json` holds.

    python scripts/objectives_table.py                # every experiment, and the workspace's run first
    python scripts/objectives_table.py simpo kto      # these experiments only

Experiments of the last 20 commits are read (`dvc exp show -n 20`): an experiment belongs to the commit it ran on.

Each row: the experiment, its dpo.loss_type and dpo.data, how it met its reference (metrics/dpo.json), its
validation preference accuracy, and on the test prompts (metrics/eval/dpo.json) the held-out combined reward by
the training reward models and by the judges, and the KL to the SFT model, each with its interval, and the mean
answer length in words (a policy that collapsed to a few words shows there). The SFT model's
own reward and judge score (metrics/eval/sft.json) open the table, as the start every row moved from.
"""

import json
import os
import subprocess
import sys


def runs(shown):
    """(name, its git revision or None for the workspace, its data) of the workspace and every experiment in
    `dvc exp show --json` output."""
    for commit in shown:
        if commit.get("rev") == "workspace" and commit.get("data"):
            yield "workspace", None, commit["data"]
        for experiment in commit.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                if rev.get("data"):
                    yield rev.get("name") or experiment.get("name") or rev["rev"][:7], rev["rev"], rev["data"]


def section(data, kind, path):
    return ((data.get(kind) or {}).get(path) or {}).get("data") or {}


def metrics_file(rev, path):
    """A metrics file whole, intervals included (`dvc exp show` leaves out list values): from the experiment's
    commit, or the workspace's file; {} where there is none."""
    if rev is None:
        return json.loads(open(path).read()) if os.path.exists(path) else {}
    shown = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    return json.loads(shown.stdout) if shown.returncode == 0 else {}


def interval(metrics, key):
    value, ci = metrics.get(key), metrics.get(f"{key}_ci")
    if value is None:
        return ""
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def rows(shown, names=()):
    out, start = [], None
    for name, rev, data in runs(shown):
        if names and name not in names and name != "workspace":
            continue
        params = section(data, "params", "params.yaml").get("dpo", {})
        trained = metrics_file(rev, "metrics/dpo.json")
        evaluated = metrics_file(rev, "metrics/eval/dpo.json")
        start = start or metrics_file(rev, "metrics/eval/sft.json")
        if not trained or not evaluated:
            continue
        accuracy = trained.get("val_preference_accuracy")
        out.append(
            [
                name,
                params.get("loss_type", ""),
                ", ".join(params.get("data", [])),
                trained.get("reference", ""),
                "" if accuracy is None else f"{accuracy:.3f}",
                interval(evaluated, "reward_mean"),
                interval(evaluated, "judge_mean"),
                interval(evaluated, "kl_to_reference"),
                f"{evaluated['mean_length']:.1f}",
            ]
        )
    if start:
        sft = [interval(start, "reward_mean"), interval(start, "judge_mean"), "", f"{start['mean_length']:.1f}"]
        out.insert(0, ["(SFT, the start)", "", "", "", "", *sft])
    return out


HEADER = [
    "experiment",
    "dpo.loss_type",
    "dpo.data",
    "reference",
    "val preference accuracy",
    "test reward (reward models)",
    "test score (judges)",
    "KL to SFT",
    "answer length",
]


def main(argv=None):
    names = tuple(sys.argv[1:] if argv is None else argv)
    shown = json.loads(
        subprocess.run(["dvc", "exp", "show", "--json", "-n", "20"], capture_output=True, text=True, check=True).stdout
    )
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(shown, names)]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
