"""DVC on the real dvc.yaml, in a fresh git copy of the repository (never the working tree)."""

import csv
import io
import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import dvc, stage_env

STAGES = ["dpo", "evaluate@dpo", "evaluate@ppo", "evaluate@sft", "ppo", "prepare", "reward", "sft"]


def ran(output):
    return sorted(line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage"))


@pytest.fixture(scope="module")
def built(built_repo):
    return built_repo


def test_repro_builds_every_stage_then_does_nothing(built):
    repo, first = built
    assert ran(first) == STAGES
    data = json.loads((repo / "metrics" / "data.json").read_text())
    assert data["rows_in"] == data["rows_kept"] > 2000
    assert data["splits"]["train"] > 1900
    assert 150 <= data["splits"]["test"] <= 250 and 150 <= data["splits"]["validation"] <= 250
    reward = json.loads((repo / "metrics" / "reward.json").read_text())
    assert reward["val_accuracy"] >= 0.9
    assert (repo / "models" / "reward_model.pth").is_file()
    assert json.loads((repo / "metrics" / "sft.json").read_text())["val_loss"] < 2.0
    assert json.loads((repo / "metrics" / "dpo.json").read_text())["val_reward_accuracy"] >= 0.7
    evals = {m: json.loads((repo / "metrics" / "eval" / f"{m}.json").read_text()) for m in ("sft", "ppo", "dpo")}
    assert len({frozenset(e) for e in evals.values()}) == 1  # one schema for every model
    assert evals["ppo"]["reward_mean"] > evals["sft"]["reward_mean"]
    ppo = json.loads((repo / "metrics" / "ppo.json").read_text())
    assert ppo["val_score_after"] > ppo["val_score_before"]
    for stage, curves in (("reward", ["accuracy", "loss", "lr"]), ("sft", ["loss", "lr"]),
                          ("dpo", ["loss", "lr", "margin", "reward_accuracy"]),
                          ("ppo", ["clipfrac", "entropy", "kl", "kl_coef", "loss", "lr", "response_length",
                                   "reward", "score"])):
        found = sorted(p.stem for p in (repo / "dvclive" / stage / "plots" / "metrics" / "train").iterdir())
        assert found == curves, (stage, found)
    # The committed dvc.lock already describes these outputs: rebuilding changed nothing.
    diff = subprocess.run(["git", "diff", "HEAD", "--stat", "--", "dvc.lock"], cwd=repo, capture_output=True,
                          text=True)
    assert diff.stdout == "", diff.stdout

    second = dvc(repo, "repro")
    assert ran(second) == []
    assert "Data and pipelines are up to date" in second
    assert "up to date" in dvc(repo, "status")


def dry_run(repo, section, key, value):
    """The stages `dvc repro` would run after setting one param, without running them."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        return ran(dvc(repo, "repro", "--dry"))
    finally:
        subprocess.run(["git", "checkout", "params.yaml"], cwd=repo, check=True)


def test_changing_a_param_reruns_only_its_readers(built_copy):
    """`repro --dry` lists the stages whose own inputs changed; the stages downstream of them
    rerun as their inputs change (the experiment test below shows evaluate@dpo following dpo)."""
    assert dry_run(built_copy, "reward", "lr", 5e-4) == ["reward"]
    assert dry_run(built_copy, "ppo", "lr", 5e-5) == ["ppo"]
    assert dry_run(built_copy, "eval", "batch_size", 16) == ["evaluate@dpo", "evaluate@ppo", "evaluate@sft"]
    assert dry_run(built_copy, "ppo", "top_p", 0.9) == ["evaluate@dpo", "evaluate@ppo", "evaluate@sft", "ppo"]
    assert dry_run(built_copy, "models", "reward", "bert-base-uncased") == ["reward"]


def test_experiment_on_dpo_lr_reruns_exactly_dpo_and_its_evaluation(built_copy):
    out = dvc(built_copy, "exp", "run", "-n", "dpo-lr-1e-5", "-S", "dpo.lr=1e-5")
    assert ran(out) == ["dpo", "evaluate@dpo"]

    table = list(csv.DictReader(io.StringIO(dvc(built_copy, "exp", "show", "--no-pager", "--csv"))))
    row = next(r for r in table if r["Experiment"] == "dpo-lr-1e-5")
    assert float(row["dpo.lr"]) == 1e-5
    assert row["metrics/eval/dpo.json:reward_mean"] and row["metrics/dpo.json:val_loss"]

    diff = json.loads(dvc(built_copy, "metrics", "diff", "--json"))  # baseline (HEAD) vs the experiment
    changed = {path for path, values in diff.items() if any(v.get("diff") for v in values.values())}
    assert {"metrics/dpo.json", "metrics/eval/dpo.json"} <= changed
    assert not changed & {"metrics/eval/sft.json", "metrics/eval/ppo.json", "metrics/sft.json", "metrics/ppo.json",
                          "metrics/reward.json"}
    shown = dvc(built_copy, "metrics", "show")
    assert all(f"metrics/eval/{m}.json" in shown for m in ("sft", "ppo", "dpo"))


def test_plots_show_draws_the_training_curves(built_copy):
    out = dvc(built_copy, "plots", "show", "-o", "plots_html")
    html = (built_copy / "plots_html" / "index.html").read_text()
    for stage in ("reward", "sft", "dpo", "ppo"):
        assert f"dvclive/{stage}/plots/metrics/train/loss.tsv" in html
    assert "Model comparison on the test split" in html
    assert "plots_html" in out


def test_bad_input_under_dvc_fails_and_leaves_no_output(repo_copy):
    bad = repo_copy / "data" / "bad.csv"
    bad.write_text("Question,More_Prefered,Less_Prefered\nWhat?,,No.\n")
    result = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-S", "data.path=data/bad.csv"],
                            cwd=repo_copy, capture_output=True, text=True, env=stage_env(repo_copy))
    assert result.returncode != 0
    assert "error: data/bad.csv: row 1 (line 2), column 'More_Prefered': empty cell" in result.stderr + result.stdout
    assert not (repo_copy / "data" / "prepared").exists()
    assert not (repo_copy / "metrics" / "data.json").exists()
